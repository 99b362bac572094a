// DSR spike-loop core: the one C++ source of truth for the DSR-IF / DSR-LIF inference recurrences.
//
// No framework dependency. The PyTorch, ONNX Runtime and TensorRT adapters all call into this core; the
// arithmetic mirrors dsr_deploy/functional.py operation by operation (two roundings in the LIF update, no fused
// multiply-add, the threshold alpha*vth rounded in the compute type) so float32 results are bit-exact with it.
//
// Layout: a [T, N] row-major view (N = product of the non-time dimensions). Compute type C: double for double
// inputs, float otherwise (float16 / bfloat16 are widened exactly, membrane in float, output rounded to the
// input type once -- the output only ever takes two values, so that rounding happens on the host).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace dsr {

enum class Neuron : int { IF = 0, LIF = 1 };

// Per-layer constants, all in the compute type C.
template <typename C>
struct SpikeParams {
  C threshold;  // fl(fl(alpha) * vth): the firing threshold
  C vth;        // the value subtracted from the membrane on a spike
  C no_spike;   // 0 * vth: subtracted when there is no spike (-0 for a negative vth, NaN for a non-finite one,
                // exactly as the reference's (v >= thr) * vth)
  C decay;      // LIF: fl(exp(-dt/tau)) from the double; IF: 1 (unused)
  C gain;       // LIF: fl(1 - exp(-dt/tau)) from the double, not 1 - fl(decay); IF: 1 (unused)
  C out_spike;  // output value of a spike: IF vth; LIF vth / fl(dt), one division (on every device, as the reference)
  C out_none;   // output value of no spike (0 scaled the same way)
  int leaky;    // 1 for LIF
};

// Builds the constants from the layer attributes exactly as the Python reference does. decay / gain may be given
// (the ONNX / TensorRT attributes and the torch op carry the layer's coefficients by its rule: the double rule's
// fl32(exp(-dt/tau)) and fl32(1-exp(-dt/tau)), which float32 tau and delta_t attributes would not reproduce, or the
// float32 rule's values, see dsr_deploy.functional.lif_coefficients); pass nullptr to compute the double rule from
// tau / delta_t.
template <typename C>
inline SpikeParams<C> make_params(Neuron neuron, double v_threshold, double alpha, double tau, double delta_t,
                                  const double* decay_given = nullptr,
                                  const double* gain_given = nullptr) {
  SpikeParams<C> p;
  const C vth = static_cast<C>(v_threshold);
  const C a = static_cast<C>(alpha);
  p.threshold = a * vth;  // one product in C, as `alpha * torch.tensor(vth, dtype=C)`
  p.vth = vth;
  p.no_spike = C(0) * vth;
  p.leaky = neuron == Neuron::LIF ? 1 : 0;
  if (neuron == Neuron::LIF) {
    const double beta = std::exp(-delta_t / tau);  // same libm call as Python's math.exp
    p.decay = decay_given ? static_cast<C>(*decay_given) : static_cast<C>(beta);
    p.gain = gain_given ? static_cast<C>(*gain_given) : static_cast<C>(1.0 - beta);
    const C dt = static_cast<C>(delta_t);
    p.out_spike = p.vth / dt;
    p.out_none = p.no_spike / dt;
  } else {
    p.decay = C(1);
    p.gain = C(1);
    p.out_spike = p.vth;
    p.out_none = p.no_spike;
  }
  return p;
}

// A layer's constants in both compute types, for callers that take any input dtype (float64 inputs compute in
// double, the others in float): the torch op and the C entry points.
struct LayerParams {
  SpikeParams<float> f32;
  SpikeParams<double> f64;
  // decay_given / gain_given: the layer's LIF coefficients by its rule (the double rule from tau / delta_t when null).
  LayerParams(Neuron neuron, double v_threshold, double alpha, double tau, double delta_t,
              const double* decay_given = nullptr, const double* gain_given = nullptr)
      : f32(make_params<float>(neuron, v_threshold, alpha, tau, delta_t, decay_given, gain_given)),
        f64(make_params<double>(neuron, v_threshold, alpha, tau, delta_t, decay_given, gain_given)) {}
};

// ---- 16-bit storage types (bit patterns; the core never needs arithmetic on them) ----------------------------

struct Half { uint16_t bits; };
struct BFloat16 { uint16_t bits; };

inline float bits_to_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t float_to_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

// IEEE half -> float, exact, branch-free (the magic-number method of the FP16 library that PyTorch uses; it never
// creates a float subnormal, so it is also exact when denormals are flushed).
inline float half_to_float(uint16_t h) {
  const uint32_t w = static_cast<uint32_t>(h) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  const uint32_t exp_offset = 0xE0u << 23;
  const float exp_scale = bits_to_float(0x7800000u);  // 2^-112
  const float normalized = bits_to_float((two_w >> 4) + exp_offset) * exp_scale;
  const uint32_t magic_mask = 126u << 23;
  const float magic_bias = 0.5f;
  const float denormalized = bits_to_float((two_w >> 17) | magic_mask) - magic_bias;
  const uint32_t denormalized_cutoff = 1u << 27;
  const uint32_t result = sign | (two_w < denormalized_cutoff ? float_to_bits(denormalized) : float_to_bits(normalized));
  return bits_to_float(result);
}

// float -> IEEE half, round to nearest even; NaN -> 0x7E00 (as PyTorch's c10::Half).
inline uint16_t float_to_half(float f) {
  const float scale_to_inf = bits_to_float(0x77800000u);   // 2^112
  const float scale_to_zero = bits_to_float(0x08800000u);  // 2^-110
  float base = (std::fabs(f) * scale_to_inf) * scale_to_zero;
  const uint32_t w = float_to_bits(f);
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xFF000000u;
  if (bias < 0x71000000u) bias = 0x71000000u;
  base = bits_to_float((bias >> 1) + 0x07800000u) + base;
  const uint32_t bits = float_to_bits(base);
  const uint32_t exp_bits = (bits >> 13) & 0x00007C00u;
  const uint32_t mantissa_bits = bits & 0x00000FFFu;
  const uint32_t nonsign = exp_bits + mantissa_bits;
  return static_cast<uint16_t>((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

inline float bf16_to_float(uint16_t b) { return bits_to_float(static_cast<uint32_t>(b) << 16); }

// float -> bfloat16, round to nearest even; NaN -> 0x7FC0 (as PyTorch's c10::BFloat16).
inline uint16_t float_to_bf16(float f) {
  if (std::isnan(f)) return 0x7FC0u;
  const uint32_t u = float_to_bits(f);
  const uint32_t rounding_bias = ((u >> 16) & 1u) + 0x7FFFu;
  return static_cast<uint16_t>((u + rounding_bias) >> 16);
}

// Storage <-> compute conversions used by the kernels.
template <typename S> struct Storage;
template <> struct Storage<float> {
  using C = float;
  static inline float load(float x) { return x; }
  static inline float from_compute(float c) { return c; }
};
template <> struct Storage<double> {
  using C = double;
  static inline double load(double x) { return x; }
  static inline double from_compute(double c) { return c; }
};
template <> struct Storage<Half> {
  using C = float;
  static inline float load(Half x) { return half_to_float(x.bits); }
  static inline Half from_compute(float c) { return Half{float_to_half(c)}; }
};
template <> struct Storage<BFloat16> {
  using C = float;
  static inline float load(BFloat16 x) { return bf16_to_float(x.bits); }
  static inline BFloat16 from_compute(float c) { return BFloat16{float_to_bf16(c)}; }
};

// ---- CPU ---------------------------------------------------------------------------------------------------

enum class DType : int { F32 = 0, F64 = 1, F16 = 2, BF16 = 3 };

// One forward call (CPU or, for the CUDA launcher, device pointers). x / y: [T, N] row-major in `dtype`; v_in / v_out: [N] in the compute type
// (double for F64, float otherwise), either may be null (null v_in = zero initial membrane). The params must be
// the compute type's: `params_f32` for F32/F16/BF16, `params_f64` for F64 (the other may be null).
struct ForwardArgs {
  DType dtype;
  const void* x;
  void* y;
  const void* v_in;
  void* v_out;
  int64_t T;
  int64_t N;
  const SpikeParams<float>* params_f32;
  const SpikeParams<double>* params_f64;
};

// Neurons per block: a block's membrane stays in L1 while the block walks over T.
constexpr int64_t kCpuBlock = 1024;

// Runs neurons [n_begin, n_end) of the call (any range; callers split on kCpuBlock multiples for throughput).
// Safe to call concurrently on disjoint ranges.
void cpu_forward_range(const ForwardArgs& args, int64_t n_begin, int64_t n_end);

// Runs the whole call on `num_threads` std::threads (<= 0: hardware concurrency), small calls on one thread.
void cpu_forward(const ForwardArgs& args, int num_threads);

// Which instruction set the CPU kernels dispatched to ("avx2" or "baseline"), for status output.
const char* cpu_kernel_isa();

// ---- quantised currents (export --precision int8 --int8-neuron quantized) ------------------------------------
//
// The quantised op DSRIFSpikeQ / DSRLIFSpikeQ is the float32 op between a DequantizeLinear and a spike-code output:
// codes in (uint8, or int8: TensorRT only has signed int8) with one float32 scale and one zero point of the codes'
// type; the current the neuron integrates is exactly ONNX DequantizeLinear's, fl(float(q - zero_point) * scale)
// (q - zero_point is an exact integer, its conversion to float exact: one rounding, in the product); the float32
// recurrence above runs on it; the output code is 1 where the float op's output is nonzero (a spike of a non-zero
// spike value), else 0, so a DequantizeLinear with scale = the spike value and zero point 0 gives the float op's
// output back bit for bit.
enum class Code : int { U8 = 0, I8 = 1 };

struct QuantArgs {
  Code code;               // element type of x, y and *zero_point
  const void* x;           // [T, N] codes
  void* y;                 // [T, N] spike codes {0, 1}
  const float* scale;      // one value: host memory for the CPU, device memory for the CUDA launcher
  const void* zero_point;  // one value of the codes' type, where scale is (CUDA launcher: null means 0)
  int64_t T;
  int64_t N;
  const SpikeParams<float>* params;
};

// The code of an output value of the float op (1: nonzero). The CUDA launcher maps out_spike / out_none through it.
inline uint8_t spike_code(float out) { return out != 0.f ? 1 : 0; }

// Runs neurons [n_begin, n_end) of a quantised call on the CPU (the float32 loop above on the dequantised current);
// safe to call concurrently on disjoint ranges.
void cpu_forward_quantized_range(const QuantArgs& args, int64_t n_begin, int64_t n_end);

}  // namespace dsr
