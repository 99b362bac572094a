#!/usr/bin/env bash
# Creates .venv (once) and installs dsr-deploy with what the tests and the quickstart need.
# Torch is pinned to the CPU build (torch==2.13.0): an unpinned torch pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${DSR_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
"${PIP[@]}" "torch==${DSR_TORCH_VERSION:-2.13.0}"
# The serve extra (nvidia-pytriton, tritonclient) so CI runs the serving tests against a real Triton server.
# nvidia-pytriton 0.7.0 pins numpy<2; the whole suite (torch 2.13, onnx, onnxruntime, onnxscript, scikit-learn,
# matplotlib, SpikingJelly) passes with numpy 1.26, so one venv serves everything.
"${PIP[@]}" -e ".[serve]"
# Test tools. SpikingJelly is the test oracle; installed without its dependencies because they pull
# torchvision/torchaudio builds that do not match the pinned CPU torch (its neuron and layer code needs loguru only).
"${PIP[@]}" pytest pytest-xdist hypothesis scikit-learn matplotlib loguru pyyaml
# The linter of `make lint` (rules in pyproject.toml).
"${PIP[@]}" "ruff>=0.6"
"${PIP[@]}" --no-deps spikingjelly==2.0.0
# `dsr-deploy plugins build` (run by `make test`) needs CMake and a C++ compiler; take CMake/Ninja from PyPI if absent.
command -v cmake >/dev/null 2>&1 || "${PIP[@]}" cmake ninja
# With nvcc on the machine, tests/test_cuda_codegen.py also reads the kernels' SASS: cuobjdump and nvdisasm are not
# part of every toolkit install, but NVIDIA publishes them on PyPI (5 MB).
if command -v nvcc >/dev/null 2>&1; then
  "${PIP[@]}" nvidia-cuda-cuobjdump==13.5.37 nvidia-cuda-nvdisasm==13.5.37 || echo "setup: cuobjdump/nvdisasm not installed; the SASS check will skip" >&2
fi
