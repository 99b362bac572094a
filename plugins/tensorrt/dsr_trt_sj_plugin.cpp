// TensorRT IPluginV3 plugins of SpikingJelly's neurons on the SJ CUDA core (see dsr_trt_sj_plugin.h): the fields
// fill one dsr::SJArgs and enqueue launches dsr::launch_sj_forward, the kernel the torch op and the emulation tests
// use, so the arithmetic has one source per device.
#include "dsr_trt_sj_plugin.h"

#include <cstring>
#include <string>

#include "dsr_trt_plugin.h"

using namespace nvinfer1;

namespace dsr_trt {

namespace {

bool leaky(SJOpKind const& kind) { return kind.charge != dsr::SJCharge::IF; }

int64_t volume(Dims const& d, int32_t from = 0) {
  int64_t n = 1;
  for (int32_t i = from; i < d.nbDims; ++i) n *= d.d[i];
  return n;
}

// A float field as float32 (the ONNX parser passes float attributes as kFLOAT32; kFLOAT64 accepted too).
bool read_float(PluginField const& f, float* out) {
  if (f.data == nullptr || f.length < 1) return false;
  if (f.type == PluginFieldType::kFLOAT32) {
    std::memcpy(out, f.data, sizeof(float));
    return true;
  }
  if (f.type == PluginFieldType::kFLOAT64) {
    double d;
    std::memcpy(&d, f.data, sizeof(double));
    *out = static_cast<float>(d);
    return true;
  }
  return false;
}

// An int field holding 0 or 1 (the ONNX parser converts an int attribute to the creator's declared kINT32; other
// integer widths are accepted so a hand-made field collection works too).
bool read_flag(PluginField const& f, int32_t* out) {
  if (f.data == nullptr || f.length < 1) return false;
  int64_t v = 0;
  switch (f.type) {
    case PluginFieldType::kINT8: v = *static_cast<int8_t const*>(f.data); break;
    case PluginFieldType::kINT16: v = *static_cast<int16_t const*>(f.data); break;
    case PluginFieldType::kINT32: v = *static_cast<int32_t const*>(f.data); break;
    case PluginFieldType::kINT64: v = *static_cast<int64_t const*>(f.data); break;
    default: return false;
  }
  if (v != 0 && v != 1) return false;
  *out = static_cast<int32_t>(v);
  return true;
}

}  // namespace

// ---- plugin ------------------------------------------------------------------------------------------------------

SJSpikePlugin::SJSpikePlugin(SJOpKind kind, SJAttributes attrs) : kind_(kind), attrs_(attrs) {
  fields_.emplace_back("v_threshold", &attrs_.v_threshold, PluginFieldType::kFLOAT32, 1);
  fields_.emplace_back("v_reset", &attrs_.v_reset, PluginFieldType::kFLOAT32, 1);
  fields_.emplace_back("hard_reset", &attrs_.hard_reset, PluginFieldType::kINT32, 1);
  if (leaky(kind_)) {
    fields_.emplace_back("leak", &attrs_.leak, PluginFieldType::kFLOAT32, 1);
    fields_.emplace_back("decay_input", &attrs_.decay_input, PluginFieldType::kINT32, 1);
  }
  field_collection_.nbFields = static_cast<int32_t>(fields_.size());
  field_collection_.fields = fields_.data();
}

char const* SJSpikePlugin::getPluginVersion() const noexcept { return kVersion; }
char const* SJSpikePlugin::getPluginNamespace() const noexcept { return kNamespace; }

IPluginCapability* SJSpikePlugin::getCapabilityInterface(PluginCapabilityType type) noexcept {
  switch (type) {
    case PluginCapabilityType::kCORE: return static_cast<v_1_0::IPluginV3OneCore*>(this);
    case PluginCapabilityType::kBUILD: return static_cast<v_1_0::IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<v_1_0::IPluginV3OneRuntime*>(this);
  }
  return nullptr;
}

IPluginV3* SJSpikePlugin::clone() noexcept {
  try {
    return new SJSpikePlugin(kind_, attrs_);
  } catch (...) {
    return nullptr;
  }
}

int32_t SJSpikePlugin::configurePlugin(DynamicPluginTensorDesc const*, int32_t nbInputs, DynamicPluginTensorDesc const*,
                                       int32_t nbOutputs) noexcept {
  return nbInputs == kind_.nb_inputs() && nbOutputs == getNbOutputs() ? 0 : -1;
}

int32_t SJSpikePlugin::getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                                          int32_t nbInputs) const noexcept {
  if (nbInputs != kind_.nb_inputs() || nbOutputs != getNbOutputs()) return -1;
  if (inputTypes[0] != DataType::kFLOAT) {
    log_error(std::string(kind_.name) + ": x must be float32 (the SpikingJelly plugins compute in float32)");
    return -1;
  }
  for (int32_t i = 0; i < nbOutputs; ++i) outputTypes[i] = DataType::kFLOAT;
  return 0;
}

int32_t SJSpikePlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*, int32_t,
                                       DimsExprs* outputs, int32_t nbOutputs, IExprBuilder&) noexcept {
  if (nbInputs != kind_.nb_inputs() || nbOutputs != getNbOutputs()) return -1;
  if (!kind_.step && inputs[0].nbDims < 1) {
    log_error(std::string(kind_.name) + ": x needs a leading time dimension [T, ...]");
    return -1;
  }
  outputs[0] = inputs[0];
  if (kind_.step) outputs[1] = inputs[0];  // v_new has x_t's shape (v must match it; checked at onShapeChange)
  return 0;
}

bool SJSpikePlugin::supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                              int32_t nbOutputs) noexcept {
  if (pos < 0 || pos >= nbInputs + nbOutputs) return false;
  PluginTensorDesc const& d = inOut[pos].desc;
  return d.format == TensorFormat::kLINEAR && d.type == DataType::kFLOAT;  // every input and output
}

int32_t SJSpikePlugin::onShapeChange(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const*,
                                     int32_t) noexcept {
  if (nbInputs != kind_.nb_inputs()) return -1;
  if (kind_.step && volume(in[0].dims) != volume(in[1].dims)) {
    log_error(std::string(kind_.name) + ": v must have the shape of x_t");
    return -1;
  }
  if (!kind_.step && in[0].dims.nbDims < 1) {
    log_error(std::string(kind_.name) + ": x needs a leading time dimension [T, ...]");
    return -1;
  }
  return 0;
}

int32_t SJSpikePlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*, void const* const* inputs,
                               void* const* outputs, void*, cudaStream_t stream) noexcept {
  if (inputDesc[0].type != DataType::kFLOAT) {
    log_error(std::string(kind_.name) + ": unsupported input type (float32 only)");
    return -1;
  }
  dsr::SJArgs args{kind_.charge, attrs_.decay_input, attrs_.hard_reset, attrs_.v_threshold, attrs_.v_reset,
                   attrs_.leak, dsr::DType::F32, inputs[0], outputs[0], nullptr, nullptr, 0, 0};
  if (kind_.step) {
    args.T = 1;
    args.N = volume(inputDesc[0].dims);
    args.v_in = inputs[1];
    args.v_out = outputs[1];
  } else {
    args.T = inputDesc[0].dims.d[0];
    args.N = volume(inputDesc[0].dims, 1);
  }
  if (args.T == 0 || args.N == 0) return 0;
  int const err = dsr::launch_sj_forward(args, stream);
  if (err == 0) return 0;
  log_error(std::string(kind_.name) + ": kernel launch failed (CUDA error " + std::to_string(err) + ")");
  return -1;
}

IPluginV3* SJSpikePlugin::attachToContext(IPluginResourceContext*) noexcept { return clone(); }

PluginFieldCollection const* SJSpikePlugin::getFieldsToSerialize() noexcept { return &field_collection_; }

// ---- creator -----------------------------------------------------------------------------------------------------

SJSpikeCreator::SJSpikeCreator(SJOpKind kind) : kind_(kind) {
  fields_.emplace_back("v_threshold", nullptr, PluginFieldType::kFLOAT32, 1);
  fields_.emplace_back("v_reset", nullptr, PluginFieldType::kFLOAT32, 1);
  fields_.emplace_back("hard_reset", nullptr, PluginFieldType::kINT32, 1);
  if (leaky(kind_)) {
    fields_.emplace_back("leak", nullptr, PluginFieldType::kFLOAT32, 1);
    fields_.emplace_back("decay_input", nullptr, PluginFieldType::kINT32, 1);
  }
  field_collection_.nbFields = static_cast<int32_t>(fields_.size());
  field_collection_.fields = fields_.data();
}

char const* SJSpikeCreator::getPluginVersion() const noexcept { return kVersion; }
char const* SJSpikeCreator::getPluginNamespace() const noexcept { return kNamespace; }

IPluginV3* SJSpikeCreator::createPlugin(char const*, PluginFieldCollection const* fc, TensorRTPhase) noexcept {
  try {
    SJAttributes a;
    bool has_vth = false, has_reset = false, has_hard = false, has_leak = false, has_decay_input = false;
    for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i) {
      PluginField const& f = fc->fields[i];
      if (f.name == nullptr) continue;
      std::string const name = f.name;
      bool ok = true;
      bool const flag = name == "hard_reset" || name == "decay_input";
      if (name == "v_threshold") ok = has_vth = read_float(f, &a.v_threshold);
      else if (name == "v_reset") ok = has_reset = read_float(f, &a.v_reset);
      else if (name == "leak") ok = has_leak = read_float(f, &a.leak);
      else if (name == "hard_reset") ok = has_hard = read_flag(f, &a.hard_reset);
      else if (name == "decay_input") ok = has_decay_input = read_flag(f, &a.decay_input);
      // other fields (plugin_namespace, plugin_version) are for the parser's lookup only
      if (!ok) {
        log_error(std::string(kind_.name) + ": field " + name + " must be " + (flag ? "an int 0 or 1" : "a float"));
        return nullptr;
      }
    }
    if (!has_vth || !has_hard || (a.hard_reset && !has_reset)) {
      log_error(std::string(kind_.name) + ": fields v_threshold, hard_reset (and v_reset for a hard reset) are "
                "required");
      return nullptr;
    }
    if (!has_reset) a.v_reset = 0.f;  // a soft reset's membrane starts at 0
    if (leaky(kind_) && (!has_leak || !has_decay_input)) {
      log_error(std::string(kind_.name) + ": fields leak and decay_input are required");
      return nullptr;
    }
    return new SJSpikePlugin(kind_, a);
  } catch (...) {
    return nullptr;
  }
}

IPluginCreatorInterface* const* sj_creators(int32_t& count) noexcept {
  static SJSpikeCreator if_spike({"SJIFSpike", dsr::SJCharge::IF, false});
  static SJSpikeCreator lif_spike({"SJLIFSpike", dsr::SJCharge::LIF, false});
  static SJSpikeCreator plif_spike({"SJPLIFSpike", dsr::SJCharge::PLIF, false});
  static SJSpikeCreator if_step({"SJIFStep", dsr::SJCharge::IF, true});
  static SJSpikeCreator lif_step({"SJLIFStep", dsr::SJCharge::LIF, true});
  static SJSpikeCreator plif_step({"SJPLIFStep", dsr::SJCharge::PLIF, true});
  static IPluginCreatorInterface* const list[] = {&if_spike, &lif_spike, &plif_spike, &if_step, &lif_step, &plif_step};
  count = 6;
  return list;
}

}  // namespace dsr_trt
