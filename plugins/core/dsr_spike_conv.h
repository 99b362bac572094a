// Event-driven quantised convolution: ONNX Runtime's channels-last QLinearConv for inputs that are spike codes.
//
// In a spiking network every convolution but the first reads spikes: codes that are the zero point (no spike) for
// most positions (typically 70-95 %). A dense int8 convolution multiplies every one of them; this one adds, per
// output position, the weight rows of the inputs that spiked (an input code v != x_zero_point adds (v - zp) times
// its weights), so its work scales with the spike rate. The integer sum is the same sum the dense convolution
// computes, exactly; the requantisation is ONNX Runtime's (QLinearConv / MlasRequantizeOutput):
//
//   scale[m] = fl32(fl32(x_scale * w_scale[m]) / y_scale)
//   y = clamp(round_half_even(fl32(float(acc + bias[m]) * scale[m])), 0 - y_zp, 255 - y_zp) + y_zp
//
// so the output codes equal ONNX Runtime's QLinearConv bit for bit (tests/test_spike_conv.py). Layout: x
// [N, H, W, C] uint8, weights [M, C, KH, KW] int8 with zero point 0 (symmetric, as the int8 export writes them),
// y [N, OH, OW, M] uint8; group 1, 2-D.
#pragma once

#include <cstdint>
#include <vector>

namespace dsr {

struct SpikeConvShape {
  int64_t N, H, W, C;   // input, channels-last
  int64_t M, KH, KW;    // output channels, kernel
  int64_t OH, OW;       // output spatial size
  int64_t stride_h, stride_w, pad_top, pad_left, dil_h, dil_w;
};

// Output channels per tile: the loop keeps a tile's sums in registers (4 x 16 int16 lanes).
constexpr int64_t kSpikeConvTile = 64;

// The weights re-laid for the event loop, per tile of 64 output channels: [tiles][KH][KW][C][64] (zeros past M), so
// the row an input spike adds to a tile is one contiguous 64-channel row, and a tile's rows are near each other.
// int16 when a tile's rows fit in a core's L2 cache with room to spare (the loop adds them straight from memory),
// else int8 (widened as they are added: half the bytes for the layers whose weights stream from L3). Built once
// per weight tensor (spike_conv_pack).
struct SpikeConvWeights {
  int64_t M = 0, C = 0, KH = 0, KW = 0, tiles = 0, Mpad = 0;  // Mpad = tiles * 64
  bool wide = true;  // int16 rows (w16), else int8 (w8)
  const int16_t* w16 = nullptr;  // 64-byte aligned views of `storage`: a row is whole cache lines
  const int8_t* w8 = nullptr;
  std::vector<unsigned char> storage;
  SpikeConvWeights() = default;
  SpikeConvWeights(const SpikeConvWeights&) = delete;  // the views point into this object's storage
  SpikeConvWeights& operator=(const SpikeConvWeights&) = delete;
};

void spike_conv_pack(const int8_t* w, int64_t M, int64_t C, int64_t KH, int64_t KW, SpikeConvWeights* out);

struct SpikeConvArgs {
  SpikeConvShape s;
  const uint8_t* x;
  uint8_t x_zero_point;
  const SpikeConvWeights* w;
  const int32_t* bias;  // [Mpad]: the int32 bias, zeros past M (and where the node has none)
  const float* scale;   // [Mpad]: the requantisation scale per output channel (above)
  uint8_t y_zero_point;
  uint8_t* y;
};

// Output rows [row_begin, row_end) of the N * OH rows (each row OW positions x M channels); rows are independent,
// so callers split them over threads.
void spike_conv_rows(const SpikeConvArgs& a, int64_t row_begin, int64_t row_end);

// Which loop spike_conv_rows runs on this CPU: "avx2" or "baseline" (the same integers and rounding either way).
const char* spike_conv_isa();

}  // namespace dsr
