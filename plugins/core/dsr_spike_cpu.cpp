// CPU entry points: instruction-set dispatch and the std::thread driver.
#include <algorithm>
#include <thread>
#include <vector>

#include "dsr_spike.h"

namespace dsr {
namespace isa_baseline { void forward_range(const ForwardArgs& a, int64_t n_begin, int64_t n_end); }
#if defined(DSR_HAVE_AVX2_KERNELS)
namespace isa_avx2 { void forward_range(const ForwardArgs& a, int64_t n_begin, int64_t n_end); }
#endif

namespace {
using RangeFn = void (*)(const ForwardArgs&, int64_t, int64_t);

struct Dispatch {
  RangeFn fn = &isa_baseline::forward_range;
  const char* isa = "baseline";
  Dispatch() {
#if defined(DSR_HAVE_AVX2_KERNELS) && (defined(__x86_64__) || defined(__i386__))
    if (__builtin_cpu_supports("avx2")) {
      fn = &isa_avx2::forward_range;
      isa = "avx2";
    }
#endif
  }
};

const Dispatch& dispatch() {
  static const Dispatch d;
  return d;
}
}  // namespace

const char* cpu_kernel_isa() { return dispatch().isa; }

void cpu_forward_range(const ForwardArgs& args, int64_t n_begin, int64_t n_end) {
  if (n_begin < n_end) dispatch().fn(args, n_begin, n_end);
}

void cpu_forward(const ForwardArgs& args, int num_threads) {
  if (args.T <= 0 || args.N <= 0) {
    // Nothing to compute; still hand the initial membrane through (T == 0 keeps it unchanged).
    if (args.N > 0 && args.v_out) cpu_forward_range(args, 0, args.N);
    return;
  }
  if (num_threads <= 0) num_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  // Below ~256K elements a thread start costs more than it saves.
  const int64_t min_elements_per_thread = int64_t(1) << 18;
  const int64_t blocks = (args.N + kCpuBlock - 1) / kCpuBlock;
  int64_t workers = std::min<int64_t>(num_threads, blocks);
  workers = std::min<int64_t>(workers, std::max<int64_t>(1, (args.T * args.N) / min_elements_per_thread));
  if (workers <= 1) {
    cpu_forward_range(args, 0, args.N);
    return;
  }
  const int64_t blocks_per_worker = (blocks + workers - 1) / workers;
  std::vector<std::thread> pool;
  pool.reserve(static_cast<size_t>(workers - 1));
  for (int64_t w = 1; w < workers; ++w) {
    const int64_t b = std::min(args.N, w * blocks_per_worker * kCpuBlock);
    const int64_t e = std::min(args.N, (w + 1) * blocks_per_worker * kCpuBlock);
    pool.emplace_back([&args, b, e] { cpu_forward_range(args, b, e); });
  }
  cpu_forward_range(args, 0, std::min(args.N, blocks_per_worker * kCpuBlock));
  for (auto& th : pool) th.join();
}

namespace {
// One block of a quantised call: dequantise into float scratch, the float32 loop, codes out. Plain element-wise
// loops (one exact int->float conversion and one product, or one compare: nothing to contract) that -O3 vectorises.
template <typename Q>
void quantized_block(const QuantArgs& a, int64_t n0, int64_t n, std::vector<float>& xs, std::vector<float>& ys) {
  const Q* x = static_cast<const Q*>(a.x);
  Q* y = static_cast<Q*>(a.y);
  const float scale = *a.scale;
  const int32_t zp = static_cast<int32_t>(*static_cast<const Q*>(a.zero_point));
  xs.resize(static_cast<size_t>(a.T * n));
  ys.resize(xs.size());
  for (int64_t t = 0; t < a.T; ++t) {
    const Q* src = x + t * a.N + n0;
    float* dst = xs.data() + t * n;
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(static_cast<int32_t>(src[i]) - zp) * scale;
  }
  const ForwardArgs f{DType::F32, xs.data(), ys.data(), nullptr, nullptr, a.T, n, a.params, nullptr};
  cpu_forward_range(f, 0, n);
  for (int64_t t = 0; t < a.T; ++t) {
    const float* src = ys.data() + t * n;
    Q* dst = y + t * a.N + n0;
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<Q>(spike_code(src[i]));
  }
}
}  // namespace

void cpu_forward_quantized_range(const QuantArgs& args, int64_t n_begin, int64_t n_end) {
  thread_local std::vector<float> xs, ys;  // a block's dequantised current and float spikes
  for (int64_t n0 = n_begin; n0 < n_end; n0 += kCpuBlock) {
    const int64_t n = std::min(kCpuBlock, n_end - n0);
    if (args.code == Code::I8)
      quantized_block<int8_t>(args, n0, n, xs, ys);
    else
      quantized_block<uint8_t>(args, n0, n, xs, ys);
  }
}

}  // namespace dsr
