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

inline std::tuple<at::Tensor, at::Tensor> finish(Prepared& pr, bool return_state) {
  if (!return_state) return {pr.y, at::empty({0}, pr.x.options().dtype(compute_dtype(pr.x.scalar_type())))};
  return {pr.y, pr.v_out};
}

}  // namespace dsr_torch
