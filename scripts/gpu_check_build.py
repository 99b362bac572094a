"""The build stage of scripts/gpu_check.py: the CUDA kernels with whatever this machine has, output to a log file.

* nvcc and cmake: ``dsr_deploy.plugin_build.build`` (the torch op with CUDA kernels + libdsr_kernels.so; if the torch
  adapter does not configure, the CUDA core alone);
* nvcc, no cmake: one nvcc command builds libdsr_kernels.so (the C entry points, CPU and CUDA kernels, the static
  CUDA runtime; the checks then run the CUDA kernels through ctypes);
* no nvcc: nothing is built and the report says "not checked: no nvcc".

On the CPU dry run the CPU kernels already built for this torch (``dsr-deploy plugins build``) are used; without
them one C++ command builds a CPU-only libdsr_kernels.so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "plugins" / "core"
KERNELS = "libdsr_kernels.so"
CORE_SOURCES = ("dsr_spike_capi.cpp", "dsr_spike_cpu.cpp", "dsr_spike_cpu_baseline.cpp", "dsr_spike_conv_cpu.cpp")
# The CMake build's exactness flags (plugins/CMakeLists.txt: DSR_EXACT_CXX_FLAGS, DSR_EXACT_CUDA_FLAGS).
EXACT_CXX = ("-ffp-contract=off", "-fno-trapping-math", "-fno-math-errno")
EXACT_CUDA = ("--fmad=false", "--ftz=false")


def find_nvcc() -> str | None:
    for cand in (shutil.which("nvcc"), os.environ.get("CUDACXX"),
                 os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc") if os.environ.get("CUDA_HOME") else None):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


def nvcc_command(nvcc: str, arch: str, lib_dir: Path) -> list[str]:
    """One nvcc command: libdsr_kernels.so with CUDA, linked against the static CUDA runtime."""
    host = ",".join(("-fPIC", "-O2", "-fvisibility=hidden") + EXACT_CXX)
    return [nvcc, "-std=c++17", "-O3", *EXACT_CUDA, f"-arch={arch}", "-shared", "-cudart", "static",
            "-Xcompiler", host, "-DDSR_WITH_CUDA=1", f"-I{CORE}", *(str(CORE / s) for s in CORE_SOURCES),
            str(CORE / "dsr_spike_cuda.cu"), "-o", str(lib_dir / KERNELS)]


def cxx_command(cxx: str, lib_dir: Path) -> list[str]:
    """One C++ command: a CPU-only libdsr_kernels.so (the dry run's fallback)."""
    return [cxx, "-std=c++17", "-O2", "-shared", "-fPIC", "-fvisibility=hidden", *EXACT_CXX, f"-I{CORE}",
            *(str(CORE / s) for s in CORE_SOURCES), "-o", str(lib_dir / KERNELS), "-pthread"]


def _run(cmd: list[str], log: Path, timeout: int) -> int:
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        try:
            return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, cwd=ROOT).returncode
        except subprocess.TimeoutExpired:
            f.write(f"timed out after {timeout} s\n")
            return 124


def _cmake_build(python: str, arch: str | None, build: Path, lib_dir: Path, log: Path, torch_op: bool) -> int:
    code = (f"from dsr_deploy import plugin_build; plugin_build.build(torch={torch_op!r}, cuda=True, ort=False, "
            f"trt=False, cuda_arch={arch!r}, build_dir={str(build)!r}, lib_dir={str(lib_dir)!r}, verbose=True)")
    return _run([python, "-c", code], log, timeout=420)


def build_gpu(env: dict, build: Path, log: Path) -> tuple[str, str, dict]:
    """(status, note, details) of the CUDA build; sets DSR_DEPLOY_LIB_DIR to its library folder."""
    nvcc = find_nvcc()
    if nvcc is None:
        return "not checked", "not checked: no nvcc (no CUDA kernel built; PyTorch's own CUDA paths still run)", {}
    lib_dir = build / "lib"
    lib_dir.mkdir(parents=True, exist_ok=True)
    os.environ["DSR_DEPLOY_LIB_DIR"] = str(lib_dir)
    arch = os.environ.get("DSR_CUDA_ARCH") or env.get("arch")
    details = {"nvcc": nvcc, "arch": arch, "lib_dir": str(lib_dir), "log": str(log)}
    if shutil.which("cmake"):
        details["how"] = "cmake: torch op with CUDA kernels + libdsr_kernels.so"
        if _cmake_build(sys.executable, arch, build / "cmake-torch", lib_dir, log, torch_op=True) == 0:
            return "ok", details["how"], details
        (lib_dir / "libdsr_torch_ops.so").unlink(missing_ok=True)
        details["how"] = "cmake: CUDA core alone (the torch adapter did not build; see the log)"
        rc = _cmake_build(sys.executable, arch, build / "cmake-core", lib_dir, log, torch_op=False)
        return ("ok" if rc == 0 else "failed"), details["how"] + ("" if rc == 0 else f": rc {rc}"), details
    details["how"] = "no cmake: one nvcc command (libdsr_kernels.so, kernels through ctypes)"
    rc = _run(nvcc_command(nvcc, f"sm_{arch}" if arch and arch.isdigit() else (arch or "native"), lib_dir), log,
              timeout=420)
    return ("ok" if rc == 0 else "failed"), details["how"] + ("" if rc == 0 else f": nvcc rc {rc}"), details


def build_cpu(build: Path, log: Path, find_library) -> tuple[str, str, dict]:
    """The dry run's CPU kernels: those already built, else one C++ command."""
    found = find_library(KERNELS)
    if found is not None:
        return "ok", f"CPU kernels already built: {found.parent}", {"lib_dir": str(found.parent)}
    cxx = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
    if cxx is None:
        return "not checked", "not checked: no C++ compiler (the dry run uses the reference only)", {}
    lib_dir = build / "lib-cpu"
    lib_dir.mkdir(parents=True, exist_ok=True)
    rc = _run(cxx_command(cxx, lib_dir), log, timeout=300)
    if rc == 0:
        os.environ["DSR_DEPLOY_LIB_DIR"] = str(lib_dir)
    return ("ok" if rc == 0 else "failed"), f"one C++ command (CPU-only {KERNELS})" + (
        "" if rc == 0 else f": rc {rc}"), {"lib_dir": str(lib_dir), "log": str(log)}
