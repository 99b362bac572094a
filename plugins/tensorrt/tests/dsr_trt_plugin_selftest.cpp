// Host-side self-test of the TensorRT plugins, runnable without TensorRT's runtime or a GPU.
//
// Checks what does not need an engine: the creators (names, namespace, version, fields; DSR's and SpikingJelly's),
// createPlugin from
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
#include "dsr_trt_sj_plugin.h"
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


char const* field_type(PluginFieldType t) {
  switch (t) {
    case PluginFieldType::kFLOAT32: return "float32";
    case PluginFieldType::kINT32: return "int32";
    case PluginFieldType::kCHAR: return "char";
    default: return "other";
  }
}

// One line per creator for tests/test_native_trt.py, which compares it with plugins/ops.json:
//   "fields NAME: field:type field:type ..."
void print_fields(IPluginCreatorV3One* c) {
  std::string line = std::string("fields ") + c->getPluginName() + ":";
  PluginFieldCollection const* fc = c->getFieldNames();
  for (int32_t i = 0; i < fc->nbFields; ++i)
    line += std::string(" ") + fc->fields[i].name + ":" + field_type(fc->fields[i].type);
  std::printf("%s\n", line.c_str());
}

// A SpikingJelly creator: fields as the ONNX parser passes the node's attributes (floats as kFLOAT32, the int
// attributes as the creator's declared kINT32), refusals, float32-only types, the serialisation round trip.
void check_sj_creator(IPluginCreatorV3One* c, bool leaky, bool step) {
  CHECK(c != nullptr);
  if (!c) return;
  CHECK(std::strcmp(c->getPluginNamespace(), "dsr") == 0);
  CHECK(std::strcmp(c->getPluginVersion(), "1") == 0);
  CHECK(c->getFieldNames()->nbFields == (leaky ? 5 : 3));
  float vth = 0.75f, v_reset = -0.25f, leak = 0.5f;
  int32_t hard = 1, decay_input = 0;
  char const ns[] = "dsr";
  std::vector<PluginField> f = {{"v_threshold", &vth, PluginFieldType::kFLOAT32, 1},
                                {"v_reset", &v_reset, PluginFieldType::kFLOAT32, 1},
                                {"hard_reset", &hard, PluginFieldType::kINT32, 1},
                                {"plugin_namespace", ns, PluginFieldType::kCHAR, 3}};
  if (leaky) {
    f.push_back({"leak", &leak, PluginFieldType::kFLOAT32, 1});
    f.push_back({"decay_input", &decay_input, PluginFieldType::kINT32, 1});
  }
  PluginFieldCollection fc{static_cast<int32_t>(f.size()), f.data()};
  IPluginV3* plugin = c->createPlugin(c->getPluginName(), &fc, TensorRTPhase::kBUILD);
  CHECK(plugin != nullptr);
  if (!plugin) return;

  // Refused: a missing threshold; a hard reset without v_reset; a leaky neuron without leak; a flag other than 0/1;
  // a float given as an int.
  PluginFieldCollection no_vth{static_cast<int32_t>(f.size()) - 1, f.data() + 1};
  CHECK(c->createPlugin(c->getPluginName(), &no_vth, TensorRTPhase::kBUILD) == nullptr);
  std::vector<PluginField> g = {f[0], f[2]};  // hard reset, no v_reset
  PluginFieldCollection no_reset{2, g.data()};
  CHECK(c->createPlugin(c->getPluginName(), &no_reset, TensorRTPhase::kBUILD) == nullptr);
  int32_t soft = 0;
  std::vector<PluginField> soft_fields = {f[0], {"hard_reset", &soft, PluginFieldType::kINT32, 1}};
  if (leaky) soft_fields.insert(soft_fields.end(), f.end() - 2, f.end());
  PluginFieldCollection soft_fc{static_cast<int32_t>(soft_fields.size()), soft_fields.data()};
  IPluginV3* soft_plugin = c->createPlugin(c->getPluginName(), &soft_fc, TensorRTPhase::kBUILD);
  CHECK(soft_plugin != nullptr);  // a soft reset needs no v_reset
  delete soft_plugin;
  if (leaky) {
    PluginFieldCollection no_leak{3, f.data()};
    CHECK(c->createPlugin(c->getPluginName(), &no_leak, TensorRTPhase::kBUILD) == nullptr);
  }
  int32_t two = 2;
  std::vector<PluginField> bad_flag = f;
  bad_flag[2] = {"hard_reset", &two, PluginFieldType::kINT32, 1};
  PluginFieldCollection bad_flag_fc{static_cast<int32_t>(bad_flag.size()), bad_flag.data()};
  CHECK(c->createPlugin(c->getPluginName(), &bad_flag_fc, TensorRTPhase::kBUILD) == nullptr);
  std::vector<PluginField> bad_type = f;
  bad_type[0] = {"v_threshold", &hard, PluginFieldType::kINT32, 1};
  PluginFieldCollection bad_type_fc{static_cast<int32_t>(bad_type.size()), bad_type.data()};
  CHECK(c->createPlugin(c->getPluginName(), &bad_type_fc, TensorRTPhase::kBUILD) == nullptr);
  int64_t hard64 = 1;  // other integer widths are read too
  std::vector<PluginField> wide = f;
  wide[2] = {"hard_reset", &hard64, PluginFieldType::kINT64, 1};
  PluginFieldCollection wide_fc{static_cast<int32_t>(wide.size()), wide.data()};
  IPluginV3* wide_plugin = c->createPlugin(c->getPluginName(), &wide_fc, TensorRTPhase::kBUILD);
  CHECK(wide_plugin != nullptr);
  delete wide_plugin;

  auto* core = dynamic_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
  auto* build = dynamic_cast<v_1_0::IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
  auto* runtime = dynamic_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
  CHECK(core && build && runtime);
  if (!(core && build && runtime)) return;
  CHECK(std::strcmp(core->getPluginName(), c->getPluginName()) == 0);
  CHECK(std::strcmp(core->getPluginNamespace(), "dsr") == 0);
  CHECK(build->getNbOutputs() == (step ? 2 : 1));
  int32_t const nb_in = step ? 2 : 1, nb_out = step ? 2 : 1;

  // float32 in, float32 out; float16 refused (the SJ kernel computes float32 / float64 only).
  DataType in_types[2] = {DataType::kFLOAT, DataType::kFLOAT};
  DataType out_types[2] = {DataType::kINT8, DataType::kINT8};
  CHECK(build->getOutputDataTypes(out_types, nb_out, in_types, nb_in) == 0);
  CHECK(out_types[0] == DataType::kFLOAT && (!step || out_types[1] == DataType::kFLOAT));
  in_types[0] = DataType::kHALF;
  CHECK(build->getOutputDataTypes(out_types, nb_out, in_types, nb_in) != 0);
  CHECK(build->getOutputDataTypes(out_types, nb_out, in_types, nb_in + 1) != 0);
  DynamicPluginTensorDesc io[4] = {desc(DataType::kFLOAT), desc(DataType::kFLOAT), desc(DataType::kFLOAT),
                                   desc(DataType::kFLOAT)};
  for (int p = 0; p < nb_in + nb_out; ++p) CHECK(build->supportsFormatCombination(p, io, nb_in, nb_out));
  CHECK(!build->supportsFormatCombination(nb_in + nb_out, io, nb_in, nb_out));
  io[0] = desc(DataType::kHALF);
  CHECK(!build->supportsFormatCombination(0, io, nb_in, nb_out));
  io[0] = desc(DataType::kFLOAT, TensorFormat::kCHW32);
  CHECK(!build->supportsFormatCombination(0, io, nb_in, nb_out));
  CHECK(build->configurePlugin(io, nb_in, io + nb_in, nb_out) == 0);
  CHECK(build->configurePlugin(io, nb_in + 1, io + nb_in, nb_out) != 0);

  // Shapes: a Step's v must match x_t; a Spike needs a leading time dimension.
  PluginTensorDesc sin[2]{}, sout[2]{};
  sin[0].type = sin[1].type = DataType::kFLOAT;
  sin[0].dims.nbDims = sin[1].dims.nbDims = 2;
  sin[0].dims.d[0] = sin[1].dims.d[0] = 4;
  sin[0].dims.d[1] = sin[1].dims.d[1] = 3;
  CHECK(runtime->onShapeChange(sin, nb_in, sout, nb_out) == 0);
  if (step) {
    sin[1].dims.d[1] = 5;
    CHECK(runtime->onShapeChange(sin, nb_in, sout, nb_out) != 0);
  } else {
    sin[0].dims.nbDims = 0;
    CHECK(runtime->onShapeChange(sin, nb_in, sout, nb_out) != 0);
  }

  // Serialisation round trip: the same fields, values and types come back.
  PluginFieldCollection const* saved = runtime->getFieldsToSerialize();
  CHECK(saved->nbFields == (leaky ? 5 : 3));
  IPluginV3* restored = c->createPlugin(c->getPluginName(), saved, TensorRTPhase::kRUNTIME);
  CHECK(restored != nullptr);
  if (restored) {
    auto* rrt = dynamic_cast<IPluginV3OneRuntime*>(restored->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    PluginFieldCollection const* again = rrt ? rrt->getFieldsToSerialize() : nullptr;
    CHECK(again && again->nbFields == saved->nbFields);
    for (int32_t i = 0; again && i < again->nbFields && i < saved->nbFields; ++i) {
      CHECK(std::strcmp(again->fields[i].name, saved->fields[i].name) == 0);
      CHECK(again->fields[i].type == saved->fields[i].type);
      CHECK(std::memcmp(again->fields[i].data, saved->fields[i].data, 4) == 0);
    }
    delete restored;
  }
  for (int32_t i = 0; i < saved->nbFields; ++i) {
    std::string const name = saved->fields[i].name;
    if (name == "v_reset") CHECK(std::memcmp(saved->fields[i].data, &v_reset, 4) == 0);
    if (name == "hard_reset") CHECK(*static_cast<int32_t const*>(saved->fields[i].data) == 1);
    if (name == "decay_input") CHECK(*static_cast<int32_t const*>(saved->fields[i].data) == 0);
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
      CHECK(n == 12);
      check_creator(creator_named(list, n, "DSRIFSpike"), false, false);
      check_creator(creator_named(list, n, "DSRLIFSpike"), true, false);
      check_creator(creator_named(list, n, "DSRIFStep"), false, true);
      check_creator(creator_named(list, n, "DSRLIFStep"), true, true);
      check_creator(creator_named(list, n, "DSRIFSpikeQ"), false, false, true);
      check_creator(creator_named(list, n, "DSRLIFSpikeQ"), true, false, true);
      check_sj_creator(creator_named(list, n, "SJIFSpike"), false, false);
      check_sj_creator(creator_named(list, n, "SJLIFSpike"), true, false);
      check_sj_creator(creator_named(list, n, "SJPLIFSpike"), true, false);
      check_sj_creator(creator_named(list, n, "SJIFStep"), false, true);
      check_sj_creator(creator_named(list, n, "SJLIFStep"), true, true);
      check_sj_creator(creator_named(list, n, "SJPLIFStep"), true, true);
      for (int32_t i = 0; i < n; ++i) print_fields(dynamic_cast<IPluginCreatorV3One*>(list[i]));
    }
  }
  // The static library registers its twelve creators under namespace "dsr" when loaded.
  void* stat = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  CHECK(stat != nullptr);
  if (!stat) std::fprintf(stderr, "%s\n", dlerror());
  CHECK(g_registry.registered.size() == 12);
  for (auto const& [name, ns] : g_registry.registered) {
    CHECK(ns == "dsr");
    CHECK(name.rfind("DSR", 0) == 0 || name.rfind("SJ", 0) == 0);
  }
  std::printf("dsr TensorRT plugin self-test: %s (%d failures)\n", g_failures ? "FAILED" : "passed", g_failures);
  return g_failures ? 1 : 0;
}
