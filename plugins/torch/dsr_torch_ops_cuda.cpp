// PyTorch adapter: CUDA kernels for dsr::if_spike / dsr::lif_spike (built with DSR_BUILD_CUDA and a CUDA torch).
//
// Same argument handling and constants as the CPU kernels (dsr_torch_common.h, make_params), so float32 is bit-exact
// with the reference run on the GPU, and with the CPU. The kernel runs on the current stream of the input's device.
#include "dsr_torch_common.h"

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "dsr_spike_cuda.h"

namespace dsr_torch {
namespace {

dsr::DType to_core_dtype_cuda(at::ScalarType st) {
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

std::tuple<at::Tensor, at::Tensor> forward_cuda(const at::Tensor& x_in, dsr::Neuron neuron, double v_threshold,
                                                double alpha, double tau, double delta_t,
                                                const std::optional<at::Tensor>& v_init, bool return_state) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  Prepared pr = prepare(x_in, v_init, return_state);
  const auto p32 = dsr::make_params<float>(neuron, v_threshold, alpha, tau, delta_t);
  const auto p64 = dsr::make_params<double>(neuron, v_threshold, alpha, tau, delta_t);
  dsr::ForwardArgs args{to_core_dtype_cuda(pr.x.scalar_type()),
                        pr.x.const_data_ptr(),
                        pr.y.mutable_data_ptr(),
                        pr.v_in.defined() ? pr.v_in.const_data_ptr() : nullptr,
                        pr.v_out.defined() ? pr.v_out.mutable_data_ptr() : nullptr,
                        pr.T,
                        pr.N,
                        &p32,
                        &p64};
  const int err = dsr::cuda::launch_forward(args, c10::cuda::getCurrentCUDAStream(x_in.device().index()).stream());
  TORCH_CHECK(err == 0, "dsr spike kernel launch failed: ", dsr::cuda::error_string(err));
  return finish(pr, return_state);
}

std::tuple<at::Tensor, at::Tensor> if_spike_cuda(const at::Tensor& x, double v_threshold, double alpha,
                                                 const std::optional<at::Tensor>& v_init, bool return_state) {
  return forward_cuda(x, dsr::Neuron::IF, v_threshold, alpha, 1.0, 1.0, v_init, return_state);
}

std::tuple<at::Tensor, at::Tensor> lif_spike_cuda(const at::Tensor& x, double v_threshold, double alpha, double tau,
                                                  double delta_t, const std::optional<at::Tensor>& v_init,
                                                  bool return_state) {
  return forward_cuda(x, dsr::Neuron::LIF, v_threshold, alpha, tau, delta_t, v_init, return_state);
}

}  // namespace
}  // namespace dsr_torch

TORCH_LIBRARY_IMPL(dsr, CUDA, m) {
  m.impl("if_spike", &dsr_torch::if_spike_cuda);
  m.impl("lif_spike", &dsr_torch::lif_spike_cuda);
}
