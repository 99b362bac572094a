// TensorRT IPluginV3 plugins on the CUDA spike-loop core (see dsr_trt_plugin.h).
#include "dsr_trt_plugin.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <mutex>

#include "dsr_spike_cuda.h"
#include "dsr_trt_sj_plugin.h"

using namespace nvinfer1;

namespace dsr_trt {

namespace {

std::mutex g_logger_mutex;
ILoggerFinder* g_logger_finder = nullptr;

dsr::SpikeParams<float> params_of(OpKind const& kind, Attributes const& a) {
  double const decay = a.decay, gain = a.gain;
  return dsr::make_params<float>(kind.neuron, a.v_threshold, a.alpha, a.tau, a.delta_t,
                                 a.has_coefficients ? &decay : nullptr,
                                 a.has_coefficients ? &gain : nullptr);
}

bool is_spike_type(DataType t) { return t == DataType::kFLOAT || t == DataType::kHALF || t == DataType::kBF16; }

int64_t volume(Dims const& d, int32_t from) {
  int64_t n = 1;
  for (int32_t i = from; i < d.nbDims; ++i) n *= d.d[i];
  return n;
}

}  // namespace

void set_logger_finder(ILoggerFinder* finder) noexcept {
  std::lock_guard<std::mutex> lock(g_logger_mutex);
  if (g_logger_finder == nullptr) g_logger_finder = finder;
}

void log_error(std::string const& msg) noexcept {
  ILogger* logger = nullptr;
  {
    std::lock_guard<std::mutex> lock(g_logger_mutex);
    if (g_logger_finder) logger = g_logger_finder->findLogger();
  }
  std::string const line = "dsr TensorRT plugin: " + msg;
  if (logger)
    logger->log(ILogger::Severity::kERROR, line.c_str());
  else
    std::fprintf(stderr, "%s\n", line.c_str());
}

// ---- plugin ------------------------------------------------------------------------------------------------------

DsrSpikePlugin::DsrSpikePlugin(OpKind kind, Attributes attrs) : kind_(kind), attrs_(attrs), params_(params_of(kind, attrs)) {
  fields_.emplace_back("v_threshold", &attrs_.v_threshold, PluginFieldType::kFLOAT32, 1);
  fields_.emplace_back("alpha", &attrs_.alpha, PluginFieldType::kFLOAT32, 1);
  if (kind_.neuron == dsr::Neuron::LIF) {
    fields_.emplace_back("tau", &attrs_.tau, PluginFieldType::kFLOAT32, 1);
    fields_.emplace_back("delta_t", &attrs_.delta_t, PluginFieldType::kFLOAT32, 1);
    if (attrs_.has_coefficients) {
      fields_.emplace_back("decay", &attrs_.decay, PluginFieldType::kFLOAT32, 1);
      fields_.emplace_back("gain", &attrs_.gain, PluginFieldType::kFLOAT32, 1);
    }
  }
  field_collection_.nbFields = static_cast<int32_t>(fields_.size());
  field_collection_.fields = fields_.data();
}

IPluginCapability* DsrSpikePlugin::getCapabilityInterface(PluginCapabilityType type) noexcept {
  switch (type) {
    case PluginCapabilityType::kCORE: return static_cast<v_1_0::IPluginV3OneCore*>(this);
    case PluginCapabilityType::kBUILD: return static_cast<v_1_0::IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<v_1_0::IPluginV3OneRuntime*>(this);
  }
  return nullptr;
}

IPluginV3* DsrSpikePlugin::clone() noexcept {
  try {
    return new DsrSpikePlugin(kind_, attrs_);
  } catch (...) {
    return nullptr;
  }
}

namespace {
// The zero point of a quantised op's codes as TensorRT may give it: the ONNX parser turns a plugin's int8 initializer
// into a constant layer, which a weakly typed network may hand over as int8, float or int32 (its own Q/DQ zero
// points it converts to float). TensorRT's int8 is symmetric and the exporter's TensorRT form writes 0: an int8 zero
// point is read by the kernel, one of another type is ignored (zero point 0).
bool zero_point_type(DataType t) { return t == DataType::kINT8 || t == DataType::kFLOAT || t == DataType::kINT32; }
}  // namespace

int32_t DsrSpikePlugin::configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs,
                                        DynamicPluginTensorDesc const*, int32_t nbOutputs) noexcept {
  if (nbInputs != kind_.nb_inputs() || nbOutputs != getNbOutputs()) return -1;
  if (kind_.quantized && !zero_point_type(in[2].desc.type)) {
    log_error(std::string(kind_.name) + ": x_zero_point must be int8, float or int32");
    return -1;
  }
  return 0;
}

int32_t DsrSpikePlugin::getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                                           int32_t nbInputs) const noexcept {
  if (nbInputs != kind_.nb_inputs() || nbOutputs != getNbOutputs()) return -1;
  outputTypes[0] = inputTypes[0];  // the quantised op: int8 codes in, int8 spike codes out
  if (kind_.step) outputTypes[1] = DataType::kFLOAT;
  return 0;
}

int32_t DsrSpikePlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*, int32_t,
                                        DimsExprs* outputs, int32_t nbOutputs, IExprBuilder&) noexcept {
  if (nbInputs != kind_.nb_inputs() || nbOutputs != getNbOutputs()) return -1;
  if (!kind_.step && inputs[0].nbDims < 1) {
    log_error(std::string(kind_.name) + ": x needs a leading time dimension [T, ...]");
    return -1;
  }
  outputs[0] = inputs[0];
  if (kind_.step) outputs[1] = inputs[0];  // v_new has x_t's shape (v must match it; checked at enqueue)
  return 0;
}

bool DsrSpikePlugin::supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                               int32_t nbOutputs) noexcept {
  if (pos < 0 || pos >= nbInputs + nbOutputs) return false;
  PluginTensorDesc const& d = inOut[pos].desc;
  if (d.format != TensorFormat::kLINEAR) return false;
  if (kind_.quantized) {  // 0: x codes, 1: x_scale, 2: x_zero_point, 3: y codes
    if (pos == 1) return d.type == DataType::kFLOAT;
    return pos == 2 ? zero_point_type(d.type) : d.type == DataType::kINT8;
  }
  if (!kind_.step) {  // 0: x, 1: y
    return pos == 0 ? is_spike_type(d.type) : d.type == inOut[0].desc.type;
  }
  switch (pos) {  // 0: x_t, 1: v, 2: y_t, 3: v_new
    case 0: return is_spike_type(d.type);
    case 1: return d.type == DataType::kFLOAT;
    case 2: return d.type == inOut[0].desc.type;
    default: return d.type == DataType::kFLOAT;
  }
}

int32_t DsrSpikePlugin::onShapeChange(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const*,
                                      int32_t) noexcept {
  if (kind_.step && nbInputs == 2 && volume(in[0].dims, 0) != volume(in[1].dims, 0)) {
    log_error(std::string(kind_.name) + ": v must have the shape of x_t");
    return -1;
  }
  if (kind_.quantized && nbInputs == 3 && (volume(in[1].dims, 0) != 1 || volume(in[2].dims, 0) != 1)) {
    log_error(std::string(kind_.name) + ": x_scale and x_zero_point must be scalars (one value per tensor)");
    return -1;
  }
  return 0;
}

int32_t DsrSpikePlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*, void const* const* inputs,
                                void* const* outputs, void*, cudaStream_t stream) noexcept {
  if (kind_.quantized) return enqueue_quantized(inputDesc, inputs, outputs, stream);
  dsr::ForwardArgs args{};
  switch (inputDesc[0].type) {
    case DataType::kFLOAT: args.dtype = dsr::DType::F32; break;
    case DataType::kHALF: args.dtype = dsr::DType::F16; break;
    case DataType::kBF16: args.dtype = dsr::DType::BF16; break;
    default: log_error(std::string(kind_.name) + ": unsupported input type"); return -1;
  }
  args.x = inputs[0];
  args.y = outputs[0];
  if (kind_.step) {
    args.T = 1;
    args.N = volume(inputDesc[0].dims, 0);
    args.v_in = inputs[1];
    args.v_out = outputs[1];
  } else {
    args.T = inputDesc[0].dims.d[0];
    args.N = volume(inputDesc[0].dims, 1);
  }
  args.params_f32 = &params_;
  if (args.T == 0 || args.N == 0) return 0;
  return launched(dsr::cuda::launch_forward(args, stream));
}

int32_t DsrSpikePlugin::enqueue_quantized(PluginTensorDesc const* inputDesc, void const* const* inputs,
                                          void* const* outputs, cudaStream_t stream) noexcept {
  if (inputDesc[0].type != DataType::kINT8 || inputDesc[0].dims.nbDims < 1) {
    log_error(std::string(kind_.name) + ": x must be int8 codes [T, ...]");
    return -1;
  }
  // The scale and zero point stay in device memory (TensorRT inputs): the kernel reads them.
  auto const* scale = static_cast<float const*>(inputs[1]);
  int64_t const T = inputDesc[0].dims.d[0], N = volume(inputDesc[0].dims, 1);
  void const* zero_point = inputDesc[2].type == DataType::kINT8 ? inputs[2] : nullptr;  // null: zero point 0
  dsr::QuantArgs const args{dsr::Code::I8, inputs[0], outputs[0], scale, zero_point, T, N, &params_};
  if (args.T == 0 || args.N == 0) return 0;
  return launched(dsr::cuda::launch_forward_quantized(args, stream));
}

int32_t DsrSpikePlugin::launched(int err) const noexcept {
  if (err == 0) return 0;
  log_error(std::string(kind_.name) + ": kernel launch failed: " + dsr::cuda::error_string(err));
  return -1;
}

IPluginV3* DsrSpikePlugin::attachToContext(IPluginResourceContext*) noexcept { return clone(); }

PluginFieldCollection const* DsrSpikePlugin::getFieldsToSerialize() noexcept { return &field_collection_; }

// ---- creator -----------------------------------------------------------------------------------------------------

DsrSpikeCreator::DsrSpikeCreator(OpKind kind) : kind_(kind) {
  fields_.emplace_back("v_threshold", nullptr, PluginFieldType::kFLOAT32, 1);
  fields_.emplace_back("alpha", nullptr, PluginFieldType::kFLOAT32, 1);
  if (kind_.neuron == dsr::Neuron::LIF) {
    for (char const* n : {"tau", "delta_t", "decay", "gain"})
      fields_.emplace_back(n, nullptr, PluginFieldType::kFLOAT32, 1);
  }
  field_collection_.nbFields = static_cast<int32_t>(fields_.size());
  field_collection_.fields = fields_.data();
}

namespace {
// A float field as float32 (the ONNX parser passes float attributes as kFLOAT32; accept kFLOAT64 too).
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
}  // namespace

IPluginV3* DsrSpikeCreator::createPlugin(char const*, PluginFieldCollection const* fc, TensorRTPhase) noexcept {
  try {
    Attributes a;
    bool has_vth = false, has_alpha = false, has_tau = false, has_dt = false, has_decay = false, has_gain = false;
    for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i) {
      PluginField const& f = fc->fields[i];
      if (f.name == nullptr) continue;
      std::string const name = f.name;
      bool ok = true;
      if (name == "v_threshold") ok = has_vth = read_float(f, &a.v_threshold);
      else if (name == "alpha") ok = has_alpha = read_float(f, &a.alpha);
      else if (name == "tau") ok = has_tau = read_float(f, &a.tau);
      else if (name == "delta_t") ok = has_dt = read_float(f, &a.delta_t);
      else if (name == "decay") ok = has_decay = read_float(f, &a.decay);
      else if (name == "gain") ok = has_gain = read_float(f, &a.gain);
      // other fields (plugin_namespace, plugin_version) are for the parser's lookup only
      if (!ok) {
        log_error(std::string(kind_.name) + ": field " + name + " must be a float");
        return nullptr;
      }
    }
    if (!has_vth || !has_alpha) {
      log_error(std::string(kind_.name) + ": fields v_threshold and alpha are required");
      return nullptr;
    }
    if (kind_.neuron == dsr::Neuron::LIF) {
      a.has_coefficients = has_decay && has_gain;
      if (!has_dt || (!a.has_coefficients && !has_tau)) {
        log_error(std::string(kind_.name) + ": fields delta_t and tau (or decay and gain) are required");
        return nullptr;
      }
    }
    return new DsrSpikePlugin(kind_, a);
  } catch (...) {
    return nullptr;
  }
}

nvinfer1::IPluginCreatorInterface* const* all_creators(int32_t& count) noexcept {
  static DsrSpikeCreator if_spike({"DSRIFSpike", dsr::Neuron::IF, false});
  static DsrSpikeCreator lif_spike({"DSRLIFSpike", dsr::Neuron::LIF, false});
  static DsrSpikeCreator if_step({"DSRIFStep", dsr::Neuron::IF, true});
  static DsrSpikeCreator lif_step({"DSRLIFStep", dsr::Neuron::LIF, true});
  static DsrSpikeCreator if_spike_q({"DSRIFSpikeQ", dsr::Neuron::IF, false, true});
  static DsrSpikeCreator lif_spike_q({"DSRLIFSpikeQ", dsr::Neuron::LIF, false, true});
  // then SpikingJelly's six (dsr_trt_sj_plugin.cpp)
  static IPluginCreatorInterface* const* const list = [] {
    static IPluginCreatorInterface* all[12] = {&if_spike, &lif_spike, &if_step, &lif_step, &if_spike_q, &lif_spike_q};
    int32_t n = 0;
    IPluginCreatorInterface* const* sj = sj_creators(n);
    for (int32_t i = 0; i < n && i < 6; ++i) all[6 + i] = sj[i];
    return all;
  }();
  count = 12;
  return list;
}

}  // namespace dsr_trt
