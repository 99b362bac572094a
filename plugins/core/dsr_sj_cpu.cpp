// CPU kernel of the SpikingJelly neurons (dsr_sj.h). Plain loops over a block of neurons, time inside; compiled with
// the core's exact flags (-ffp-contract=off, no fast-math), so every operation rounds as the reference's.
#include "dsr_sj.h"

#include <algorithm>
#include <thread>
#include <vector>

namespace dsr {
namespace {

template <typename S, SJCharge kCharge>
void sj_block(const SJArgs& a, int64_t n0, int64_t len) {
  using C = typename Storage<S>::C;
  const S* x = static_cast<const S*>(a.x);
  S* y = static_cast<S*>(a.y);
  const C vth = static_cast<C>(a.v_threshold);
  const C r = a.hard ? static_cast<C>(a.v_reset) : C(0);
  const C k = static_cast<C>(a.leak);
  const C one = C(1);
  const S spike = Storage<S>::from_compute(C(1));
  const S silent = Storage<S>::from_compute(C(0));
  const bool decay_input = a.decay_input != 0, hard = a.hard != 0;
  alignas(64) C v[kCpuBlock];
  const C* v_in = static_cast<const C*>(a.v_in);
  for (int64_t i = 0; i < len; ++i) v[i] = v_in ? v_in[n0 + i] : r;
  for (int64_t t = 0; t < a.T; ++t) {
    const S* xt = x + t * a.N + n0;
    S* yt = y + t * a.N + n0;
    for (int64_t i = 0; i < len; ++i) {
      const C xi = Storage<S>::load(xt[i]);
      const C vi = v[i];
      C h;
      if (kCharge == SJCharge::IF) {
        h = vi + xi;
      } else {
        const C dv = vi - r;
        if (decay_input) {
          const C xd = xi - dv;
          const C xl = kCharge == SJCharge::LIF ? xd / k : xd * k;
          h = vi + xl;
        } else {
          const C dl = kCharge == SJCharge::LIF ? dv / k : dv * k;
          const C vd = vi - dl;
          h = vd + xi;
        }
      }
      const C s = h >= vth ? one : C(0);
      if (hard) {
        const C sr = s * r;
        const C nh = (one - s) * h;
        v[i] = sr + nh;
      } else {
        const C sv = s * vth;
        v[i] = h - sv;
      }
      yt[i] = s != C(0) ? spike : silent;
    }
  }
  if (a.v_out) {
    C* v_out = static_cast<C*>(a.v_out);
    for (int64_t i = 0; i < len; ++i) v_out[n0 + i] = v[i];
  }
}

template <typename S>
void sj_range_typed(const SJArgs& a, int64_t b, int64_t e) {
  for (int64_t n0 = b; n0 < e; n0 += kCpuBlock) {
    const int64_t len = std::min(kCpuBlock, e - n0);
    switch (a.charge) {
      case SJCharge::IF: sj_block<S, SJCharge::IF>(a, n0, len); break;
      case SJCharge::LIF: sj_block<S, SJCharge::LIF>(a, n0, len); break;
      case SJCharge::PLIF: sj_block<S, SJCharge::PLIF>(a, n0, len); break;
    }
  }
}

}  // namespace

void sj_cpu_forward_range(const SJArgs& a, int64_t b, int64_t e) {
  switch (a.dtype) {
    case DType::F32: sj_range_typed<float>(a, b, e); break;
    case DType::F64: sj_range_typed<double>(a, b, e); break;
    case DType::F16: sj_range_typed<Half>(a, b, e); break;
    case DType::BF16: sj_range_typed<BFloat16>(a, b, e); break;
  }
}

void sj_cpu_forward(const SJArgs& a, int num_threads) {
  if (a.N <= 0) return;
  if (num_threads <= 0) num_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int64_t min_elements_per_thread = int64_t(1) << 18;  // below this a thread start costs more than it saves
  const int64_t blocks = (a.N + kCpuBlock - 1) / kCpuBlock;
  int64_t workers = std::min<int64_t>(num_threads, blocks);
  workers = std::min<int64_t>(workers, std::max<int64_t>(1, (std::max<int64_t>(a.T, 1) * a.N) /
                                                                 min_elements_per_thread));
  if (workers <= 1) {
    sj_cpu_forward_range(a, 0, a.N);
    return;
  }
  const int64_t per = (blocks + workers - 1) / workers * kCpuBlock;
  std::vector<std::thread> pool;
  for (int64_t w = 1; w < workers; ++w) {
    const int64_t b = std::min(a.N, w * per), e = std::min(a.N, (w + 1) * per);
    pool.emplace_back([&a, b, e] { sj_cpu_forward_range(a, b, e); });
  }
  sj_cpu_forward_range(a, 0, std::min(a.N, per));
  for (auto& th : pool) th.join();
}

}  // namespace dsr
