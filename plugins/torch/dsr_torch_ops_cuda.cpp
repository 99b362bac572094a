// PyTorch adapter: CUDA kernels for dsr::if_spike / dsr::lif_spike (built with DSR_BUILD_CUDA and a CUDA torch).
//
// Same argument handling and constants as the CPU kernels (dsr_torch_common.h, make_params), so float32 is bit-exact
// with the reference run on the GPU, and with the CPU. The kernel runs on the current stream of the input's device.
#include "dsr_torch_common.h"

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "dsr_sj.h"
#include "dsr_spike_cuda.h"

namespace dsr_torch {
namespace {

std::tuple<at::Tensor, at::Tensor> forward_cuda(const at::Tensor& x_in, const LayerArgs& la,
                                                const std::optional<at::Tensor>& v_init, bool return_state) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  Prepared pr = prepare(x_in, v_init, return_state);
  const CoreCall call(pr, la);
  const int err = dsr::cuda::launch_forward(call.args, c10::cuda::getCurrentCUDAStream(x_in.device().index()).stream());
  TORCH_CHECK(err == 0, "dsr spike kernel launch failed: ", dsr::cuda::error_string(err));
  return finish(pr, return_state);
}

// dsr::sj_spike (SpikingJelly's IF / LIF / PLIF, core/dsr_sj_cuda.cu): float32 and float64 inputs.
std::tuple<at::Tensor, at::Tensor> sj_spike_cuda(const at::Tensor& x_in, c10::string_view charge, double v_threshold,
                                                 std::optional<double> v_reset, double leak, bool decay_input,
                                                 const std::optional<at::Tensor>& v_init, bool return_state) {
  TORCH_CHECK_VALUE(x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kDouble,
                    "dsr::sj_spike on CUDA takes float32 or float64 inputs, got ", x_in.scalar_type());
  const int c = charge == "if" ? 0 : charge == "lif" ? 1 : charge == "plif" ? 2 : -1;
  TORCH_CHECK_VALUE(c >= 0, "unknown SpikingJelly charge rule ", std::string(charge), "; known: if, lif, plif");
  const c10::cuda::CUDAGuard guard(x_in.device());
  Prepared pr = prepare(x_in, v_init, return_state);
  const dsr::SJArgs args{static_cast<dsr::SJCharge>(c), decay_input ? 1 : 0, v_reset.has_value() ? 1 : 0,
                         v_threshold, v_reset.value_or(0.0), leak, to_core_dtype(pr.x.scalar_type()),
                         pr.x.const_data_ptr(), pr.y.mutable_data_ptr(),
                         pr.v_in.defined() ? pr.v_in.const_data_ptr() : nullptr,
                         pr.v_out.defined() ? pr.v_out.mutable_data_ptr() : nullptr, pr.T, pr.N};
  const int err = dsr::launch_sj_forward(args, c10::cuda::getCurrentCUDAStream(x_in.device().index()).stream());
  TORCH_CHECK(err == 0, "dsr::sj_spike kernel launch failed: ", dsr::cuda::error_string(err));
  return finish(pr, return_state);
}

}  // namespace
}  // namespace dsr_torch

TORCH_LIBRARY_IMPL(dsr, CUDA, m) {
  m.impl("if_spike", &dsr_torch::if_spike<&dsr_torch::forward_cuda>);
  m.impl("lif_spike", &dsr_torch::lif_spike<&dsr_torch::forward_cuda>);
  m.impl("sj_spike", &dsr_torch::sj_spike_cuda);
}
