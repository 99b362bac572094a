// PyTorch adapter: CPU kernels for the dsr::if_spike / dsr::lif_spike ops.
//
// The schemas are defined once, in Python (dsr_deploy/ops.py); this library only registers backend kernels
// (TORCH_LIBRARY_IMPL), so it must be loaded after dsr_deploy.ops is imported (ops.load_native() does that).
// Argument handling mirrors the reference (dsr_deploy/functional.py): a non-contiguous input is made contiguous,
// v_init is converted to the compute dtype and must have the shape of one time step, T == 0 or N == 0 gives an
// empty output (and the initial membrane as the final one), and v_final is an empty tensor unless return_state.
#include "dsr_torch_common.h"

#include <ATen/Parallel.h>

#include <cstdlib>
#include <cstring>
#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace dsr_torch {

namespace {

dsr::DType to_core_dtype(at::ScalarType st) {
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

// A fresh output of tens of MB costs more in first-touch page faults than the whole spike loop (measured: a clone of
// 84 MB took 4-6x a memcpy into an existing buffer). Asking for transparent huge pages on the 2 MB-aligned interior
// of the new, not yet touched, output cuts the faults 512-fold (as PyTorch's THP_MEM_ALLOC_ENABLE=1 does for all
// large tensors). Only a hint: no effect where THP is off; DSR_DEPLOY_HUGEPAGES=0 turns it off.
void advise_huge_pages(void* data, size_t nbytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr size_t kHuge = size_t(2) << 20;
  if (nbytes < 2 * kHuge) return;
  static const bool enabled = [] {
    const char* env = std::getenv("DSR_DEPLOY_HUGEPAGES");
    return env == nullptr || std::strcmp(env, "0") != 0;
  }();
  if (!enabled) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + nbytes) & ~(kHuge - 1);
  if (end > begin) (void)madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)nbytes;
#endif
}

std::tuple<at::Tensor, at::Tensor> forward_cpu(const at::Tensor& x_in, dsr::Neuron neuron, double v_threshold,
                                               double alpha, double tau, double delta_t,
                                               const std::optional<at::Tensor>& v_init, bool return_state) {
  Prepared pr = prepare(x_in, v_init, return_state);
  const dsr::DType dtype = to_core_dtype(pr.x.scalar_type());
  advise_huge_pages(pr.y.mutable_data_ptr(), pr.y.nbytes());
  const auto p32 = dsr::make_params<float>(neuron, v_threshold, alpha, tau, delta_t, dsr::OutputScaling::TrueDivision);
  const auto p64 = dsr::make_params<double>(neuron, v_threshold, alpha, tau, delta_t, dsr::OutputScaling::TrueDivision);
  dsr::ForwardArgs args{dtype,
                           pr.x.const_data_ptr(),
                           pr.y.mutable_data_ptr(),
                           pr.v_in.defined() ? pr.v_in.const_data_ptr() : nullptr,
                           pr.v_out.defined() ? pr.v_out.mutable_data_ptr() : nullptr,
                           pr.T,
                           pr.N,
                           &p32,
                           &p64};
  // Threads: the core's std::thread driver, sized by torch.set_num_threads. Not at::parallel_for: with torch's
  // OpenMP backend its body is an inline `#pragma omp parallel` in the ATen headers, which runs serially in a library
  // not built with -fopenmp (and building with it would load a second OpenMP runtime beside torch's own libgomp).
  // Inside an ATen parallel region (a caller's parallel_for) stay on the calling thread, as parallel_for would.
  const int threads = at::in_parallel_region() ? 1 : std::max(1, at::get_num_threads());
  dsr::cpu_forward(args, threads);
  return finish(pr, return_state);
}

std::tuple<at::Tensor, at::Tensor> if_spike_cpu(const at::Tensor& x, double v_threshold, double alpha,
                                                const std::optional<at::Tensor>& v_init, bool return_state) {
  return forward_cpu(x, dsr::Neuron::IF, v_threshold, alpha, 1.0, 1.0, v_init, return_state);
}

std::tuple<at::Tensor, at::Tensor> lif_spike_cpu(const at::Tensor& x, double v_threshold, double alpha, double tau,
                                                 double delta_t, const std::optional<at::Tensor>& v_init,
                                                 bool return_state) {
  return forward_cpu(x, dsr::Neuron::LIF, v_threshold, alpha, tau, delta_t, v_init, return_state);
}

}  // namespace

}  // namespace dsr_torch

TORCH_LIBRARY_IMPL(dsr, CPU, m) {
  m.impl("if_spike", &dsr_torch::if_spike_cpu);
  m.impl("lif_spike", &dsr_torch::lif_spike_cpu);
}
