// libdsr_kernels.so: the spike-loop core behind plain C functions, for callers without a framework adapter (ctypes):
// benchmarks/bench_kernels.py times the CPU loop into a preallocated output with it, and scripts/gpu_check.py falls
// back to the CUDA entry when the PyTorch CUDA adapter cannot be built.
//
// dtype: 0 float32, 1 float64, 2 float16, 3 bfloat16. neuron: 0 IF, 1 LIF. v_in / v_out: compute-dtype membranes or
// NULL. Returns 0 on success.
#include "dsr_spike.h"
#include "dsr_spike_conv.h"
#if defined(DSR_WITH_CUDA)
#include "dsr_spike_cuda.h"
#endif

#define DSR_C_EXPORT extern "C" __attribute__((visibility("default")))

DSR_C_EXPORT int dsr_cpu_forward(int dtype, const void* x, void* y, const void* v_in, void* v_out, int64_t T,
                                 int64_t N, int neuron, double v_threshold, double alpha, double tau, double delta_t,
                                 int num_threads) {
  if (dtype < 0 || dtype > 3 || neuron < 0 || neuron > 1) return 1;
  const dsr::LayerParams lp(static_cast<dsr::Neuron>(neuron), v_threshold, alpha, tau, delta_t);
  const dsr::ForwardArgs args{static_cast<dsr::DType>(dtype), x, y, v_in, v_out, T, N, &lp.f32, &lp.f64};
  dsr::cpu_forward(args, num_threads);
  return 0;
}

DSR_C_EXPORT const char* dsr_cpu_kernel_isa() { return dsr::cpu_kernel_isa(); }
// The event-driven int8 convolution's loop on this CPU ("avx2" / "baseline"; DSR_SPIKE_CONV_ISA=baseline forces it).
DSR_C_EXPORT const char* dsr_spike_conv_isa() { return dsr::spike_conv_isa(); }

// The quantised op (dsr_spike.h, QuantArgs): code 0 uint8, 1 int8 (x, y and *zero_point); scale one float32.
DSR_C_EXPORT int dsr_cpu_forward_quantized(int code, const void* x, void* y, const float* scale, const void* zero_point,
                                           int64_t T, int64_t N, int neuron, double v_threshold, double alpha,
                                           double tau, double delta_t) {
  if (code < 0 || code > 1 || neuron < 0 || neuron > 1) return 1;
  const dsr::LayerParams lp(static_cast<dsr::Neuron>(neuron), v_threshold, alpha, tau, delta_t);
  const dsr::QuantArgs args{static_cast<dsr::Code>(code), x, y, scale, zero_point, T, N, &lp.f32};
  if (T > 0) dsr::cpu_forward_quantized_range(args, 0, N);
  return 0;
}

#if defined(DSR_WITH_CUDA)
DSR_C_EXPORT int dsr_cuda_forward(int dtype, const void* x, void* y, const void* v_in, void* v_out, int64_t T,
                                  int64_t N, int neuron, double v_threshold, double alpha, double tau, double delta_t,
                                  void* stream) {
  if (dtype < 0 || dtype > 3 || neuron < 0 || neuron > 1) return 1;
  const dsr::LayerParams lp(static_cast<dsr::Neuron>(neuron), v_threshold, alpha, tau, delta_t);
  const dsr::ForwardArgs args{static_cast<dsr::DType>(dtype), x, y, v_in, v_out, T, N, &lp.f32, &lp.f64};
  return dsr::cuda::launch_forward(args, stream);
}

DSR_C_EXPORT const char* dsr_cuda_error_string(int code) { return dsr::cuda::error_string(code); }

// As dsr_cpu_forward_quantized on device pointers (scale and zero_point too).
DSR_C_EXPORT int dsr_cuda_forward_quantized(int code, const void* x, void* y, const float* scale,
                                            const void* zero_point, int64_t T, int64_t N, int neuron,
                                            double v_threshold, double alpha, double tau, double delta_t,
                                            void* stream) {
  if (code < 0 || code > 1 || neuron < 0 || neuron > 1) return 1;
  const dsr::LayerParams lp(static_cast<dsr::Neuron>(neuron), v_threshold, alpha, tau, delta_t);
  const dsr::QuantArgs args{static_cast<dsr::Code>(code), x, y, scale, zero_point, T, N, &lp.f32};
  return dsr::cuda::launch_forward_quantized(args, stream);
}

// The launch shape dsr_cuda_forward uses for N neurons of `dtype` on a device with `sms` SMs (buffers aligned):
// out[0] neurons per thread, out[1] threads per block, out[2] blocks. dtype 4 / 5: the quantised op's uint8 / int8
// codes (dsr_cuda_forward_quantized).
DSR_C_EXPORT int dsr_cuda_launch_shape(int dtype, int64_t N, int sms, int64_t* out) {
  static const int kBytes[] = {4, 8, 2, 2, 1, 1};
  if (dtype < 0 || dtype > 5 || out == nullptr) return 1;
  const dsr::cuda::LaunchShape s = dsr::cuda::launch_shape(N, 16 / kBytes[dtype], true, sms);
  out[0] = s.vec;
  out[1] = s.block;
  out[2] = s.grid;
  return 0;
}
#endif
