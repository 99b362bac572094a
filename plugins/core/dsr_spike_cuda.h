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
const char* error_string(int code);

}  // namespace cuda
}  // namespace dsr
