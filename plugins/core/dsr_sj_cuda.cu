// CUDA kernel of the SpikingJelly neurons (dsr_sj.h), float32 and float64: one thread per neuron walking over T,
// every operation an explicitly rounded intrinsic (no FMA contraction whatever nvcc's -fmad; tests/test_cuda_codegen.py
// checks the PTX), so it is bit-exact with the CPU core and dsr_deploy.functional.sj_forward. Compiled as host C++
// against tests/cuda_emulation/cuda_host_emulation.h by tests/test_cuda_emulation.py (DSR_LAUNCH, the _rn intrinsics).
#include "dsr_sj.h"

#if !defined(DSR_CUDA_HOST_EMULATION)
#include <cuda_runtime.h>
#define DSR_LAUNCH(grid, block, stream, ...) __VA_ARGS__<<<(grid), (block), 0, (stream)>>>
#endif

namespace dsr {
namespace cuda_sj {

struct Ops32 {
  static __device__ __forceinline__ float add(float a, float b) { return __fadd_rn(a, b); }
  static __device__ __forceinline__ float sub(float a, float b) { return __fsub_rn(a, b); }
  static __device__ __forceinline__ float mul(float a, float b) { return __fmul_rn(a, b); }
  static __device__ __forceinline__ float div(float a, float b) { return __fdiv_rn(a, b); }
};
struct Ops64 {
  static __device__ __forceinline__ double add(double a, double b) { return __dadd_rn(a, b); }
  static __device__ __forceinline__ double sub(double a, double b) { return __dsub_rn(a, b); }
  static __device__ __forceinline__ double mul(double a, double b) { return __dmul_rn(a, b); }
  static __device__ __forceinline__ double div(double a, double b) { return __ddiv_rn(a, b); }
};

template <typename C, typename O, int kCharge>
__global__ void sj_kernel(const C* x, C* y, const C* v_in, C* v_out, int64_t T, int64_t N, C vth, C r, C k,
                          int decay_input, int hard) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  C v = v_in ? v_in[n] : r;
  const C one = C(1), zero = C(0);
  for (int64_t t = 0; t < T; ++t) {
    const C xi = x[t * N + n];
    C h;
    if (kCharge == 0) {
      h = O::add(v, xi);
    } else {
      const C dv = O::sub(v, r);
      if (decay_input) {
        const C xd = O::sub(xi, dv);
        h = O::add(v, kCharge == 1 ? O::div(xd, k) : O::mul(xd, k));
      } else {
        const C dl = kCharge == 1 ? O::div(dv, k) : O::mul(dv, k);
        h = O::add(O::sub(v, dl), xi);
      }
    }
    const C s = h >= vth ? one : zero;
    v = hard ? O::add(O::mul(s, r), O::mul(O::sub(one, s), h)) : O::sub(h, O::mul(s, vth));
    y[t * N + n] = s;
  }
  if (v_out) v_out[n] = v;
}

template <typename C, typename O>
int launch_typed(const SJArgs& a, cudaStream_t stream) {
  const int block = 256;
  const unsigned grid = static_cast<unsigned>((a.N + block - 1) / block);
  const C vth = static_cast<C>(a.v_threshold), r = a.hard ? static_cast<C>(a.v_reset) : C(0);
  const C k = static_cast<C>(a.leak);
  const C* x = static_cast<const C*>(a.x);
  C* y = static_cast<C*>(a.y);
  const C* vi = static_cast<const C*>(a.v_in);
  C* vo = static_cast<C*>(a.v_out);
  switch (a.charge) {
    case SJCharge::IF:
      DSR_LAUNCH(grid, block, stream, sj_kernel<C, O, 0>)(x, y, vi, vo, a.T, a.N, vth, r, k, a.decay_input, a.hard);
      break;
    case SJCharge::LIF:
      DSR_LAUNCH(grid, block, stream, sj_kernel<C, O, 1>)(x, y, vi, vo, a.T, a.N, vth, r, k, a.decay_input, a.hard);
      break;
    case SJCharge::PLIF:
      DSR_LAUNCH(grid, block, stream, sj_kernel<C, O, 2>)(x, y, vi, vo, a.T, a.N, vth, r, k, a.decay_input, a.hard);
      break;
  }
  return static_cast<int>(cudaGetLastError());
}

}  // namespace cuda_sj

// Launches one SpikingJelly forward call on `stream` (device pointers, F32 or F64; the compute type is the input's).
// Returns the cudaError_t of the launch; 1 (cudaErrorInvalidValue) for another dtype.
int launch_sj_forward(const SJArgs& a, void* stream) {
  if (a.N <= 0) return 0;
  auto s = static_cast<cudaStream_t>(stream);
  if (a.dtype == DType::F32) return cuda_sj::launch_typed<float, cuda_sj::Ops32>(a, s);
  if (a.dtype == DType::F64) return cuda_sj::launch_typed<double, cuda_sj::Ops64>(a, s);
  return 1;
}

}  // namespace dsr

// C entry point (tests, scripts): arguments as SJArgs, dtype 0 = F32, 1 = F64; charge 0 / 1 / 2 = IF / LIF / PLIF.
extern "C" __attribute__((visibility("default"))) int dsr_sj_cuda_forward(
    int dtype, int charge, int decay_input, int hard, double v_threshold, double v_reset, double leak, const void* x,
    void* y, const void* v_in, void* v_out, int64_t T, int64_t N, void* stream) {
  const dsr::SJArgs a{static_cast<dsr::SJCharge>(charge), decay_input, hard, v_threshold, v_reset, leak,
                      static_cast<dsr::DType>(dtype), x, y, v_in, v_out, T, N};
  return dsr::launch_sj_forward(a, stream);
}
