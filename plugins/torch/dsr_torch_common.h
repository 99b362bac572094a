// Shared argument handling of the PyTorch adapter's CPU and CUDA kernels (see dsr_torch_ops.cpp).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "dsr_spike.h"

namespace dsr_torch {

inline at::ScalarType compute_dtype(at::ScalarType st) { return st == at::kDouble ? at::kDouble : at::kFloat; }

inline dsr::DType to_core_dtype(at::ScalarType st) {
  switch (st) {
    case at::kFloat: return dsr::DType::F32;
    case at::kDouble: return dsr::DType::F64;
    case at::kHalf: return dsr::DType::F16;
    case at::kBFloat16: return dsr::DType::BF16;
    default: TORCH_CHECK_VALUE(false, "dsr spike ops: unsupported input dtype ", st,
                               " (float32, float64, float16 and bfloat16 are supported)");
  }
  return dsr::DType::F32;
}

struct Prepared {
  at::Tensor x;      // contiguous input
  at::Tensor y;      // contiguous output, like x
  at::Tensor v_in;   // contiguous [N] compute-dtype initial membrane, or undefined (zeros)
  at::Tensor v_out;  // [x.shape[1:]] compute-dtype final membrane when return_state, else undefined
  int64_t T = 0;
  int64_t N = 0;
};

inline std::string shape_str(at::IntArrayRef s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// allocate_output = false leaves pr.y undefined for the caller to allocate (the CPU kernel's own huge-page output).
inline Prepared prepare(const at::Tensor& x_in, const std::optional<at::Tensor>& v_init, bool return_state,
                        bool allocate_output = true) {
  TORCH_CHECK_VALUE(x_in.dim() >= 1, "input must have a leading time dimension [T, ...]");
  to_core_dtype(x_in.scalar_type());  // refuses integer and other inputs before anything is allocated
  Prepared pr;
  pr.x = x_in.contiguous();
  pr.T = pr.x.size(0);
  pr.N = 1;
  for (int64_t d = 1; d < pr.x.dim(); ++d) pr.N *= pr.x.size(d);
  const auto step_shape = pr.x.sizes().slice(1);
  const auto ct = compute_dtype(pr.x.scalar_type());
  if (allocate_output) pr.y = at::empty_like(pr.x, at::MemoryFormat::Contiguous);
  if (v_init.has_value() && v_init->defined()) {
    TORCH_CHECK_VALUE(v_init->sizes() == step_shape, "v_init must have the shape of one time step ",
                      shape_str(step_shape), ", got ", shape_str(v_init->sizes()));
    pr.v_in = v_init->to(pr.x.device(), ct).contiguous();
  }
  if (return_state) pr.v_out = at::empty(step_shape, pr.x.options().dtype(ct));
  return pr;
}

// A layer's op arguments; decay / gain are the LIF coefficients by the layer's rule (absent: the double rule).
struct LayerArgs {
  dsr::Neuron neuron;
  double v_threshold, alpha, tau, delta_t;
  std::optional<double> decay, gain;
};

// One call of the core on a prepared (and output-allocated) call: the layer constants and the pointers. Built in
// place (the args point at the params it holds), so it is neither copied nor moved.
struct CoreCall {
  dsr::LayerParams params;
  dsr::ForwardArgs args;
  CoreCall(const Prepared& pr, const LayerArgs& la)
      : params(la.neuron, la.v_threshold, la.alpha, la.tau, la.delta_t, la.decay ? &*la.decay : nullptr,
               la.gain ? &*la.gain : nullptr),
        args{to_core_dtype(pr.x.scalar_type()),
             pr.x.const_data_ptr(),
             pr.y.mutable_data_ptr(),
             pr.v_in.defined() ? pr.v_in.const_data_ptr() : nullptr,
             pr.v_out.defined() ? pr.v_out.mutable_data_ptr() : nullptr,
             pr.T,
             pr.N,
             &params.f32,
             &params.f64} {}
  CoreCall(const CoreCall&) = delete;
  CoreCall& operator=(const CoreCall&) = delete;
};

inline std::tuple<at::Tensor, at::Tensor> finish(Prepared& pr, bool return_state) {
  if (!return_state) return {pr.y, at::empty({0}, pr.x.options().dtype(compute_dtype(pr.x.scalar_type())))};
  return {pr.y, pr.v_out};
}

// The two ops' kernels for a device, from its forward(x, layer arguments, v_init, return_state).
using ForwardFn = std::tuple<at::Tensor, at::Tensor> (*)(const at::Tensor&, const LayerArgs&,
                                                         const std::optional<at::Tensor>&, bool);

template <ForwardFn Forward>
std::tuple<at::Tensor, at::Tensor> if_spike(const at::Tensor& x, double v_threshold, double alpha,
                                            const std::optional<at::Tensor>& v_init, bool return_state) {
  return Forward(x, LayerArgs{dsr::Neuron::IF, v_threshold, alpha, 1.0, 1.0, std::nullopt, std::nullopt}, v_init,
                 return_state);
}

template <ForwardFn Forward>
std::tuple<at::Tensor, at::Tensor> lif_spike(const at::Tensor& x, double v_threshold, double alpha, double tau,
                                             double delta_t, const std::optional<at::Tensor>& v_init,
                                             bool return_state, std::optional<double> decay,
                                             std::optional<double> gain) {
  TORCH_CHECK_VALUE(decay.has_value() == gain.has_value(), "lif_spike: decay and gain must be given together");
  return Forward(x, LayerArgs{dsr::Neuron::LIF, v_threshold, alpha, tau, delta_t, decay, gain}, v_init, return_state);
}

}  // namespace dsr_torch
