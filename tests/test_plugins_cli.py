"""`dsr-deploy plugins status/build`: machine-readable status, one-line errors for what cannot be built."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from _native_util import ensure_torch_native

from dsr_deploy import plugin_build, plugins
from dsr_deploy.errors import UserError


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
    one_line_error(cli("build", "--no-torch", "--no-ort", "--no-cuda", env=env), "nothing to build")


def test_ort_root_with_no_ort_is_a_one_line_error(tmp_path):
    (tmp_path / "include").mkdir()
    (tmp_path / "include" / "onnxruntime_c_api.h").write_text("#define ORT_API_VERSION 29\n")
    one_line_error(cli("build", "--ort-root", str(tmp_path), "--no-ort", "--no-torch"), "--no-ort")


def test_detect_finds_headers_in_the_usual_layouts(tmp_path):
    for sub in ("include", "include/onnxruntime/core/session"):
        root = tmp_path / sub.replace("/", "_")
        (root / sub).mkdir(parents=True)
        (root / sub / "onnxruntime_c_api.h").write_text("#define ORT_API_VERSION 23\n")
        found = plugins.detect(ort_root=str(root))["ort"]
        assert found["include"] == str((root / sub).resolve()) and found["ORT_API_VERSION"] == "23", found
    missing = plugins.detect(ort_root=str(tmp_path / "none"))["ort"]
    assert missing["include"] is None and "onnxruntime_c_api.h not found" in missing["reason"]
    # The library itself needs no header: it can always be built (with a compiler).
    assert missing["available"] and missing["api_version"] == 18


# ---- CUDA build configuration (found by building the torch CUDA adapter against a CUDA build of torch) ----------

def test_torch_arch_list_spelling():
    # A CUDA torch appends its own -gencode list unless TORCH_CUDA_ARCH_LIST is set, and its default list holds
    # architectures (compute_50) that nvcc 13 refuses; the build passes the one asked for, in torch's spelling.
    assert plugins.torch_arch("90") == "9.0"
    assert plugins.torch_arch("90;100a") == "9.0;10.0a"
    assert plugins.torch_arch("86-real") == "8.6"
    assert plugins.torch_arch("120") == "12.0"
    assert plugins.torch_arch("native") is None


def test_cuda_root_sees_through_an_nvcc_wrapper(tmp_path, monkeypatch):
    # /usr/local/bin/nvcc here is a shell script that execs the real one; torch's FindCUDA then looked for the
    # headers next to the wrapper and failed. The root must be the real toolkit's.
    real = plugins._nvcc()
    if real is None:
        pytest.skip("nvcc not found")
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    wrapper = tmp_path / "bin" / "nvcc"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec "{real}" "$@"\n')
    wrapper.chmod(0o755)
    root = plugins._cuda_root(str(wrapper))
    assert root is not None and root != str(tmp_path)
    assert (Path(root) / "bin" / "nvcc").is_file()
    assert any((Path(root) / sub / "cuda_runtime.h").is_file()
               for sub in ("include", "targets/x86_64-linux/include", "targets/sbsa-linux/include"))
    # CUDA_HOME, when it points at a toolkit, wins.
    monkeypatch.setenv("CUDA_HOME", root)
    assert plugins._cuda_root(str(wrapper)) == str(Path(root).resolve())


def test_cuda_root_of_something_that_is_not_nvcc(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    fake = tmp_path / "nvcc"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    assert plugins._cuda_root(str(fake)) is None
    assert plugins._cuda_root(None) is None


def test_a_failed_build_step_names_the_compiler_message(tmp_path):
    # The one-line error must carry the compiler's words, not ninja's progress line before them.
    script = tmp_path / "fake_build.sh"
    script.write_text("#!/bin/sh\necho '[1/3] Building CXX object a.o'\necho 'FAILED: [code=1] b.cu.o'\n"
                      "echo \"nvcc fatal   : Unsupported gpu architecture 'compute_50'\"\n"
                      "echo 'ninja: build stopped: subcommand failed.'\nexit 1\n")
    script.chmod(0o755)
    with pytest.raises(UserError) as info:
        plugin_build.run([str(script)], [], verbose=False)
    msg = str(info.value)
    assert "Unsupported gpu architecture 'compute_50'" in msg and "\n" not in msg


# ---- where builds go and how they are found ------------------------------------------------------------------

def test_build_key_follows_the_sources_and_torch(tmp_path, monkeypatch):
    import shutil

    import torch

    from dsr_deploy import ops

    src = ops.plugin_source_dir()
    copies = {}
    for name in ("same", "doc-only", "changed"):
        copies[name] = tmp_path / name
        shutil.copytree(src, copies[name], ignore=shutil.ignore_patterns("__pycache__"))
    (copies["doc-only"] / "README.md").write_text("docs do not change the build\n")
    kernel = copies["changed"] / "core" / "dsr_spike_cpu.cpp"
    kernel.write_text(kernel.read_text() + "\n// changed\n")
    keys = {}
    for name, path in copies.items():
        monkeypatch.setenv("DSR_DEPLOY_PLUGINS_SRC", str(path))
        assert ops.plugin_source_dir() == path
        keys[name] = ops.build_key()
    assert keys["same"] == keys["doc-only"] == ops.build_key(src) != keys["changed"]
    assert keys["same"].startswith(f"torch-{torch.__version__}-")


def test_libraries_go_to_the_per_user_cache_not_the_package(tmp_path, monkeypatch):
    import dsr_deploy
    from dsr_deploy import ops

    monkeypatch.delenv("DSR_DEPLOY_LIB_DIR", raising=False)
    monkeypatch.setenv("DSR_DEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    assert ops.library_dirs() == [tmp_path / "cache" / "plugins" / ops.build_key()]
    assert plugins.install_dir() == ops.library_dirs()[0]
    assert not plugins.default_build_dir(ops.plugin_source_dir()).is_relative_to(Path(dsr_deploy.__file__).parent)
    monkeypatch.delenv("DSR_DEPLOY_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert ops.cache_root() == tmp_path / "xdg" / "dsr-deploy"
    monkeypatch.setenv("DSR_DEPLOY_LIB_DIR", str(tmp_path / "mine"))
    assert ops.library_dirs()[0] == tmp_path / "mine"  # an explicit folder is looked in first


def test_missing_plugin_sources_is_a_one_line_error(tmp_path):
    env = dict(__import__("os").environ, DSR_DEPLOY_PLUGINS_SRC=str(tmp_path))
    one_line_error(cli("build", env=env), "plugin sources not found", "DSR_DEPLOY_PLUGINS_SRC")


IMPORT_CHECK = (
    "import sys, torch, dsr_deploy\n"
    "native = torch._C._dispatch_has_kernel_for_dispatch_key('dsr::if_spike', 'CPU')\n"
    "x = torch.randn(7, 3, 65, generator=torch.Generator().manual_seed(0)) * 2\n"
    "y, _ = torch.ops.dsr.if_spike(x, 1.0, 0.5, None, False)\n"
    "ref, _ = dsr_deploy.ops.if_spike(x, 1.0, 0.5, native=False)\n"
    "print(native, bool(torch.equal(y.view(torch.int32), ref.view(torch.int32))))\n"
)


def test_import_registers_the_native_kernels(tmp_path):
    # A direct torch.ops.dsr call right after `import dsr_deploy` (no dsr_deploy wrapper first) runs the native
    # kernel, bit-exact with the reference; DSR_DEPLOY_NATIVE=0 keeps the reference.
    import os

    ensure_torch_native()
    for env_native, want in (("1", "True True"), ("0", "False True")):
        env = dict(os.environ, DSR_DEPLOY_NATIVE=env_native)
        proc = subprocess.run([sys.executable, "-c", IMPORT_CHECK], capture_output=True, text=True, timeout=300,
                              env=env, cwd=str(tmp_path))
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.strip() == want, (env_native, proc.stdout)
