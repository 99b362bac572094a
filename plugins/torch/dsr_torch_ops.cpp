// PyTorch adapter: CPU kernels for the dsr::if_spike / dsr::lif_spike ops.
//
// The schemas are defined once, in Python (dsr_deploy/ops.py); this library only registers backend kernels
// (TORCH_LIBRARY_IMPL), so it must be loaded after dsr_deploy.ops is imported (ops.load_native() does that).
// Argument handling mirrors the reference (dsr_deploy/functional.py): a non-contiguous input is made contiguous,
// v_init is converted to the compute dtype and must have the shape of one time step, T == 0 or N == 0 gives an
// empty output (and the initial membrane as the final one), and v_final is an empty tensor unless return_state.
#include "dsr_torch_common.h"
#include "dsr_sj.h"

#include <ATen/Parallel.h>
#include <ATen/ops/from_blob.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <utility>
#include <vector>
#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace dsr_torch {

namespace {

// Large outputs. A fresh output of tens of MB costs more in first-touch page faults than the spike loop itself
// (measured, 84 MB: 4 KB pages ~50 ms, the loop ~10 ms). So a large output (>= 4 MB) is
//  * a 2 MB-aligned anonymous mapping with MADV_HUGEPAGE set before the first touch: every page of it can be a
//    transparent huge page (512x fewer faults; the glibc mapping behind at::empty_like is not 2 MB aligned, so only
//    its interior could be advised), faulted in by the kernel's own threads as they write;
//  * recycled: when the tensor dies its mapping goes to a small pool (DSR_DEPLOY_OUTPUT_CACHE_MB, default 256; 0
//    turns recycling off) and the next output of the same rounded size reuses it, already faulted in, as an arena
//    allocator does. Every element of a recycled buffer is overwritten by the kernel before it is returned.
// DSR_DEPLOY_HUGEPAGES=0 skips the huge-page advice. Elsewhere than Linux: at::empty_like.
constexpr size_t kHugePage = size_t(2) << 20;
constexpr size_t kPooledMinBytes = 2 * kHugePage;

size_t env_size(const char* name, size_t fallback) {
  const char* env = std::getenv(name);
  if (env == nullptr || *env == '\0') return fallback;
  char* end = nullptr;
  const unsigned long long v = std::strtoull(env, &end, 10);
  return (end && *end == '\0') ? static_cast<size_t>(v) : fallback;
}

#if defined(__linux__)
class OutputPool {
 public:
  static OutputPool& instance() {
    static OutputPool* pool = new OutputPool();  // never destroyed: tensors may outlive static destruction
    return *pool;
  }

  // A mapping of `len` bytes (a multiple of 2 MB), 2 MB aligned; nullptr when mmap fails.
  void* acquire(size_t len) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (size_t i = free_.size(); i-- > 0;) {
        if (free_[i].second == len) {
          void* p = free_[i].first;
          free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(i));
          cached_ -= len;
          return p;
        }
      }
    }
    return map_aligned(len);
  }

  void release(void* p, size_t len) {
    std::vector<std::pair<void*, size_t>> evicted;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (len <= cap_) {
        while (cached_ + len > cap_ && !free_.empty()) {  // oldest first
          evicted.push_back(free_.front());
          cached_ -= free_.front().second;
          free_.erase(free_.begin());
        }
        free_.emplace_back(p, len);
        cached_ += len;
      } else {
        evicted.emplace_back(p, len);
      }
    }
    for (auto& e : evicted) munmap(e.first, e.second);
  }

 private:
  OutputPool()
      : cap_(env_size("DSR_DEPLOY_OUTPUT_CACHE_MB", 256) << 20), huge_([] {
          const char* env = std::getenv("DSR_DEPLOY_HUGEPAGES");
          return env == nullptr || std::strcmp(env, "0") != 0;
        }()) {}

  void* map_aligned(size_t len) const {
    const size_t map_len = len + kHugePage;  // slack to cut a 2 MB-aligned range out of
    void* raw = mmap(nullptr, map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) return nullptr;
    const uintptr_t r = reinterpret_cast<uintptr_t>(raw);
    const uintptr_t a = (r + kHugePage - 1) & ~(uintptr_t(kHugePage) - 1);
    if (a > r) munmap(raw, a - r);
    if (r + map_len > a + len) munmap(reinterpret_cast<void*>(a + len), r + map_len - (a + len));
#if defined(MADV_HUGEPAGE)
    if (huge_) (void)madvise(reinterpret_cast<void*>(a), len, MADV_HUGEPAGE);  // a hint: no effect where THP is off
#endif
    return reinterpret_cast<void*>(a);
  }

  std::mutex mu_;
  std::vector<std::pair<void*, size_t>> free_;
  size_t cached_ = 0;
  const size_t cap_;
  const bool huge_;
};
#endif

at::Tensor empty_output(const at::Tensor& x) {
  const size_t nbytes = static_cast<size_t>(x.numel()) * x.element_size();
#if defined(__linux__)
  if (nbytes >= kPooledMinBytes) {
    const size_t len = (nbytes + kHugePage - 1) & ~(kHugePage - 1);
    if (void* p = OutputPool::instance().acquire(len)) {
      return at::from_blob(p, x.sizes(), [len](void* q) { OutputPool::instance().release(q, len); }, x.options());
    }
  }
#endif
  return at::empty_like(x, at::MemoryFormat::Contiguous);
}

std::tuple<at::Tensor, at::Tensor> forward_cpu(const at::Tensor& x_in, const LayerArgs& la,
                                               const std::optional<at::Tensor>& v_init, bool return_state) {
  Prepared pr = prepare(x_in, v_init, return_state, /*allocate_output=*/false);
  pr.y = empty_output(pr.x);
  const CoreCall call(pr, la);
  // Threads: the core's std::thread driver, sized by torch.set_num_threads. Not at::parallel_for: with torch's
  // OpenMP backend its body is an inline `#pragma omp parallel` in the ATen headers, which runs serially in a library
  // not built with -fopenmp (and building with it would load a second OpenMP runtime beside torch's own libgomp).
  // Inside an ATen parallel region (a caller's parallel_for) stay on the calling thread, as parallel_for would.
  const int threads = at::in_parallel_region() ? 1 : std::max(1, at::get_num_threads());
  dsr::cpu_forward(call.args, threads);
  return finish(pr, return_state);
}

// dsr::sj_spike: SpikingJelly's IF / LIF / PLIF (core/dsr_sj.h), the same threads as the DSR ops.
std::tuple<at::Tensor, at::Tensor> sj_spike_cpu(const at::Tensor& x_in, c10::string_view charge, double v_threshold,
                                                std::optional<double> v_reset, double leak, bool decay_input,
                                                const std::optional<at::Tensor>& v_init, bool return_state) {
  dsr::SJCharge c;
  if (charge == "if") {
    c = dsr::SJCharge::IF;
  } else if (charge == "lif") {
    c = dsr::SJCharge::LIF;
  } else if (charge == "plif") {
    c = dsr::SJCharge::PLIF;
  } else {
    TORCH_CHECK_VALUE(false, "unknown SpikingJelly charge rule ", std::string(charge), "; known: if, lif, plif");
  }
  Prepared pr = prepare(x_in, v_init, return_state);
  const dsr::SJArgs args{c, decay_input ? 1 : 0, v_reset.has_value() ? 1 : 0, v_threshold,
                         v_reset.value_or(0.0), leak, to_core_dtype(pr.x.scalar_type()), pr.x.const_data_ptr(),
                         pr.y.mutable_data_ptr(), pr.v_in.defined() ? pr.v_in.const_data_ptr() : nullptr,
                         pr.v_out.defined() ? pr.v_out.mutable_data_ptr() : nullptr, pr.T, pr.N};
  dsr::sj_cpu_forward(args, at::in_parallel_region() ? 1 : std::max(1, at::get_num_threads()));
  return finish(pr, return_state);
}

}  // namespace

}  // namespace dsr_torch

TORCH_LIBRARY_IMPL(dsr, CPU, m) {
  m.impl("if_spike", &dsr_torch::if_spike<&dsr_torch::forward_cpu>);
  m.impl("lif_spike", &dsr_torch::lif_spike<&dsr_torch::forward_cpu>);
  m.impl("sj_spike", &dsr_torch::sj_spike_cpu);
}
