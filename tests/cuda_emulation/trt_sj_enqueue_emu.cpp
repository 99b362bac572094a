// The SpikingJelly TensorRT plugins' runtime path (createPlugin from parser-like fields -> onShapeChange -> enqueue)
// on host memory, with the SJ CUDA kernel compiled under host emulation (cuda_host_emulation.h).
// tests/test_native_trt.py builds it, writes the inputs, runs it and compares with dsr_deploy.functional.sj_forward.
//
//   trt_sj_enqueue_emu OP T N V_THRESHOLD V_RESET HARD_RESET LEAK DECAY_INPUT DIR
//     OP: SJIFSpike | SJLIFSpike | SJPLIFSpike | SJIFStep | SJLIFStep | SJPLIFStep (float32)
//     DIR/x.bin (Spike: [T, N]; Step: [N]) and, for Step, DIR/v.bin ([N]) in; DIR/y.bin (and v_new.bin) out.
//     V_RESET "-" leaves the v_reset field out; LEAK / DECAY_INPUT are passed to the leaky ops only.
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
std::vector<float> read_floats(const std::string& path, size_t n) {
  std::vector<float> out(n);
  std::ifstream f(path, std::ios::binary);
  if (!f.read(reinterpret_cast<char*>(out.data()), static_cast<std::streamsize>(n * 4))) {
    std::fprintf(stderr, "cannot read %zu floats from %s\n", n, path.c_str());
    std::exit(2);
  }
  return out;
}
void write_floats(const std::string& path, const std::vector<float>& v) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(v.data()), static_cast<std::streamsize>(v.size() * 4));
}
}  // namespace

int main(int argc, char** argv) {
  if (argc != 10) {
    std::fprintf(stderr, "usage: %s OP T N V_THRESHOLD V_RESET HARD_RESET LEAK DECAY_INPUT DIR\n", argv[0]);
    return 2;
  }
  const std::string op = argv[1], dir = argv[9];
  const int64_t T = std::atoll(argv[2]), N = std::atoll(argv[3]);
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
  const bool step = op.find("Step") != std::string::npos, leaky = op.rfind("SJIF", 0) != 0;
  float vth = std::strtof(argv[4], nullptr), v_reset = 0.f, leak = std::strtof(argv[7], nullptr);
  int32_t hard = std::atoi(argv[6]), decay_input = std::atoi(argv[8]);
  std::vector<PluginField> fields = {{"v_threshold", &vth, PluginFieldType::kFLOAT32, 1},
                                     {"hard_reset", &hard, PluginFieldType::kINT32, 1}};
  if (std::string(argv[5]) != "-") {
    v_reset = std::strtof(argv[5], nullptr);
    fields.push_back({"v_reset", &v_reset, PluginFieldType::kFLOAT32, 1});
  }
  if (leaky) {
    fields.push_back({"leak", &leak, PluginFieldType::kFLOAT32, 1});
    fields.push_back({"decay_input", &decay_input, PluginFieldType::kINT32, 1});
  }
  PluginFieldCollection fc{static_cast<int32_t>(fields.size()), fields.data()};
  IPluginV3* plugin = creator->createPlugin("emu", &fc, TensorRTPhase::kRUNTIME);
  if (plugin == nullptr) return 3;
  auto* runtime =
      static_cast<v_1_0::IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));

  PluginTensorDesc in[2]{}, out[2]{};
  in[0].type = DataType::kFLOAT;
  in[0].format = TensorFormat::kLINEAR;
  if (step) {
    in[0].dims.nbDims = 1;
    in[0].dims.d[0] = N;
  } else {
    in[0].dims.nbDims = 2;
    in[0].dims.d[0] = T;
    in[0].dims.d[1] = N;
  }
  in[1] = in[0];
  out[0] = out[1] = in[0];
  const int32_t n_io = step ? 2 : 1;
  if (runtime->onShapeChange(in, n_io, out, n_io) != 0) return 4;

  const size_t elems = static_cast<size_t>(step ? N : T * N);
  std::vector<float> x = read_floats(dir + "/x.bin", elems), y(elems, 7.f), v, v_new(static_cast<size_t>(N), 7.f);
  std::vector<const void*> inputs{x.data()};
  std::vector<void*> outputs{y.data()};
  if (step) {
    v = read_floats(dir + "/v.bin", static_cast<size_t>(N));
    inputs.push_back(v.data());
    outputs.push_back(v_new.data());
  }
  if (runtime->enqueue(in, out, inputs.data(), outputs.data(), nullptr, nullptr) != 0) return 5;
  write_floats(dir + "/y.bin", y);
  if (step) write_floats(dir + "/v_new.bin", v_new);
  delete plugin;
  return 0;
}
