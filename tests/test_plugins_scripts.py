"""The GPU check script runs on CUDA machines only; its logic is smoke-tested here on the CPU kernels."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from _native_util import ensure_torch_native, repo_root


def _path_without(tmp_path, *hidden):
    """A PATH folder with every command of this PATH but ``hidden`` (nvcc, cmake): as on a bare GPU box."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for d in os.environ.get("PATH", "").split(os.pathsep):
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            target = os.path.join(d, name)
            if name not in hidden and not (bin_dir / name).exists() and os.access(target, os.X_OK):
                (bin_dir / name).symlink_to(target)
    return str(bin_dir)


def _gpu_check(tmp_path, *args, hide=("nvcc", "cmake"), **env_extra):
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_HOME", "CUDACXX", "DSR_GPU_CHECK_RAISE")}
    env.update(PATH=_path_without(tmp_path, *hide), OUT=str(out), DSR_GPU_CHECK_NO_DEFAULT_CUDA="1",
               PYTHON=sys.executable, **env_extra)
    proc = subprocess.run(["bash", str(repo_root() / "scripts" / "gpu_check.sh"), "--quick", "--repeats", "1",
                           "--no-results-copy", *args], capture_output=True, text=True, timeout=900, env=env)
    return proc, out


def test_gpu_check_without_nvcc_and_cmake_writes_its_report(tmp_path):
    """`OUT=DIR bash scripts/gpu_check.sh` with nvcc and cmake hidden, on this CPU-only machine: the CPU dry run of
    every stage, the report (JSON + markdown) under DIR saying what was not checked and why, the summary last."""
    ensure_torch_native()
    proc, out = _gpu_check(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((out / "gpu_check.json").read_text())
    report = (out / "gpu_check.md").read_text()
    stages = {s["name"]: s for s in data["stages"]}
    assert list(stages) == ["environment", "build", "kernels_float", "kernels_quantized", "torch_op", "torchscript",
                            "pt2", "timings_by_size", "timings_layer", "tensorrt"]
    assert "CPU DRY RUN" in data["mode"] and "CPU DRY RUN" in report
    env = data["results"]["environment"]
    assert env["nvcc"] is None and env["cmake"] is None
    assert all(s["status"] in ("ok", "not checked") for s in data["stages"]), data["stages"]
    assert all(s["note"].startswith("not checked: ") for s in data["stages"] if s["status"] == "not checked")
    assert stages["tensorrt"]["status"] == "not checked" and "tensorrt" in stages["tensorrt"]["note"]
    assert stages["kernels_quantized"]["status"] == "not checked"
    rows = data["results"]["kernels_float"]
    assert {r["dtype"] for r in rows} == {"float32", "float16", "bfloat16"} and all(r["ok"] for r in rows)
    assert all(r["bit_exact"] for r in data["results"]["torchscript"] + data["results"]["pt2"])
    sizes = data["results"]["timings_by_size"]
    assert {r["dtype"] for r in sizes} == {"float32", "float16", "bfloat16", "uint8", "int8"}
    assert "| stage | status |" in report and "## Kernel vs device-to-device copy" in report
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("gpu_check summary") and "0 failed" in last and str(out) in last


def test_gpu_check_report_survives_a_raising_stage(tmp_path):
    """A stage that raises is a failed stage in the report (its error line; the traceback in the log); the stages
    after it still run, the report is complete, the summary names it and the exit status is 1."""
    ensure_torch_native()
    proc, out = _gpu_check(tmp_path, "--only", "kernels_float,torch_op,tensorrt", DSR_GPU_CHECK_RAISE="kernels_float")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((out / "gpu_check.json").read_text())
    stages = {s["name"]: s for s in data["stages"]}
    assert list(stages) == ["environment", "build", "kernels_float", "torch_op", "tensorrt"]
    assert stages["kernels_float"]["status"] == "failed" and "DSR_GPU_CHECK_RAISE" in stages["kernels_float"]["note"]
    assert stages["torch_op"]["status"] == "ok"  # the next stage ran
    assert "DSR_GPU_CHECK_RAISE=kernels_float" in (out / "gpu_check_build.log").read_text()  # the traceback
    assert "| kernels_float | failed |" in (out / "gpu_check.md").read_text()
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("gpu_check summary") and "1 failed (kernels_float)" in last


def test_gpu_check_single_nvcc_command_builds_static_runtime_library(tmp_path):
    """Without cmake the build stage is one nvcc command: libdsr_kernels.so with the CUDA entry points and the
    static CUDA runtime (no NEEDED libcudart), its output in the log (compiled here; no GPU needed)."""
    sys.path.insert(0, str(repo_root() / "scripts"))
    try:
        import gpu_check_build as B
    finally:
        sys.path.pop(0)
    nvcc = B.find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (the single-command build needs it)")
    log = tmp_path / "build.log"
    rc = B._run(B.nvcc_command(nvcc, "sm_90", tmp_path), log, timeout=600)
    assert rc == 0, log.read_text()[-3000:]
    from dsr_deploy import plugins

    lib = tmp_path / B.KERNELS
    assert plugins.elf_exports(lib, "dsr_cuda_forward") and plugins.elf_exports(lib, "dsr_cuda_forward_quantized")
    readelf = shutil.which("readelf")
    if readelf:
        dyn = subprocess.run([readelf, "-d", str(lib)], capture_output=True, text=True).stdout
        assert "(NEEDED)" in dyn and "libcudart" not in dyn


