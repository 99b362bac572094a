// CUDA launcher of the DSR spike loop (see dsr_spike.h for the arithmetic contract).
// Plain C++ header: the adapters include it without nvcc and pass their stream as a void*.
#pragma once

#include "dsr_spike.h"

namespace dsr {
namespace cuda {

// Launches one forward call on `stream` (a cudaStream_t); x / y / v_in / v_out are device pointers, laid out as
// for the CPU (ForwardArgs). Supported dtypes: F32, F16, BF16 (float32 membrane) and F64. Returns the
// cudaError_t of the launch (0 = success); error_string() turns it into text.
int launch_forward(const ForwardArgs& args, void* stream);

// Launches one quantised call (QuantArgs, dsr_spike.h): x / y codes (uint8 or int8) and the scale and zero point
// all in device memory; the float32 kernel's per-neuron step on the dequantised current, spike codes out. The same
// launch shapes as a 1-byte dtype (16 codes per thread when aligned). Returns the cudaError_t of the launch.
int launch_forward_quantized(const QuantArgs& args, void* stream);

// How launch_forward splits N neurons: `vec` neurons per thread (16, 8, 4... bytes of them, or 1), `block` threads
// per block (<= kMaxBlock, the kernel's __launch_bounds__), `grid` blocks. Chosen from N, the widest vector the
// dtype allows, whether the buffers allow vector access, and the device's SM count `sms` (0: unknown, the
// large-N shape). Pure host code, exported as dsr_cuda_launch_shape for tests and scripts/gpu_check.py.
constexpr int kMaxBlock = 256;
struct LaunchShape {
  int vec = 1;
  int block = kMaxBlock;
  int64_t grid = 0;
};
LaunchShape launch_shape(int64_t N, int max_vec, bool aligned, int sms);
const char* error_string(int code);

}  // namespace cuda
}  // namespace dsr
