// The DSR spike loop on CUDA: one thread per short vector of neurons, membrane in registers, looping over T.
//
// Each thread owns VEC adjacent neurons (16 bytes of input per step: 4 float, 8 half/bfloat16, 2 double), so a warp
// reads and writes 512 contiguous bytes per time step; small layers run one neuron per thread in smaller blocks so
// every SM gets work (launch_shape, from N and the device's SM count). Loads use the streaming cache hint (__ldcs: read once) and
// stores __stcs (written once, not re-read). Arithmetic is spelled with the _rn intrinsics so nothing is contracted
// into an FMA (the file is also compiled with --fmad=false): float32 is then bit-exact with PyTorch CUDA eager,
// which runs every op of the reference loop as its own kernel.
//
// DSR_CUDA_HOST_EMULATION (tests only: tests/test_cuda_emulation.py) compiles this same file as host C++ against a
// shim that runs the grid as loops, so the indexing, vector and tail paths, state in/out and 16-bit conversions are
// checked bit-exact on a machine without a GPU. The two hooks it needs: DSR_LAUNCH and the half widening below.
#ifndef DSR_CUDA_HOST_EMULATION
#include <cuda_runtime.h>
#define DSR_LAUNCH(grid, block, stream, ...) __VA_ARGS__<<<(grid), (block), 0, (stream)>>>
#endif

#include <cstdint>

#include "dsr_spike_cuda.h"

namespace dsr {
namespace cuda {
namespace {

template <typename S> struct DevStorage;
template <> struct DevStorage<float> {
  using C = float;
  using Bits = float;
  __device__ static float load(float b) { return b; }
};
template <> struct DevStorage<double> {
  using C = double;
  using Bits = double;
  __device__ static double load(double b) { return b; }
};
template <> struct DevStorage<Half> {
  using C = float;
  using Bits = unsigned short;
  __device__ static float load(unsigned short b) {
#ifndef DSR_CUDA_HOST_EMULATION
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(b));  // exact widening
    return f;
#else
    return half_to_float(b);  // also exact: both are the identity on the value
#endif
  }
};
template <> struct DevStorage<BFloat16> {
  using C = float;
  using Bits = unsigned short;
  __device__ static float load(unsigned short b) { return __uint_as_float(static_cast<unsigned>(b) << 16); }
};

__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ double sub_rn(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }

// VEC storage elements; a 16-byte pack moves as one uint4, anything smaller element by element. The test is on the
// payload size, not sizeof(Pack): an alignas(16) pack of one float is 16 bytes big but holds 4, and moving it as a
// uint4 would write 12 bytes past the neuron (and fault on an unaligned base).
template <typename Bits, int VEC>
constexpr bool kWidePack = sizeof(Bits) * VEC == 16;

template <typename Bits, int VEC>
struct alignas(kWidePack<Bits, VEC> ? 16 : alignof(Bits)) Pack {
  Bits e[VEC];
};

template <typename Bits, int VEC>
__device__ __forceinline__ Pack<Bits, VEC> load_pack(const Bits* p) {
  Pack<Bits, VEC> out;
  if constexpr (kWidePack<Bits, VEC>) {
    const uint4 raw = __ldcs(reinterpret_cast<const uint4*>(p));
    memcpy(&out, &raw, 16);
  } else {
#pragma unroll
    for (int i = 0; i < VEC; ++i) out.e[i] = __ldcs(p + i);
  }
  return out;
}

template <typename Bits, int VEC>
__device__ __forceinline__ void store_pack(Bits* p, const Pack<Bits, VEC>& v) {
  if constexpr (kWidePack<Bits, VEC>) {
    uint4 raw;
    memcpy(&raw, &v, 16);
    __stcs(reinterpret_cast<uint4*>(p), raw);
  } else {
#pragma unroll
    for (int i = 0; i < VEC; ++i) __stcs(p + i, v.e[i]);
  }
}

template <typename S, int VEC, bool kLeaky>
__global__ void __launch_bounds__(kMaxBlock) spike_kernel(SpikeParams<typename DevStorage<S>::C> p,
                                                    typename DevStorage<S>::Bits out_spike,
                                                    typename DevStorage<S>::Bits out_none,
                                                    const typename DevStorage<S>::Bits* __restrict__ x,
                                                    typename DevStorage<S>::Bits* __restrict__ y,
                                                    const typename DevStorage<S>::C* __restrict__ v_in,
                                                    typename DevStorage<S>::C* __restrict__ v_out, int64_t T,
                                                    int64_t N) {
  using C = typename DevStorage<S>::C;
  using Bits = typename DevStorage<S>::Bits;
  const int64_t n = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * VEC;
  if (n >= N) return;  // launches guarantee n + VEC <= N for VEC > 1
  C v[VEC];
#pragma unroll
  for (int i = 0; i < VEC; ++i) v[i] = v_in ? v_in[n + i] : C(0);
  const Bits* xp = x + n;
  Bits* yp = y + n;
#pragma unroll 4
  for (int64_t t = 0; t < T; ++t) {
    const Pack<Bits, VEC> in = load_pack<Bits, VEC>(xp);
    Pack<Bits, VEC> out;
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      const C xi = DevStorage<S>::load(in.e[i]);
      const C vi = kLeaky ? add_rn(mul_rn(p.decay, v[i]), mul_rn(p.gain, xi)) : add_rn(v[i], xi);
      const bool fire = vi >= p.threshold;
      v[i] = sub_rn(vi, fire ? p.vth : p.no_spike);
      out.e[i] = fire ? out_spike : out_none;
    }
    store_pack<Bits, VEC>(yp, out);
    xp += N;
    yp += N;
  }
  if (v_out) {
#pragma unroll
    for (int i = 0; i < VEC; ++i) v_out[n + i] = v[i];
  }
}

template <typename S>
typename DevStorage<S>::Bits out_bits(typename DevStorage<S>::C c) {
  const S s = Storage<S>::from_compute(c);
  typename DevStorage<S>::Bits b;
  static_assert(sizeof(b) == sizeof(s), "storage size");
  memcpy(&b, &s, sizeof(b));
  return b;
}

// The SM count of the current device, read once per device (cudaDeviceGetAttribute is cheap, but this runs per
// layer and per streaming step). 0 when unknown: the launch shape then falls back to the large-N one.
int sm_count() {
  constexpr int kMaxDevices = 64;
  static int cached[kMaxDevices] = {};  // benign race: every writer stores the same value
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= kMaxDevices) return 0;
  if (cached[dev] == 0) {
    int n = 0;
    if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) n = 0;
    cached[dev] = n;
  }
  return cached[dev];
}

template <typename S, int VEC>
cudaError_t launch_vec(const SpikeParams<typename DevStorage<S>::C>& p, const ForwardArgs& a, const LaunchShape& shape,
                       cudaStream_t stream) {
  using Bits = typename DevStorage<S>::Bits;
  using C = typename DevStorage<S>::C;
  const Bits spike = out_bits<S>(p.out_spike), none = out_bits<S>(p.out_none);
  if (shape.grid > 0x7fffffff) return cudaErrorInvalidConfiguration;
  const auto* x = static_cast<const Bits*>(a.x);
  auto* y = static_cast<Bits*>(a.y);
  const auto* vi = static_cast<const C*>(a.v_in);
  auto* vo = static_cast<C*>(a.v_out);
  const auto grid = static_cast<unsigned>(shape.grid);
  if (p.leaky)
    DSR_LAUNCH(grid, shape.block, stream, spike_kernel<S, VEC, true>)(p, spike, none, x, y, vi, vo, a.T, a.N);
  else
    DSR_LAUNCH(grid, shape.block, stream, spike_kernel<S, VEC, false>)(p, spike, none, x, y, vi, vo, a.T, a.N);
  return cudaGetLastError();
}

template <typename S>
cudaError_t launch_typed(const SpikeParams<typename DevStorage<S>::C>& p, const ForwardArgs& a, cudaStream_t stream) {
  constexpr int kVec = 16 / static_cast<int>(sizeof(typename DevStorage<S>::Bits));
  const bool aligned = (reinterpret_cast<uintptr_t>(a.x) % 16 == 0) && (reinterpret_cast<uintptr_t>(a.y) % 16 == 0);
  const LaunchShape shape = launch_shape(a.N, kVec, aligned, sm_count());
  if (shape.vec == kVec) return launch_vec<S, kVec>(p, a, shape, stream);
  return launch_vec<S, 1>(p, a, shape, stream);
}

}  // namespace

LaunchShape launch_shape(int64_t N, int max_vec, bool aligned, int sms) {
  LaunchShape shape;
  // Vector loads need every row start aligned: 16-byte aligned bases and N a multiple of the vector width.
  shape.vec = (aligned && max_vec > 1 && N % max_vec == 0) ? max_vec : 1;
  // Small layers: one thread per vector leaves most SMs idle (N = 32K float32 is 8192 threads, 32 blocks of 256 on
  // a 132-SM H100/H200). Below kFullThreadsPerSM threads per SM, one thread per neuron (4-8x the threads, each load
  // still a coalesced 128 bytes per warp), and blocks shrink (down to one warp) until there are kBlocksPerSM per SM,
  // so every SM gets work. Large layers keep 16-byte vectors and 256-thread blocks (the bandwidth path).
  constexpr int64_t kFullThreadsPerSM = 1024;
  constexpr int kBlocksPerSM = 4;
  constexpr int kMinBlock = 32;  // one warp
  if (sms > 0 && shape.vec > 1 && (N + shape.vec - 1) / shape.vec < kFullThreadsPerSM * sms) shape.vec = 1;
  const int64_t threads = (N + shape.vec - 1) / shape.vec;
  shape.block = kMaxBlock;
  if (sms > 0) {
    while (shape.block > kMinBlock && (threads + shape.block - 1) / shape.block < int64_t{kBlocksPerSM} * sms)
      shape.block /= 2;
  }
  shape.grid = (threads + shape.block - 1) / shape.block;
  return shape;
}

int launch_forward(const ForwardArgs& a, void* stream_ptr) {
  if (a.N <= 0) return 0;
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  cudaError_t err = cudaSuccess;
  switch (a.dtype) {
    case DType::F32: err = launch_typed<float>(*a.params_f32, a, stream); break;
    case DType::F16: err = launch_typed<Half>(*a.params_f32, a, stream); break;
    case DType::BF16: err = launch_typed<BFloat16>(*a.params_f32, a, stream); break;
    case DType::F64: err = launch_typed<double>(*a.params_f64, a, stream); break;
  }
  return static_cast<int>(err);
}

const char* error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

}  // namespace cuda
}  // namespace dsr
