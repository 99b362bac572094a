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
"${PIP[@]}" -e .
# Test tools. SpikingJelly is the test oracle; installed without its dependencies because they pull
# torchvision/torchaudio builds that do not match the pinned CPU torch (its neuron and layer code needs loguru only).
"${PIP[@]}" pytest hypothesis scikit-learn matplotlib loguru
"${PIP[@]}" --no-deps spikingjelly==2.0.0
# `dsr-deploy plugins build` (run by `make test`) needs CMake and a C++ compiler; take CMake/Ninja from PyPI if absent.
command -v cmake >/dev/null 2>&1 || "${PIP[@]}" cmake ninja
