"""The TensorRT plugins, host side: built against the TensorRT headers and self-tested without a TensorRT runtime.

Needs the TensorRT headers ($TENSORRT_ROOT/include/NvInferRuntime.h; no pip package ships them) and nvcc; skips
otherwise. Engines and enqueue need TensorRT and a GPU and are not exercised here (see plugins/README.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from dsr_deploy import plugins

from _native_util import repo_root

FOUND = plugins.detect(trt_root=os.environ.get("TENSORRT_ROOT"))
pytestmark = [
    pytest.mark.skipif(not FOUND["trt"]["available"], reason=str(FOUND["trt"].get("reason"))),
    pytest.mark.skipif(not FOUND["cuda"]["available"], reason="nvcc not found: the plugins need the CUDA kernels"),
]


def test_plugin_selftest(tmp_path):
    build = tmp_path / "build"
    cmake = FOUND["cmake"]["path"]
    configure = [cmake, "-S", str(repo_root() / "plugins"), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                 "-DDSR_BUILD_TORCH=OFF", "-DDSR_BUILD_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=90",
                 f"-DCMAKE_CUDA_COMPILER={FOUND['cuda']['nvcc']}", "-DDSR_BUILD_TRT=ON",
                 f"-DTENSORRT_ROOT={FOUND['trt']['root']}"]
    if shutil.which("ninja"):
        configure += ["-G", "Ninja"]
    for cmd in (configure, [cmake, "--build", str(build), "--parallel", "2"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    proc = subprocess.run([str(build / "dsr_trt_plugin_selftest"), str(build / plugins.TRT_LIBRARY),
                           str(build / plugins.TRT_DYNAMIC_LIBRARY)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "self-test: passed (0 failures)" in proc.stdout
