// A plain C entry point to the CUDA core (libdsr_cuda_kernels.so), for callers without a framework adapter:
// scripts/gpu_check.py falls back to it through ctypes when the PyTorch CUDA adapter cannot be built.
#include "dsr_spike_cuda.h"

extern "C" __attribute__((visibility("default"))) int dsr_cuda_forward(
    int dtype, const void* x, void* y, const void* v_in, void* v_out, int64_t T, int64_t N, int neuron,
    double v_threshold, double alpha, double tau, double delta_t, int output_scaling, void* stream) {
  const auto n = static_cast<dsr::Neuron>(neuron);
  const auto scaling = static_cast<dsr::OutputScaling>(output_scaling);
  const auto p32 = dsr::make_params<float>(n, v_threshold, alpha, tau, delta_t, scaling);
  const auto p64 = dsr::make_params<double>(n, v_threshold, alpha, tau, delta_t, scaling);
  const dsr::ForwardArgs args{static_cast<dsr::DType>(dtype), x, y, v_in, v_out, T, N, &p32, &p64};
  return dsr::cuda::launch_forward(args, stream);
}

extern "C" __attribute__((visibility("default"))) const char* dsr_cuda_error_string(int code) {
  return dsr::cuda::error_string(code);
}
