// The event-driven quantised convolution (dsr_spike_conv.h).
//
// Work in groups of output rows (about 256 positions): each input row the group reads is scanned once into lists of
// the channels that spiked per pixel; each output position's window is then a few segments of those lists (one per
// kernel tap), read in place. Then, one tile of 64 output channels at a time, every position of the group adds the
// weight rows of its spikes: the tile's rows stay in cache across the group. The AVX2 loop (chosen at run time) sums
// in int16 lanes, widened to int32 every 256 rows so no partial sum can overflow (256 x 128 = 32768); the baseline
// sums in int32. Both give the exact integer sum, then ONNX Runtime's requantisation.
#include "dsr_spike_conv.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <utility>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define DSR_SPIKE_CONV_X86 1
#endif

namespace dsr {

namespace {
constexpr int64_t kTile = kSpikeConvTile;
constexpr int64_t kWideBytes = 192 * 1024;  // int16 rows while a tile's rows take at most this (L2 is >= 256 KB)
constexpr int64_t kGroupPositions = 256;    // output positions per group
}  // namespace

void spike_conv_pack(const int8_t* w, int64_t M, int64_t C, int64_t KH, int64_t KW, SpikeConvWeights* out) {
  const int64_t rows = KH * KW * C;
  out->M = M, out->C = C, out->KH = KH, out->KW = KW;
  out->tiles = (M + kTile - 1) / kTile;
  out->Mpad = out->tiles * kTile;
  out->wide = rows * kTile * 2 <= kWideBytes;
  const size_t n = static_cast<size_t>(out->tiles * rows * kTile);
  const size_t bytes = n * (out->wide ? 2 : 1);
  out->storage.assign(bytes + 64, 0);
  const uintptr_t raw = reinterpret_cast<uintptr_t>(out->storage.data());
  unsigned char* base = out->storage.data() + ((64 - raw % 64) % 64);
  auto* w16 = reinterpret_cast<int16_t*>(base);
  auto* w8 = reinterpret_cast<int8_t*>(base);
  out->w16 = out->wide ? w16 : nullptr;
  out->w8 = out->wide ? nullptr : w8;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t ky = 0; ky < KH; ++ky)
        for (int64_t kx = 0; kx < KW; ++kx) {
          const int8_t v = w[((m * C + c) * KH + ky) * KW + kx];
          const size_t i = static_cast<size_t>(((m / kTile) * rows + (ky * KW + kx) * C + c) * kTile + m % kTile);
          if (out->wide)
            w16[i] = v;
          else
            w8[i] = v;
        }
}

namespace {

// The inputs of one input row that are not the zero point, per pixel, as row offsets c * 64 within a tap's rows.
struct RowLists {
  std::vector<int32_t> ones, start;  // spikes (code zp + 1); pixel ix's are ones[start[ix], start[ix + 1])
  std::vector<std::pair<int32_t, int32_t>> other;  // (c * 64, code - zp) of the other codes
  std::vector<int32_t> other_start;
};

// A window's spikes under one kernel tap, read in place from a row's lists.
struct Segment {
  const int32_t* offsets;
  int32_t count;
  int32_t tap;  // (ky * KW + kx) * C * 64
};
struct Window {
  size_t seg_begin, seg_end, other_begin, other_end;
};

struct Group {
  int64_t tag_lo = 0;  // the first input row (n * H + iy) of `rows`
  std::vector<RowLists> rows;
  std::vector<char> built;
  std::vector<Segment> segs;
  std::vector<Window> win;                          // one per output position of the group
  std::vector<std::pair<int32_t, int32_t>> other;   // (tap + c * 64, code - zp)
};

inline int32_t requantize(int32_t acc, int32_t bias, float scale, int32_t zp) {
  // int32 wrap-around like the SIMD add ONNX Runtime uses (a file's bias is not trusted to keep the sum in range).
  const int32_t sum = static_cast<int32_t>(static_cast<uint32_t>(acc) + static_cast<uint32_t>(bias));
  float f = static_cast<float>(sum) * scale;
  f = std::min(std::max(f, static_cast<float>(0 - zp)), static_cast<float>(255 - zp));
  return static_cast<int32_t>(std::nearbyint(f)) + zp;  // round half to even, as cvtps2dq
}

bool has_avx2() {
#if defined(DSR_SPIKE_CONV_X86)
  // DSR_SPIKE_CONV_ISA=baseline: the portable loop on any CPU (tests/test_spike_conv.py checks it gives the same codes).
  static const bool yes = __builtin_cpu_supports("avx2") &&
                          !(std::getenv("DSR_SPIKE_CONV_ISA") && std::strcmp(std::getenv("DSR_SPIKE_CONV_ISA"),
                                                                             "baseline") == 0);
  return yes;
#else
  return false;
#endif
}

#if defined(DSR_SPIKE_CONV_X86)
__attribute__((target("avx2"))) void scan_avx2(const uint8_t* xp, int64_t C, uint8_t zp, RowLists* r) {
  const __m256i z = _mm256_set1_epi8(static_cast<char>(zp));
  for (int64_t c0 = 0; c0 < C; c0 += 32) {
    uint32_t mask;
    if (c0 + 32 <= C) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xp + c0));
      mask = ~static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_cmpeq_epi8(v, z)));
    } else {
      mask = 0;
      for (int64_t c = c0; c < C; ++c) mask |= static_cast<uint32_t>(xp[c] != zp) << (c - c0);
    }
    while (mask) {
      const int64_t c = c0 + __builtin_ctz(mask);
      mask &= mask - 1;
      const int32_t v = int32_t(xp[c]) - int32_t(zp);
      if (v == 1)
        r->ones.push_back(static_cast<int32_t>(c * kTile));
      else
        r->other.emplace_back(static_cast<int32_t>(c * kTile), v);
    }
  }
}
#endif

void scan_scalar(const uint8_t* xp, int64_t C, uint8_t zp, RowLists* r) {
  for (int64_t c = 0; c < C; ++c) {
    const int32_t v = int32_t(xp[c]) - int32_t(zp);
    if (v == 1)
      r->ones.push_back(static_cast<int32_t>(c * kTile));
    else if (v != 0)
      r->other.emplace_back(static_cast<int32_t>(c * kTile), v);
  }
}

void build_row(const SpikeConvArgs& a, int64_t tag, bool avx2, RowLists* r) {
  const SpikeConvShape& s = a.s;
  r->ones.clear();
  r->other.clear();
  r->start.resize(static_cast<size_t>(s.W + 1));
  r->other_start.resize(static_cast<size_t>(s.W + 1));
  const uint8_t* row = a.x + tag * s.W * s.C;
  for (int64_t ix = 0; ix < s.W; ++ix) {
    r->start[ix] = static_cast<int32_t>(r->ones.size());
    r->other_start[ix] = static_cast<int32_t>(r->other.size());
#if defined(DSR_SPIKE_CONV_X86)
    if (avx2) {
      scan_avx2(row + ix * s.C, s.C, a.x_zero_point, r);
      continue;
    }
#endif
    (void)avx2;
    scan_scalar(row + ix * s.C, s.C, a.x_zero_point, r);
  }
  r->start[s.W] = static_cast<int32_t>(r->ones.size());
  r->other_start[s.W] = static_cast<int32_t>(r->other.size());
}

// The window of output position (n, oy, ox); the rows it reads are built. Padding holds the zero point: nothing.
void gather(const SpikeConvArgs& a, Group* g, int64_t n, int64_t oy, int64_t ox) {
  const SpikeConvShape& s = a.s;
  Window w{g->segs.size(), 0, g->other.size(), 0};
  for (int64_t ky = 0; ky < s.KH; ++ky) {
    const int64_t iy = oy * s.stride_h - s.pad_top + ky * s.dil_h;
    if (iy < 0 || iy >= s.H) continue;
    const RowLists& r = g->rows[static_cast<size_t>(n * s.H + iy - g->tag_lo)];
    for (int64_t kx = 0; kx < s.KW; ++kx) {
      const int64_t ix = ox * s.stride_w - s.pad_left + kx * s.dil_w;
      if (ix < 0 || ix >= s.W) continue;
      const int32_t tap = static_cast<int32_t>((ky * s.KW + kx) * s.C * kTile);
      const int32_t b = r.start[ix], e = r.start[ix + 1];
      if (e > b) g->segs.push_back(Segment{r.ones.data() + b, e - b, tap});
      for (int32_t k = r.other_start[ix]; k < r.other_start[ix + 1]; ++k)
        g->other.emplace_back(r.other[k].first + tap, r.other[k].second);
    }
  }
  w.seg_end = g->segs.size();
  w.other_end = g->other.size();
  g->win.push_back(w);
}

template <typename T>
void tile_scalar(const SpikeConvArgs& a, const T* wt, const Group& g, const Window& w, int64_t m0, uint8_t* y) {
  int32_t acc[kTile] = {0};
  for (size_t k = w.seg_begin; k < w.seg_end; ++k) {
    const Segment& sg = g.segs[k];
    for (int32_t r = 0; r < sg.count; ++r) {
      const T* row = wt + sg.tap + sg.offsets[r];
      for (int64_t j = 0; j < kTile; ++j) acc[j] += row[j];
    }
  }
  for (size_t k = w.other_begin; k < w.other_end; ++k)
    for (int64_t j = 0; j < kTile; ++j) acc[j] += int32_t(wt[g.other[k].first + j]) * g.other[k].second;
  for (int64_t j = 0; j < kTile && m0 + j < a.s.M; ++j)
    y[m0 + j] = static_cast<uint8_t>(requantize(acc[j], a.bias[m0 + j], a.scale[m0 + j], a.y_zero_point));
}

#if defined(DSR_SPIKE_CONV_X86)
// Requantise 8 sums of channels m0 + j.. as MlasRequantizeOutput: float(acc + bias) * scale, clamped, rounded to
// nearest even, + zero point; stores the first min(8, valid - j) codes.
__attribute__((target("avx2"))) inline void store_codes(const SpikeConvArgs& a, int64_t m0, int64_t j, __m256i acc,
                                                       int64_t valid, uint8_t* y) {
  if (j >= valid) return;
  const int32_t zp = a.y_zero_point;
  const __m256i sum = _mm256_add_epi32(acc, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.bias + m0 + j)));
  __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(sum), _mm256_loadu_ps(a.scale + m0 + j));
  f = _mm256_min_ps(_mm256_max_ps(f, _mm256_set1_ps(static_cast<float>(0 - zp))),
                    _mm256_set1_ps(static_cast<float>(255 - zp)));
  const __m256i q = _mm256_add_epi32(_mm256_cvtps_epi32(f), _mm256_set1_epi32(zp));
  const __m128i p16 = _mm_packus_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
  const __m128i p8 = _mm_packus_epi16(p16, p16);
  if (valid - j >= 8) {
    _mm_storel_epi64(reinterpret_cast<__m128i*>(y + m0 + j), p8);
  } else {
    alignas(16) uint8_t tmp[16];
    _mm_store_si128(reinterpret_cast<__m128i*>(tmp), p8);
    std::memcpy(y + m0 + j, tmp, static_cast<size_t>(valid - j));
  }
}

// 16 weights of a row as int16 lanes, and 8 as int32 lanes.
__attribute__((target("avx2"))) inline __m256i lanes16(const int16_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}
__attribute__((target("avx2"))) inline __m256i lanes16(const int8_t* p) {
  return _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
__attribute__((target("avx2"))) inline __m256i lanes32(const int16_t* p) {
  return _mm256_cvtepi16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
__attribute__((target("avx2"))) inline __m256i lanes32(const int8_t* p) {
  return _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}

// One position's tile of 64 channels: its spikes' rows added in 4 x 16 int16 lanes (registers), widened into
// int32 sums every 256 rows and at the end, then its other codes' rows times their multiplier.
template <typename T>
__attribute__((target("avx2"))) void tile_avx2(const SpikeConvArgs& a, const T* wt, const Group& g, const Window& w,
                                               int64_t m0, uint8_t* y) {
  __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
  __m256i acc[8];  // set by the first widen (no zeroing: a memset here costs more than a small tile's adds)
  bool first = true;
  auto widen = [&]() __attribute__((target("avx2"))) {
    const __m256i s[4] = {s0, s1, s2, s3};
    for (int v = 0; v < 4; ++v) {
      const __m256i lo = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(s[v]));
      const __m256i hi = _mm256_cvtepi16_epi32(_mm256_extracti128_si256(s[v], 1));
      acc[2 * v] = first ? lo : _mm256_add_epi32(acc[2 * v], lo);
      acc[2 * v + 1] = first ? hi : _mm256_add_epi32(acc[2 * v + 1], hi);
    }
    first = false;
    s0 = s1 = s2 = s3 = _mm256_setzero_si256();
  };
  int32_t budget = 256;  // rows the int16 lanes still take without overflow
  for (size_t k = w.seg_begin; k < w.seg_end; ++k) {
    const T* base = wt + g.segs[k].tap;
    const int32_t* off = g.segs[k].offsets;
    int32_t count = g.segs[k].count;
    while (count > 0) {
      const int32_t take = std::min(count, budget);
      for (const int32_t *p = off, *e = off + take; p != e; ++p) {  // the hot loop: few live registers
        const T* row = base + *p;
        s0 = _mm256_add_epi16(s0, lanes16(row));
        s1 = _mm256_add_epi16(s1, lanes16(row + 16));
        s2 = _mm256_add_epi16(s2, lanes16(row + 32));
        s3 = _mm256_add_epi16(s3, lanes16(row + 48));
      }
      off += take;
      count -= take;
      budget -= take;
      if (budget == 0) {
        widen();
        budget = 256;
      }
    }
  }
  widen();
  for (size_t k = w.other_begin; k < w.other_end; ++k) {
    const __m256i mult = _mm256_set1_epi32(g.other[k].second);
    for (int j = 0; j < 8; ++j)
      acc[j] = _mm256_add_epi32(acc[j], _mm256_mullo_epi32(lanes32(wt + g.other[k].first + 8 * j), mult));
  }
  const int64_t valid = std::min<int64_t>(kTile, a.s.M - m0);
  for (int j = 0; j < 8; ++j) store_codes(a, m0, 8 * j, acc[j], valid, y);
}
#endif

// Every tile of every position of the group (output rows [r0, r1)), tile by tile.
template <typename T>
void run_tiles(const SpikeConvArgs& a, const T* weights, const Group& g, int64_t r0, bool avx2) {
  const SpikeConvShape& s = a.s;
  const int64_t rows = s.KH * s.KW * s.C;
  for (int64_t t = 0; t < a.w->tiles; ++t) {
    const T* wt = weights + t * rows * kTile;
    const int64_t m0 = t * kTile;
    for (size_t p = 0; p < g.win.size(); ++p) {
      uint8_t* y = a.y + (r0 * s.OW + static_cast<int64_t>(p)) * s.M;
#if defined(DSR_SPIKE_CONV_X86)
      if (avx2) {
        tile_avx2(a, wt, g, g.win[p], m0, y);
        continue;
      }
#endif
      (void)avx2;
      tile_scalar(a, wt, g, g.win[p], m0, y);
    }
  }
}

}  // namespace

const char* spike_conv_isa() { return has_avx2() ? "avx2" : "baseline"; }

void spike_conv_rows(const SpikeConvArgs& a, int64_t row_begin, int64_t row_end) {
  const SpikeConvShape& s = a.s;
  const bool avx2 = has_avx2();
  const int64_t per_group = std::max<int64_t>(1, kGroupPositions / std::max<int64_t>(1, s.OW));
  Group g;
  for (int64_t r0 = row_begin; r0 < row_end; r0 += per_group) {
    const int64_t r1 = std::min(row_end, r0 + per_group);
    // The input rows the group reads lie in [tag_lo, tag_hi] (tag = n * H + iy).
    const int64_t n0 = r0 / s.OH, oy0 = r0 % s.OH, n1 = (r1 - 1) / s.OH, oy1 = (r1 - 1) % s.OH;
    g.tag_lo = n0 * s.H + std::min(s.H - 1, std::max<int64_t>(0, oy0 * s.stride_h - s.pad_top));
    const int64_t tag_hi =
        n1 * s.H + std::min(s.H - 1, std::max<int64_t>(0, oy1 * s.stride_h - s.pad_top + (s.KH - 1) * s.dil_h));
    const size_t span = static_cast<size_t>(std::max<int64_t>(0, tag_hi - g.tag_lo + 1));
    if (g.rows.size() < span) g.rows.resize(span);
    g.built.assign(span, 0);
    g.segs.clear();
    g.win.clear();
    g.other.clear();
    for (int64_t row = r0; row < r1; ++row) {
      const int64_t n = row / s.OH, oy = row % s.OH;
      for (int64_t ky = 0; ky < s.KH; ++ky) {
        const int64_t iy = oy * s.stride_h - s.pad_top + ky * s.dil_h;
        if (iy < 0 || iy >= s.H) continue;
        const size_t i = static_cast<size_t>(n * s.H + iy - g.tag_lo);
        if (!g.built[i]) {
          build_row(a, n * s.H + iy, avx2, &g.rows[i]);
          g.built[i] = 1;
        }
      }
      for (int64_t ox = 0; ox < s.OW; ++ox) gather(a, &g, n, oy, ox);
    }
    if (a.w->wide)
      run_tiles(a, a.w->w16, g, r0, avx2);
    else
      run_tiles(a, a.w->w8, g, r0, avx2);
  }
}

}  // namespace dsr
