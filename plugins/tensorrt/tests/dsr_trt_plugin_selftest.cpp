// Host-side self-test of the TensorRT plugins, runnable without TensorRT's runtime or a GPU.
//
// Checks what does not need an engine: the creators (names, namespace, version, fields), createPlugin from
// ONNX-parser-like fields (missing fields rejected), output types, format combinations, the serialisation round trip
// (getFieldsToSerialize -> createPlugin gives the same fields), clone / attachToContext, the getCreators export of
// libdsr_trt_plugin_dynamic.so, and the registration libdsr_trt_plugin.so performs when loaded (against the recording
// registry below, which stands in for libnvinfer's: this executable exports getPluginRegistry).
//
//   dsr_trt_plugin_selftest <libdsr_trt_plugin.so> <libdsr_trt_plugin_dynamic.so>
#include <dlfcn.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "dsr_trt_plugin.h"
#include "recording_registry.h"

using namespace nvinfer1;

namespace {

int g_failures = 0;
#define CHECK(cond)                                                      \
  do {                                                                   \
    if (!(cond)) {                                                       \
      std::fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond); \
      ++g_failures;                                                      \
    }                                                                    \
  } while (0)

dsr_trt_test::RecordingRegistry g_registry;

IPluginCreatorV3One* creator_named(IPluginCreatorInterface* const* list, int32_t n, char const* name) {
  for (int32_t i = 0; i < n; ++i) {
    auto* c = dynamic_cast<IPluginCreatorV3One*>(list[i]);
    if (c && std::strcmp(c->getPluginName(), name) == 0) return c;
  }
  return nullptr;
}

std::vector<std::pair<std::string, float>> float_fields(PluginFieldCollection const* fc) {
  std::vector<std::pair<std::string, float>> out;
  for (int32_t i = 0; i < fc->nbFields; ++i) {
    float v = 0.f;
    if (fc->fields[i].type == PluginFieldType::kFLOAT32 && fc->fields[i].data) std::memcpy(&v, fc->fields[i].data, 4);
    out.emplace_back(fc->fields[i].name, v);
  }
  return out;
}

DynamicPluginTensorDesc desc(DataType t, TensorFormat f = TensorFormat::kLINEAR) {
  DynamicPluginTensorDesc d{};
  d.desc.type = t;
  d.desc.format = f;
  return d;
}

void check_creator(IPluginCreatorV3One* c, bool lif, bool step, bool quantized = false) {
  CHECK(c != nullptr);
  if (!c) return;
  CHECK(std::strcmp(c->getPluginNamespace(), "dsr") == 0);
  CHECK(std::strcmp(c->getPluginVersion(), "1") == 0);
  auto names = float_fields(c->getFieldNames());
  CHECK(names.size() == (lif ? 6u : 2u));

  // Fields as TensorRT's ONNX parser passes a node's attributes (float32), plus the lookup-only string attributes.
  float vth = 0.3f, alpha = 0.3f, tau = 1.0f, dt = 0.05f, decay = 0.95122942f, gain = 0.04877058f;
  char const ns[] = "dsr";
  std::vector<PluginField> f = {{"v_threshold", &vth, PluginFieldType::kFLOAT32, 1},
                                {"alpha", &alpha, PluginFieldType::kFLOAT32, 1},
                                {"plugin_namespace", ns, PluginFieldType::kCHAR, 3}};
  if (lif) {
    f.push_back({"tau", &tau, PluginFieldType::kFLOAT32, 1});
    f.push_back({"delta_t", &dt, PluginFieldType::kFLOAT32, 1});
    f.push_back({"decay", &decay, PluginFieldType::kFLOAT32, 1});
    f.push_back({"gain", &gain, PluginFieldType::kFLOAT32, 1});
  }
  PluginFieldCollection fc{static_cast<int32_t>(f.size()), f.data()};
  IPluginV3* plugin = c->createPlugin(c->getPluginName(), &fc, TensorRTPhase::kBUILD);
  CHECK(plugin != nullptr);
  if (!plugin) return;

  // A missing required field is refused.
  PluginFieldCollection partial{1, f.data() + 1};  // alpha only
  CHECK(c->createPlugin(c->getPluginName(), &partial, TensorRTPhase::kBUILD) == nullptr);

  auto* core = dynamic_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
  auto* build = dynamic_cast<v_1_0::IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
  auto* runtime =
      dynamic_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
  CHECK(core && build && runtime);
  if (!(core && build && runtime)) return;
  CHECK(std::strcmp(core->getPluginName(), c->getPluginName()) == 0);
  CHECK(std::strcmp(core->getPluginNamespace(), "dsr") == 0);
  CHECK(build->getNbOutputs() == (step ? 2 : 1));

  int32_t const nb_in = quantized ? 3 : step ? 2 : 1;
  if (quantized) {
    // int8 codes, float32 scale, int8 zero point -> int8 spike codes; nothing else.
    DataType in_types[3] = {DataType::kINT8, DataType::kFLOAT, DataType::kINT8};
    DataType out_types[1] = {DataType::kFLOAT};
    CHECK(build->getOutputDataTypes(out_types, 1, in_types, 3) == 0);
    CHECK(out_types[0] == DataType::kINT8);
    CHECK(build->getOutputDataTypes(out_types, 1, in_types, 1) != 0);
    DynamicPluginTensorDesc io[4] = {desc(DataType::kINT8), desc(DataType::kFLOAT), desc(DataType::kINT8),
                                     desc(DataType::kINT8)};
    for (int p = 0; p < 4; ++p) CHECK(build->supportsFormatCombination(p, io, 3, 1));
    io[0] = desc(DataType::kFLOAT);
    CHECK(!build->supportsFormatCombination(0, io, 3, 1));
    io[0] = desc(DataType::kINT8, TensorFormat::kCHW4);
    CHECK(!build->supportsFormatCombination(0, io, 3, 1));
    io[1] = desc(DataType::kINT8);
    CHECK(!build->supportsFormatCombination(1, io, 3, 1));
    // The zero point as the parser's constant may come: int8, float or int32 (configure accepts the same).
    for (DataType zt : {DataType::kINT8, DataType::kFLOAT, DataType::kINT32}) {
      DynamicPluginTensorDesc zio[4] = {desc(DataType::kINT8), desc(DataType::kFLOAT), desc(zt), desc(DataType::kINT8)};
      for (int p = 0; p < 4; ++p) CHECK(build->supportsFormatCombination(p, zio, 3, 1));
      CHECK(build->configurePlugin(zio, 3, zio + 3, 1) == 0);
    }
    for (DataType zt : {DataType::kUINT8, DataType::kHALF, DataType::kBOOL}) {
      DynamicPluginTensorDesc zio[4] = {desc(DataType::kINT8), desc(DataType::kFLOAT), desc(zt), desc(DataType::kINT8)};
      CHECK(!build->supportsFormatCombination(2, zio, 3, 1));
      CHECK(build->configurePlugin(zio, 3, zio + 3, 1) != 0);
    }
    io[2] = desc(DataType::kUINT8);
    CHECK(!build->supportsFormatCombination(2, io, 3, 1));
    io[3] = desc(DataType::kFLOAT);
    CHECK(!build->supportsFormatCombination(3, io, 3, 1));
  } else {
    DataType in_types[2] = {DataType::kHALF, DataType::kFLOAT};
    DataType out_types[2] = {DataType::kINT8, DataType::kINT8};
    CHECK(build->getOutputDataTypes(out_types, step ? 2 : 1, in_types, nb_in) == 0);
    CHECK(out_types[0] == DataType::kHALF);
    if (step) CHECK(out_types[1] == DataType::kFLOAT);
  }

  // Format combinations: x float/half/bf16 linear; y like x; the Step membrane float32.
  if (quantized) {
    // checked above
  } else if (!step) {
    DynamicPluginTensorDesc io[2] = {desc(DataType::kHALF), desc(DataType::kHALF)};
    CHECK(build->supportsFormatCombination(0, io, 1, 1));
    CHECK(build->supportsFormatCombination(1, io, 1, 1));
    io[1] = desc(DataType::kFLOAT);
    CHECK(!build->supportsFormatCombination(1, io, 1, 1));
    io[0] = desc(DataType::kINT8);
    CHECK(!build->supportsFormatCombination(0, io, 1, 1));
    io[0] = desc(DataType::kFLOAT, TensorFormat::kCHW32);
    CHECK(!build->supportsFormatCombination(0, io, 1, 1));
    io[0] = desc(DataType::kBF16);
    CHECK(build->supportsFormatCombination(0, io, 1, 1));
  } else {
    DynamicPluginTensorDesc io[4] = {desc(DataType::kFLOAT), desc(DataType::kFLOAT), desc(DataType::kFLOAT),
                                     desc(DataType::kFLOAT)};
    for (int p = 0; p < 4; ++p) CHECK(build->supportsFormatCombination(p, io, 2, 2));
    io[1] = desc(DataType::kHALF);
    CHECK(!build->supportsFormatCombination(1, io, 2, 2));
  }

  // Serialisation round trip: the engine stores getFieldsToSerialize and hands it back at deserialisation.
  auto saved = float_fields(runtime->getFieldsToSerialize());
  CHECK(saved.size() == (lif ? 6u : 2u));
  IPluginV3* restored = c->createPlugin(c->getPluginName(), runtime->getFieldsToSerialize(), TensorRTPhase::kRUNTIME);
  CHECK(restored != nullptr);
  if (restored) {
    auto* rrt = dynamic_cast<IPluginV3OneRuntime*>(restored->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    CHECK(rrt && float_fields(rrt->getFieldsToSerialize()) == saved);
    delete restored;
  }
  for (auto const& [name, value] : saved) {
    if (name == "v_threshold") CHECK(value == vth);
    if (name == "decay") CHECK(value == decay);
  }
  IPluginV3* cloned = plugin->clone();
  IPluginV3* attached = runtime->attachToContext(nullptr);
  CHECK(cloned && attached);
  delete cloned;
  delete attached;
  delete plugin;
}

}  // namespace

// Stands in for libnvinfer's registry when libdsr_trt_plugin.so is loaded into this process.
extern "C" __attribute__((visibility("default"))) IPluginRegistry* getPluginRegistry() noexcept { return &g_registry; }

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s libdsr_trt_plugin.so libdsr_trt_plugin_dynamic.so\n", argv[0]);
    return 2;
  }
  // The dynamic library: getCreators, no registration on load.
  void* dyn = dlopen(argv[2], RTLD_NOW | RTLD_LOCAL);
  CHECK(dyn != nullptr);
  if (!dyn) std::fprintf(stderr, "%s\n", dlerror());
  if (dyn) {
    using GetCreators = IPluginCreatorInterface* const* (*)(int32_t&);
    auto get = reinterpret_cast<GetCreators>(dlsym(dyn, "getCreators"));
    CHECK(get != nullptr && dlsym(dyn, "setLoggerFinder") != nullptr);
    CHECK(g_registry.registered.empty());
    if (get) {
      int32_t n = 0;
      IPluginCreatorInterface* const* list = get(n);
      CHECK(n == 6);
      check_creator(creator_named(list, n, "DSRIFSpike"), false, false);
      check_creator(creator_named(list, n, "DSRLIFSpike"), true, false);
      check_creator(creator_named(list, n, "DSRIFStep"), false, true);
      check_creator(creator_named(list, n, "DSRLIFStep"), true, true);
      check_creator(creator_named(list, n, "DSRIFSpikeQ"), false, false, true);
      check_creator(creator_named(list, n, "DSRLIFSpikeQ"), true, false, true);
    }
  }
  // The static library registers its six creators under namespace "dsr" when loaded.
  void* stat = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  CHECK(stat != nullptr);
  if (!stat) std::fprintf(stderr, "%s\n", dlerror());
  CHECK(g_registry.registered.size() == 6);
  for (auto const& [name, ns] : g_registry.registered) {
    CHECK(ns == "dsr");
    CHECK(name.rfind("DSR", 0) == 0);
  }
  std::printf("dsr TensorRT plugin self-test: %s (%d failures)\n", g_failures ? "FAILED" : "passed", g_failures);
  return g_failures ? 1 : 0;
}
