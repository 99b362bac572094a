// The TensorRT plugins' runtime path (createPlugin from fields -> onShapeChange -> enqueue) on host memory, with
// the CUDA core compiled under host emulation (cuda_host_emulation.h). tests/test_cuda_emulation.py builds it,
// writes the inputs, runs it and compares the outputs with the Python reference.
//
//   trt_enqueue_emu OP DTYPE T N V_THRESHOLD ALPHA TAU DELTA_T DECAY GAIN DIR [OFFSET]
//     OP: DSRIFSpike | DSRLIFSpike | DSRIFStep | DSRLIFStep | DSRIFSpikeQ | DSRLIFSpikeQ;  DTYPE: f32 | f16 | bf16 |
//     i8 (the SpikeQ ops' int8 codes)
//     DIR/x.bin (Spike: [T, N]; Step: [N]) and, for Step, DIR/v.bin ([N] float32), for SpikeQ DIR/scale.bin (one
//     float32) and DIR/zp.bin (one int8) in; DIR/y.bin (and v_new.bin) out.
//     DECAY / GAIN "-" leaves those fields out (the plugin then computes them from tau and delta_t).
//     OFFSET: x and y start that many bytes into their buffers (an unaligned base: 1).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "dsr_trt_plugin.h"

using namespace nvinfer1;

namespace {
std::vector<char> read_file(const std::string& path, size_t bytes) {
  std::vector<char> out(bytes);
  std::ifstream f(path, std::ios::binary);
  if (!f.read(out.data(), static_cast<std::streamsize>(bytes))) {
    std::fprintf(stderr, "cannot read %zu bytes from %s\n", bytes, path.c_str());
    std::exit(2);
  }
  return out;
}
void write_file(const std::string& path, const void* data, size_t bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
}
}  // namespace

int main(int argc, char** argv) {
  if (argc != 12 && argc != 13) {
    std::fprintf(stderr, "usage: %s OP DTYPE T N V_THRESHOLD ALPHA TAU DELTA_T DECAY GAIN DIR [OFFSET]\n", argv[0]);
    return 2;
  }
  const std::string op = argv[1], dtype = argv[2], dir = argv[11];
  const int64_t T = std::atoll(argv[3]), N = std::atoll(argv[4]);
  const size_t offset = argc == 13 ? static_cast<size_t>(std::atoll(argv[12])) : 0;
  DataType type = dtype == "f32"   ? DataType::kFLOAT
                  : dtype == "f16" ? DataType::kHALF
                  : dtype == "i8"  ? DataType::kINT8
                                   : DataType::kBF16;
  const size_t esize = dtype == "f32" ? 4 : dtype == "i8" ? 1 : 2;

  int32_t count = 0;
  IPluginCreatorInterface* const* creators = dsr_trt::all_creators(count);
  IPluginCreatorV3One* creator = nullptr;
  for (int32_t i = 0; i < count; ++i) {
    auto* c = static_cast<IPluginCreatorV3One*>(creators[i]);
    if (op == c->getPluginName()) creator = c;
  }
  if (creator == nullptr) {
    std::fprintf(stderr, "no creator %s\n", op.c_str());
    return 2;
  }
  const bool lif = op.find("LIF") != std::string::npos, step = op.find("Step") != std::string::npos;
  const bool quantized = op.back() == 'Q';
  float values[6];
  const char* names[6] = {"v_threshold", "alpha", "tau", "delta_t", "decay", "gain"};
  std::vector<PluginField> fields;
  for (int i = 0; i < 6; ++i) {
    if (i >= 2 && !lif) break;
    if (std::string(argv[5 + i]) == "-") continue;
    values[i] = std::strtof(argv[5 + i], nullptr);
    fields.emplace_back(names[i], &values[i], PluginFieldType::kFLOAT32, 1);
  }
  PluginFieldCollection fc{static_cast<int32_t>(fields.size()), fields.data()};
  IPluginV3* plugin = creator->createPlugin("emu", &fc, TensorRTPhase::kRUNTIME);
  if (plugin == nullptr) return 3;
  auto* runtime = static_cast<v_1_0::IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));

  PluginTensorDesc in[3]{}, out[2]{};
  const int64_t elems = step ? N : T * N;
  in[0].type = out[0].type = type;
  in[0].format = out[0].format = TensorFormat::kLINEAR;
  if (step) {
    in[0].dims.nbDims = 1;
    in[0].dims.d[0] = N;
    in[1] = in[0];
    in[1].type = DataType::kFLOAT;
    out[1] = in[1];
  } else {
    in[0].dims.nbDims = 2;
    in[0].dims.d[0] = T;
    in[0].dims.d[1] = N;
  }
  if (quantized) {  // scalar scale and zero point
    in[1].type = DataType::kFLOAT;
    in[2].type = DataType::kINT8;
    in[1].format = in[2].format = TensorFormat::kLINEAR;
    in[1].dims.nbDims = in[2].dims.nbDims = 0;
  }
  out[0].dims = in[0].dims;
  const int32_t n_in = quantized ? 3 : step ? 2 : 1, n_out = step ? 2 : 1;
  if (runtime->onShapeChange(in, n_in, out, n_out) != 0) return 4;

  const size_t bytes = static_cast<size_t>(elems) * esize;
  std::vector<char> x_raw = read_file(dir + "/x.bin", bytes);
  // Buffers of 16-byte aligned storage, x and y placed `offset` bytes in.
  std::vector<uint64_t> x_buf((bytes + offset) / 8 + 2), y_buf((bytes + offset) / 8 + 2);
  char* x = reinterpret_cast<char*>(x_buf.data()) + offset;
  char* y = reinterpret_cast<char*>(y_buf.data()) + offset;
  std::memcpy(x, x_raw.data(), bytes);
  std::vector<char> v, v_new(static_cast<size_t>(N) * 4), scale, zp;
  std::vector<const void*> inputs{x};
  std::vector<void*> outputs{y};
  if (step) {
    v = read_file(dir + "/v.bin", static_cast<size_t>(N) * 4);
    inputs.push_back(v.data());
    outputs.push_back(v_new.data());
  }
  if (quantized) {
    scale = read_file(dir + "/scale.bin", 4);
    zp = read_file(dir + "/zp.bin", 1);
    inputs.push_back(scale.data());
    inputs.push_back(zp.data());
  }
  if (runtime->enqueue(in, out, inputs.data(), outputs.data(), nullptr, nullptr) != 0) return 5;
  write_file(dir + "/y.bin", y, bytes);
  if (step) write_file(dir + "/v_new.bin", v_new.data(), v_new.size());
  delete plugin;
  return 0;
}
