"""`dsr-deploy plugins status/build`: machine-readable status, one-line errors for what cannot be built."""

from __future__ import annotations

import json
import subprocess
import sys

from dsr_deploy import plugins

from _native_util import ensure_torch_native


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "dsr_deploy", "plugins", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def test_status_json_reports_the_torch_library():
    ensure_torch_native()
    proc = cli("status", "--json")
    assert proc.returncode == 0, proc.stderr
    st = json.loads(proc.stdout)
    torch_lib = st["libraries"]["torch"]
    assert torch_lib["built"] and torch_lib["loaded"] and torch_lib["cpu_kernel"], torch_lib
    assert set(st["libraries"]) == {"torch", "ort", "trt", "trt_dynamic", "kernels"}
    for key in ("ort", "trt", "trt_dynamic", "kernels"):
        assert st["libraries"][key]["reason"], key  # built or not, it says why


def test_status_text_names_every_library():
    proc = cli("status")
    assert proc.returncode == 0, proc.stderr
    for name in ("libdsr_torch_ops.so", "libdsr_ort_ops.so", "libdsr_trt_plugin.so", "libdsr_trt_plugin_dynamic.so"):
        assert name in proc.stdout


def one_line_error(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_missing_ort_headers_is_a_one_line_error(tmp_path):
    one_line_error(cli("build", "--ort-root", str(tmp_path / "nowhere"), "--no-torch"), "onnxruntime_c_api.h")


def test_tensorrt_without_cuda_is_a_one_line_error(tmp_path):
    (tmp_path / "include").mkdir()
    (tmp_path / "include" / "NvInferRuntime.h").write_text("// placeholder: only found, never compiled\n")
    one_line_error(cli("build", "--trt-root", str(tmp_path), "--no-cuda", "--no-torch"), "need CUDA")


def test_nothing_to_build_is_a_one_line_error(monkeypatch):
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("ONNXRUNTIME_ROOT", "TENSORRT_ROOT")}
    one_line_error(cli("build", "--no-torch", "--no-cuda", env=env), "nothing to build")


def test_detect_finds_headers_in_the_usual_layouts(tmp_path):
    for sub in ("include", "include/onnxruntime/core/session"):
        root = tmp_path / sub.replace("/", "_")
        (root / sub).mkdir(parents=True)
        (root / sub / "onnxruntime_c_api.h").write_text("#define ORT_API_VERSION 23\n")
        found = plugins.detect(ort_root=str(root))["ort"]
        assert found["available"] and found["ORT_API_VERSION"] == "23", found
    assert not plugins.detect(ort_root=str(tmp_path / "none"))["ort"]["available"]
