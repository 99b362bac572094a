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

std::tuple<at::Tensor, at::Tensor> forward_cuda(const at::Tensor& x_in, const LayerArgs& la,
                                                const std::optional<at::Tensor>& v_init, bool return_state) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  Prepared pr = prepare(x_in, v_init, return_state);
  const CoreCall call(pr, la);
  const int err = dsr::cuda::launch_forward(call.args, c10::cuda::getCurrentCUDAStream(x_in.device().index()).stream());
  TORCH_CHECK(err == 0, "dsr spike kernel launch failed: ", dsr::cuda::error_string(err));
  return finish(pr, return_state);
}

}  // namespace
}  // namespace dsr_torch

TORCH_LIBRARY_IMPL(dsr, CUDA, m) {
  m.impl("if_spike", &dsr_torch::if_spike<&dsr_torch::forward_cuda>);
  m.impl("lif_spike", &dsr_torch::lif_spike<&dsr_torch::forward_cuda>);
}
