#!/usr/bin/env bash
# One command on a CUDA machine: build the CUDA spike kernels, check them against PyTorch CUDA eager on fresh random
# inputs, time them against a device-to-device copy (and SpikingJelly's eager node), print a table, write it to a file.
#
#   scripts/gpu_check.sh [OUT.md]        (default benchmarks/results/gpu_check_<GPU>.md, plus a .json beside it)
#   scripts/gpu_check.sh --build-only    (no GPU needed, a CUDA build of torch is: build, then check that the
#                                         torch op registered CUDA kernels; the preflight for a GPU session)
#
# Needs: torch with CUDA, nvcc, cmake (ninja optional). Builds into build/gpu_check/ and never touches dsr_deploy/_lib.
# SpikingJelly is optional: installed, or pure-python wheels in build/wheels/ (carry the output of
# `pip download --no-deps spikingjelly==2.0.0 loguru -d build/wheels`); without it that column says n/a.
# Environment: PYTHON (interpreter), CUDA_HOME / CUDACXX (nvcc), DSR_CUDA_ARCH (default: the GPU's own),
# TENSORRT_ROOT (TensorRT headers; with the tensorrt package installed, the plugins are built and an engine is run).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

BUILD_ONLY=0
if [ "${1:-}" = "--build-only" ]; then
  BUILD_ONLY=1
  shift
fi
# What the interpreter must have: a GPU it can see, or (--build-only) just a CUDA build of torch.
if [ "$BUILD_ONLY" = 1 ]; then
  NEED='import torch,sys; sys.exit(0 if torch.version.cuda else 1)'
else
  NEED='import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)'
fi
if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3
  if [ -x .venv/bin/python ] && .venv/bin/python -c "$NEED" 2>/dev/null; then
    PYTHON=.venv/bin/python
  fi
fi
if ! "$PYTHON" -c "$NEED"; then
  if [ "$BUILD_ONLY" = 1 ]; then
    echo "gpu_check: $PYTHON has no CUDA build of torch" >&2
  else
    echo "gpu_check: $PYTHON has no CUDA-capable torch or sees no GPU" >&2
  fi
  exit 2
fi
if [ "$BUILD_ONLY" = 1 ]; then
  GPU=none
else
  GPU=$("$PYTHON" -c 'import torch,re; print(re.sub(r"[^A-Za-z0-9]+","-",torch.cuda.get_device_name(0)).strip("-"))')
fi
OUT=${1:-benchmarks/results/gpu_check_${GPU}.md}
LIB="$ROOT/build/gpu_check/lib"
mkdir -p "$LIB"
export DSR_DEPLOY_LIB_DIR="$LIB"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if ! command -v nvcc >/dev/null 2>&1 && [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDA_HOME=/usr/local/cuda
fi
ARCH=${DSR_CUDA_ARCH:-}
ARCH_PY=${ARCH:+\"$ARCH\"}
ARCH_PY=${ARCH_PY:-None}

echo "== building the torch op with CUDA kernels (+ libdsr_kernels.so) into $LIB"
if ! "$PYTHON" -c "
from dsr_deploy import plugin_build as plugins
plugins.build(torch=True, cuda=True, ort=False, trt=False, cuda_arch=$ARCH_PY, build_dir='build/gpu_check/cmake-torch', lib_dir='$LIB', verbose=True)
"; then
  echo "== the torch CUDA adapter did not build; building the CUDA core alone (the check then runs it through ctypes)"
  rm -f "$LIB/libdsr_torch_ops.so"
  "$PYTHON" -c "
from dsr_deploy import plugin_build as plugins
plugins.build(torch=False, cuda=True, ort=False, trt=False, cuda_arch=$ARCH_PY, build_dir='build/gpu_check/cmake-core', lib_dir='$LIB', verbose=True)
"
fi

# The TensorRT plugins, when TensorRT's headers are given (the pip wheel has none) and its Python package is installed:
# scripts/gpu_check.py then builds an engine with them. Optional: a failure here only skips that step.
if [ -n "${TENSORRT_ROOT:-}" ] && "$PYTHON" -c "import tensorrt" 2>/dev/null; then
  echo "== building the TensorRT plugins against $TENSORRT_ROOT"
  "$PYTHON" -c "
from dsr_deploy import plugin_build as plugins
plugins.build(torch=False, cuda=True, ort=False, trt=True, trt_root='$TENSORRT_ROOT', cuda_arch=$ARCH_PY, build_dir='build/gpu_check/cmake-trt', lib_dir='$LIB', verbose=False)
" || echo "== the TensorRT plugin build failed; the TensorRT step runs the function bodies"
fi

if [ "$BUILD_ONLY" = 1 ]; then
  echo "== build only: do the libraries load, and did the torch op register its CUDA kernels?"
  "$PYTHON" - <<'PY'
import ctypes, os, sys
import torch
from dsr_deploy import ops, plugins
lib = os.environ["DSR_DEPLOY_LIB_DIR"]
kernels = ctypes.CDLL(os.path.join(lib, plugins.KERNELS_LIBRARY))
print("libdsr_kernels.so: dsr_cuda_forward", "present" if hasattr(kernels, "dsr_cuda_forward") else "MISSING")
status = ops.native_status()
print("libdsr_torch_ops.so:", status["reason"])
cuda = {op: torch._C._dispatch_has_kernel_for_dispatch_key(f"dsr::{op}", "CUDA") for op in ("if_spike", "lif_spike")}
print("CUDA kernels registered:", cuda)
sys.exit(0 if hasattr(kernels, "dsr_cuda_forward") and status["loaded"] and all(cuda.values()) else 1)
PY
  exit $?
fi

echo "== checking and timing"
"$PYTHON" scripts/gpu_check.py --out "$OUT"
