"""What a measurement ran on: the CPU (model and vector extensions), cores, memory, GPU and driver, and the library
versions. One source for ``dsr-deploy bench``, the benchmark scripts in ``benchmarks/`` and ``scripts/``."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Optional


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu_driver() -> Optional[str]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def machine_info() -> dict:
    """CPU model, cores, memory, GPU name and driver of this machine."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count()
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    info = {"hostname": platform.node(), "os": platform.platform(), "cpu_model": cpu_model(),
            "cpu_cores": os.cpu_count(), "cpu_cores_usable": usable, "memory_gib": mem_gib,
            "gpu": None, "gpu_count": 0, "gpu_driver": None, "cuda_runtime": None}
    try:
        import torch

        info["cuda_runtime"] = torch.version.cuda
        if torch.cuda.is_available():
            info.update(gpu=torch.cuda.get_device_name(0), gpu_count=torch.cuda.device_count(),
                        gpu_driver=_gpu_driver())
    except ImportError:  # pragma: no cover
        pass
    return info


def library_versions() -> dict:
    from importlib import metadata

    from . import __version__

    out = {"python": platform.python_version(), "dsr_deploy": __version__}
    for dist in ("torch", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "spikingjelly"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def cpu_flags() -> list:
    """The CPU's vector extensions (x86: AVX*, SSE4, FMA; Arm: ASIMD, SVE), which decide the kernels libraries pick."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return sorted(f for f in line.split(":", 1)[1].split()
                              if f.startswith(("avx", "sse4", "fma", "asimd", "sve")))
    except OSError:
        pass
    return []
