// SpikingJelly IF / LIF / ParametricLIF core: the C++ twin of dsr_deploy.functional.sj_forward (SpikingJelly 2.0's
// torch reference), operation for operation, each rounded on its own (built with -ffp-contract=off):
//
//   charge IF:   h = v + x
//          LIF:  h = v + (x - (v - r)) / k   (decay_input)  |  h = (v - (v - r) / k) + x      k = tau
//          PLIF: the same with * k                                                           k = sigmoid(w)
//   fire   s = h >= vth ? 1 : 0
//   reset  soft: v = h - s * vth;  hard: v = s * r + (1 - s) * h        (r = v_reset, 0 for a soft reset)
//
// vth, r and k are rounded once to the compute type (double for double inputs, float otherwise); the membrane
// starts at r when no initial membrane is given. Spikes are 0 / 1 in the input type. Layout as dsr_spike.h.
#pragma once

#include <cstdint>

#include "dsr_spike.h"

namespace dsr {

enum class SJCharge : int { IF = 0, LIF = 1, PLIF = 2 };

struct SJArgs {
  SJCharge charge;
  int decay_input;  // LIF / PLIF
  int hard;         // 1: hard reset to v_reset
  double v_threshold, v_reset, leak;
  DType dtype;
  const void* x;  // [T, N] in dtype
  void* y;        // [T, N] in dtype
  const void* v_in;  // [N] compute type, or null (start at r)
  void* v_out;       // [N] compute type, or null
  int64_t T;
  int64_t N;
};

// Neurons [n_begin, n_end); safe to call concurrently on disjoint ranges.
void sj_cpu_forward_range(const SJArgs& args, int64_t n_begin, int64_t n_end);

// The whole call on up to num_threads std::threads (<= 0: hardware concurrency), small calls on one.
void sj_cpu_forward(const SJArgs& args, int num_threads);

// CUDA (dsr_sj_cuda.cu, built with DSR_BUILD_CUDA): one call on `stream` (a cudaStream_t), device pointers, F32 or
// F64 only; returns the cudaError_t of the launch (1 for another dtype).
int launch_sj_forward(const SJArgs& args, void* stream);

}  // namespace dsr
