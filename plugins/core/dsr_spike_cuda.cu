// The DSR spike loop on CUDA: one thread per short vector of neurons, membrane in registers, looping over T.
//
// Each thread owns VEC adjacent neurons (16 bytes of input per step: 4 float, 8 half/bfloat16, 2 double), so a warp
// reads and writes 512 contiguous bytes per time step; smaller layers take narrower vectors (8, 4... bytes), the
// smallest one neuron per thread in smaller blocks, so every SM gets work (launch_shape, from N and the SM count). Loads use the streaming cache hint (__ldcs: read
// once) and stores __stcs (written once, not re-read). Arithmetic is spelled with the _rn intrinsics so nothing is
// contracted into an FMA (the file is also compiled with --fmad=false): float32 is then bit-exact with PyTorch CUDA
// eager, which runs every op of the reference loop as its own kernel.
//
// The quantised ops (launch_forward_quantized: uint8 / int8 current codes in, spike codes out, 16 codes per thread)
// are the same kernel with another input decoder (the exact DequantizeLinear, its scale and zero point read from
// device memory) and the spike codes as output values: one per-neuron step (neuron_step) for every path.
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

// VEC storage elements; a pack of 16, 8 or 4 bytes (VEC > 1) moves as one uint4, uint2 or 32-bit word, anything
// else element by element. The test is on the payload size, not sizeof(Pack): an alignas(16) pack of one float is 16
// bytes big but holds 4, and moving it as a uint4 would write 12 bytes past the neuron (and fault on an unaligned base).
template <int Bytes>
struct RawWord;
template <>
struct RawWord<16> {
  using type = uint4;
};
template <>
struct RawWord<8> {
  using type = uint2;
};
template <>
struct RawWord<4> {
  using type = unsigned int;
};

template <typename Bits, int VEC>
constexpr int kPackBytes = static_cast<int>(sizeof(Bits)) * VEC;
template <typename Bits, int VEC>
constexpr bool kWidePack = VEC > 1 && (kPackBytes<Bits, VEC> == 16 || kPackBytes<Bits, VEC> == 8 ||
                                       kPackBytes<Bits, VEC> == 4);

template <typename Bits, int VEC>
struct alignas(kWidePack<Bits, VEC> ? kPackBytes<Bits, VEC> : alignof(Bits)) Pack {
  Bits e[VEC];
};

template <typename Bits, int VEC>
__device__ __forceinline__ Pack<Bits, VEC> load_pack(const Bits* p) {
  Pack<Bits, VEC> out;
  if constexpr (kWidePack<Bits, VEC>) {
    using Raw = typename RawWord<kPackBytes<Bits, VEC>>::type;
    const Raw raw = __ldcs(reinterpret_cast<const Raw*>(p));
    memcpy(&out, &raw, sizeof(Raw));
  } else {
#pragma unroll
    for (int i = 0; i < VEC; ++i) out.e[i] = __ldcs(p + i);
  }
  return out;
}

template <typename Bits, int VEC>
__device__ __forceinline__ void store_pack(Bits* p, const Pack<Bits, VEC>& v) {
  if constexpr (kWidePack<Bits, VEC>) {
    using Raw = typename RawWord<kPackBytes<Bits, VEC>>::type;
    Raw raw;
    memcpy(&raw, &v, sizeof(Raw));
    __stcs(reinterpret_cast<Raw*>(p), raw);
  } else {
#pragma unroll
    for (int i = 0; i < VEC; ++i) __stcs(p + i, v.e[i]);
  }
}

// The input side of a launch: how a stored element becomes the compute-type current. Float storage widens
// (DevStorage); quantised codes are dequantised exactly as ONNX DequantizeLinear, fl(float(q - zero_point) * scale)
// (an exact integer, an exact conversion, one rounded product), their scale and zero point read from device memory
// (they are ONNX initializers / TensorRT plugin inputs) once per thread.
template <typename S>
struct FloatInput {
  using Bits = typename DevStorage<S>::Bits;
  using C = typename DevStorage<S>::C;
  __device__ FloatInput resolve() const { return *this; }
  __device__ C operator()(Bits b) const { return DevStorage<S>::load(b); }
};

template <typename Q>
struct Dequantize {
  float scale;
  int32_t zero_point;
  __device__ float operator()(Q q) const {
    return mul_rn(static_cast<float>(static_cast<int32_t>(q) - zero_point), scale);
  }
};

template <typename Q>
struct CodeInput {
  using Bits = Q;
  using C = float;
  const float* scale;
  const Q* zero_point;
  // A null zero point is 0 (the TensorRT plugin's int8 zero point given in another type: TensorRT's int8 is symmetric).
  __device__ Dequantize<Q> resolve() const {
    return {*scale, zero_point != nullptr ? static_cast<int32_t>(*zero_point) : 0};
  }
};

// One neuron, one time step, in the reference's operation order: the membrane update (IF v + x; LIF decay*v +
// gain*x, two rounded products and a rounded sum), the threshold compare, the reset. Returns whether it fired.
template <bool kLeaky, typename C>
__device__ __forceinline__ bool neuron_step(const SpikeParams<C>& p, C& v, C x) {
  const C vi = kLeaky ? add_rn(mul_rn(p.decay, v), mul_rn(p.gain, x)) : add_rn(v, x);
  const bool fire = vi >= p.threshold;
  v = sub_rn(vi, fire ? p.vth : p.no_spike);
  return fire;
}

// In: FloatInput<S> or CodeInput<Q>; Out: the stored output element (the input's storage for the float op, the
// code type for the quantised one): out_spike / out_none, chosen per neuron-step.
template <typename In, typename Out, int VEC, bool kLeaky>
__global__ void __launch_bounds__(kMaxBlock)
    spike_kernel(SpikeParams<typename In::C> p, Out out_spike, Out out_none, In input,
                 const typename In::Bits* __restrict__ x, Out* __restrict__ y, const typename In::C* __restrict__ v_in,
                 typename In::C* __restrict__ v_out, int64_t T, int64_t N) {
  using C = typename In::C;
  using Bits = typename In::Bits;
  const int64_t n = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * VEC;
  if (n >= N) return;  // launches guarantee n + VEC <= N for VEC > 1
  const auto decode = input.resolve();
  C v[VEC];
#pragma unroll
  for (int i = 0; i < VEC; ++i) v[i] = v_in ? v_in[n + i] : C(0);
  const Bits* xp = x + n;
  Out* yp = y + n;
#pragma unroll 4
  for (int64_t t = 0; t < T; ++t) {
    const Pack<Bits, VEC> in = load_pack<Bits, VEC>(xp);
    Pack<Out, VEC> out;
#pragma unroll
    for (int i = 0; i < VEC; ++i) out.e[i] = neuron_step<kLeaky>(p, v[i], decode(in.e[i])) ? out_spike : out_none;
    store_pack<Out, VEC>(yp, out);
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

template <typename In, typename Out, int VEC>
cudaError_t launch_vec(const SpikeParams<typename In::C>& p, Out spike, Out none, In input, const void* x, void* y,
                       const void* v_in, void* v_out, int64_t T, int64_t N, const LaunchShape& shape,
                       cudaStream_t stream) {
  using C = typename In::C;
  if (shape.grid > 0x7fffffff) return cudaErrorInvalidConfiguration;
  const auto* xb = static_cast<const typename In::Bits*>(x);
  auto* yb = static_cast<Out*>(y);
  const auto* vi = static_cast<const C*>(v_in);
  auto* vo = static_cast<C*>(v_out);
  const auto grid = static_cast<unsigned>(shape.grid);
  if (p.leaky)
    DSR_LAUNCH(grid, shape.block, stream, spike_kernel<In, Out, VEC, true>)(p, spike, none, input, xb, yb, vi, vo, T,
                                                                            N);
  else
    DSR_LAUNCH(grid, shape.block, stream, spike_kernel<In, Out, VEC, false>)(p, spike, none, input, xb, yb, vi, vo, T,
                                                                             N);
  return cudaGetLastError();
}

// One launch at the vector width launch_shape picks: 16 bytes of input per thread for large layers, halved (8, 4, ...
// bytes) while that leaves too few threads to fill the device, one element per thread when the buffers allow no
// vector. Input and output elements have the same size (the float op: one storage type; the quantised op: codes).
template <typename In, typename Out>
cudaError_t launch_typed(const SpikeParams<typename In::C>& p, Out spike, Out none, In input, const void* x, void* y,
                         const void* v_in, void* v_out, int64_t T, int64_t N, cudaStream_t stream) {
  static_assert(sizeof(typename In::Bits) == sizeof(Out), "input and output elements of one size");
  constexpr int kVec = 16 / static_cast<int>(sizeof(Out));
  const bool aligned = (reinterpret_cast<uintptr_t>(x) % 16 == 0) && (reinterpret_cast<uintptr_t>(y) % 16 == 0);
  const LaunchShape shape = launch_shape(N, kVec, aligned, sm_count());
  switch (shape.vec) {
    case kVec: return launch_vec<In, Out, kVec>(p, spike, none, input, x, y, v_in, v_out, T, N, shape, stream);
    case (kVec >= 4 ? kVec / 2 : -2):
      return launch_vec<In, Out, (kVec >= 4 ? kVec / 2 : 1)>(p, spike, none, input, x, y, v_in, v_out, T, N, shape,
                                                             stream);
    case (kVec >= 8 ? kVec / 4 : -4):
      return launch_vec<In, Out, (kVec >= 8 ? kVec / 4 : 1)>(p, spike, none, input, x, y, v_in, v_out, T, N, shape,
                                                             stream);
    case (kVec >= 16 ? kVec / 8 : -8):
      return launch_vec<In, Out, (kVec >= 16 ? kVec / 8 : 1)>(p, spike, none, input, x, y, v_in, v_out, T, N, shape,
                                                              stream);
    default: return launch_vec<In, Out, 1>(p, spike, none, input, x, y, v_in, v_out, T, N, shape, stream);
  }
}

template <typename S>
cudaError_t launch_float(const SpikeParams<typename DevStorage<S>::C>& p, const ForwardArgs& a, cudaStream_t stream) {
  return launch_typed(p, out_bits<S>(p.out_spike), out_bits<S>(p.out_none), FloatInput<S>{}, a.x, a.y, a.v_in, a.v_out,
                      a.T, a.N, stream);
}

template <typename Q>
cudaError_t launch_codes(const QuantArgs& a, cudaStream_t stream) {
  const SpikeParams<float>& p = *a.params;
  const CodeInput<Q> input{a.scale, static_cast<const Q*>(a.zero_point)};
  return launch_typed(p, static_cast<Q>(spike_code(p.out_spike)), static_cast<Q>(spike_code(p.out_none)), input, a.x,
                      a.y, nullptr, nullptr, a.T, a.N, stream);
}

}  // namespace

LaunchShape launch_shape(int64_t N, int max_vec, bool aligned, int sms) {
  LaunchShape shape;
  // Vector loads need every row start aligned: 16-byte aligned bases and N a multiple of the vector width.
  // Large layers: 16-byte vectors and 256-thread blocks (the bandwidth path). Below kFullThreadsPerSM threads per SM
  // the vector halves (8, 4, 2 elements: a 0.5 M-neuron int8 layer on 132 SMs keeps 4-byte words) until the threads
  // fill the SMs or it is one element per thread (each warp load still a coalesced run of 32 elements); then blocks
  // shrink (down to one warp) until there are kBlocksPerSM per SM, so every SM gets work.
  constexpr int64_t kFullThreadsPerSM = 1024;
  constexpr int kBlocksPerSM = 4;
  constexpr int kMinBlock = 32;  // one warp
  shape.vec = 1;
  if (aligned && max_vec > 1) {
    for (int v = max_vec; v > 1; v /= 2) {
      if (N % v != 0) continue;
      if (sms <= 0 || N / v >= kFullThreadsPerSM * sms) {
        shape.vec = v;
        break;
      }
    }
  }
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
    case DType::F32: err = launch_float<float>(*a.params_f32, a, stream); break;
    case DType::F16: err = launch_float<Half>(*a.params_f32, a, stream); break;
    case DType::BF16: err = launch_float<BFloat16>(*a.params_f32, a, stream); break;
    case DType::F64: err = launch_float<double>(*a.params_f64, a, stream); break;
  }
  return static_cast<int>(err);
}

int launch_forward_quantized(const QuantArgs& a, void* stream_ptr) {
  if (a.N <= 0 || a.T <= 0) return 0;
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  const cudaError_t err = a.code == Code::I8 ? launch_codes<int8_t>(a, stream) : launch_codes<uint8_t>(a, stream);
  return static_cast<int>(err);
}

const char* error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

}  // namespace cuda
}  // namespace dsr
