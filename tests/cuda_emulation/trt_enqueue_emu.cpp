// The TensorRT plugins' runtime path (createPlugin from fields -> onShapeChange -> enqueue) on host memory, with
// the CUDA core compiled under host emulation (cuda_host_emulation.h). tests/test_cuda_emulation.py builds it,
// writes the inputs, runs it and compares the outputs with the Python reference.
//
//   trt_enqueue_emu OP DTYPE T N V_THRESHOLD ALPHA TAU DELTA_T DECAY GAIN DIR
//     OP: DSRIFSpike | DSRLIFSpike | DSRIFStep | DSRLIFStep;  DTYPE: f32 | f16 | bf16
//     DIR/x.bin (Spike: [T, N]; Step: [N]) and, for Step, DIR/v.bin ([N] float32) in; DIR/y.bin (and v_new.bin) out.
//     DECAY / GAIN "-" leaves those fields out (the plugin then computes them from tau and delta_t).
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
  if (argc != 12) {
    std::fprintf(stderr, "usage: %s OP DTYPE T N V_THRESHOLD ALPHA TAU DELTA_T DECAY GAIN DIR\n", argv[0]);
    return 2;
  }
  const std::string op = argv[1], dtype = argv[2], dir = argv[11];
  const int64_t T = std::atoll(argv[3]), N = std::atoll(argv[4]);
  DataType type = dtype == "f32" ? DataType::kFLOAT : dtype == "f16" ? DataType::kHALF : DataType::kBF16;
  const size_t esize = dtype == "f32" ? 4 : 2;

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

  PluginTensorDesc in[2]{}, out[2]{};
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
  out[0].dims = in[0].dims;
  const int32_t n_io = step ? 2 : 1;
  if (runtime->onShapeChange(in, n_io, out, n_io) != 0) return 4;

  std::vector<char> x = read_file(dir + "/x.bin", static_cast<size_t>(elems) * esize);
  std::vector<char> y(static_cast<size_t>(elems) * esize);
  std::vector<char> v, v_new(static_cast<size_t>(N) * 4);
  std::vector<const void*> inputs{x.data()};
  std::vector<void*> outputs{y.data()};
  if (step) {
    v = read_file(dir + "/v.bin", static_cast<size_t>(N) * 4);
    inputs.push_back(v.data());
    outputs.push_back(v_new.data());
  }
  if (runtime->enqueue(in, out, inputs.data(), outputs.data(), nullptr, nullptr) != 0) return 5;
  write_file(dir + "/y.bin", y.data(), y.size());
  if (step) write_file(dir + "/v_new.bin", v_new.data(), v_new.size());
  delete plugin;
  return 0;
}
