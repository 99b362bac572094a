#!/usr/bin/env bash
# First contact with a GPU, in one command that always leaves a report:
#
#   OUT=DIR bash scripts/gpu_check.sh [--quick] [--build-only] [--dry-run-cpu]
#
# Writes DIR/gpu_check.json and DIR/gpu_check.md (default DIR: build/gpu_check/out) after EVERY stage, the build
# output to DIR/gpu_check_build.log, and on a GPU also benchmarks/results/gpu_check_<GPU>.{json,md} (commit those);
# the last line printed is the summary. Stages (scripts/gpu_check.py): environment, build (CMake; one nvcc command
# without cmake; "not checked: no nvcc" without nvcc), float and quantised CUDA kernels vs the CPU op, the torch CUDA
# op, TorchScript and pt2 on the device, timings vs a device-to-device copy (small, mid 0.5-2 M, large 21 M neurons,
# every dtype), TensorRT engines of the digits model where tensorrt imports. A stage that fails is reported and the
# next one runs; without a GPU the same stages run as a CPU dry run and the report says what was not checked.
# Budget: about 5-7 minutes on an H100/H200 (stages past --budget, default 450 s, are skipped and reported).
#
# Environment: PYTHON (interpreter; default .venv/bin/python if it imports torch, else python3), CUDA_HOME /
# CUDACXX (nvcc), DSR_CUDA_ARCH (default: the GPU's own), DSR_WHEELS (SpikingJelly wheels for the timing column).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/build/gpu_check/out}
mkdir -p "$OUT" || { echo "gpu_check: cannot create OUT=$OUT" >&2; exit 2; }
OUT=$(cd "$OUT" && pwd)
if ! command -v nvcc >/dev/null 2>&1 && [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ] \
   && [ -z "${DSR_GPU_CHECK_NO_DEFAULT_CUDA:-}" ]; then
  export CUDA_HOME=/usr/local/cuda
fi
if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3
  if [ -x .venv/bin/python ] && .venv/bin/python -c "import torch" 2>/dev/null; then
    PYTHON=.venv/bin/python
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" scripts/gpu_check.py --out-dir "$OUT" "$@"
rc=$?
if [ ! -s "$OUT/gpu_check.json" ]; then
  # The driver died before its first report (no interpreter, a syntax error): still leave one.
  printf '{"mode": "no report from scripts/gpu_check.py", "stages": [{"name": "driver", "status": "failed", "note": "%s exited %s before writing a report"}], "summary": "gpu_check summary: the driver failed (rc %s)"}\n' \
    "$PYTHON" "$rc" "$rc" > "$OUT/gpu_check.json"
  echo "gpu_check summary: the driver failed (rc $rc) before any stage; see the output above; report $OUT/gpu_check.json"
fi
exit $rc
