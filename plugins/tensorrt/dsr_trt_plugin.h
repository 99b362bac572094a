// TensorRT adapter: IPluginV3 plugins DSRIFSpike / DSRLIFSpike / DSRIFStep / DSRLIFStep / DSRIFSpikeQ / DSRLIFSpikeQ
// (namespace "dsr", version "1") on the CUDA spike-loop core.
//
// Fields = the ONNX node attributes (float32): v_threshold, alpha; LIF also tau, delta_t, decay, gain (decay/gain
// optional: computed from tau/delta_t in double when absent). The ONNX parser passes a node's attributes to the
// creator by field name; plugin_namespace / plugin_version attributes only steer the parser's lookup.
//   *Spike: x [T, ...] (float32 / float16 / bfloat16) -> y [T, ...] of x's type
//   *Step:  (x_t [...], v [...] float32) -> (y_t [...] of x's type, v_new [...] float32)
//   *SpikeQ: (x [T, ...] int8 codes, x_scale [] float32, x_zero_point [] int8) -> y [T, ...] int8 spike codes {0, 1}:
//            the quantised op (dsr_spike.h, QuantArgs) of an int8 export (--int8-activations int8); TensorRT's
//            ONNX parser hands it the int8 output of a QuantizeLinear, the scale and zero point as constant inputs.
// Output spike value vth / fl32(delta_t) (true division, as the reference on every device and the ONNX function body).
#pragma once

#include <NvInferRuntime.h>

#include <string>
#include <vector>

#include "dsr_spike.h"

namespace dsr_trt {

constexpr char const* kNamespace = "dsr";
constexpr char const* kVersion = "1";

struct Attributes {
  float v_threshold = 0.f;
  float alpha = 0.f;
  float tau = 1.f;
  float delta_t = 1.f;
  float decay = 0.f;
  float gain = 0.f;
  bool has_coefficients = false;  // decay and gain given
};

struct OpKind {
  char const* name;
  dsr::Neuron neuron;
  bool step;
  bool quantized = false;  // *SpikeQ: (x codes, x_scale, x_zero_point) -> spike codes
  int32_t nb_inputs() const { return quantized ? 3 : step ? 2 : 1; }
};

class DsrSpikePlugin final : public nvinfer1::IPluginV3,
                             public nvinfer1::v_1_0::IPluginV3OneCore,
                             public nvinfer1::v_1_0::IPluginV3OneBuild,
                             public nvinfer1::v_1_0::IPluginV3OneRuntime {
 public:
  DsrSpikePlugin(OpKind kind, Attributes attrs);

  // IPluginV3
  nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
  nvinfer1::IPluginV3* clone() noexcept override;

  // IPluginV3OneCore
  char const* getPluginName() const noexcept override { return kind_.name; }
  char const* getPluginVersion() const noexcept override { return kVersion; }
  char const* getPluginNamespace() const noexcept override { return kNamespace; }

  // IPluginV3OneBuild
  int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
                          nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
  int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
                             nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
  int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
                          int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                          nvinfer1::IExprBuilder& exprBuilder) noexcept override;
  bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                 int32_t nbOutputs) noexcept override;
  int32_t getNbOutputs() const noexcept override { return kind_.step ? 2 : 1; }

  // IPluginV3OneRuntime
  int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
                        int32_t nbOutputs) noexcept override;
  int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
                  void const* const* inputs, void* const* outputs, void* workspace,
                  cudaStream_t stream) noexcept override;
  nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
  nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

 private:
  int32_t enqueue_quantized(nvinfer1::PluginTensorDesc const* inputDesc, void const* const* inputs,
                            void* const* outputs, cudaStream_t stream) noexcept;
  int32_t launched(int err) const noexcept;  // 0, or -1 with the CUDA error logged

  OpKind kind_;
  Attributes attrs_;
  dsr::SpikeParams<float> params_;
  std::vector<nvinfer1::PluginField> fields_;
  nvinfer1::PluginFieldCollection field_collection_{};
};

class DsrSpikeCreator : public nvinfer1::IPluginCreatorV3One {
 public:
  explicit DsrSpikeCreator(OpKind kind);
  nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
                                    nvinfer1::TensorRTPhase phase) noexcept override;
  nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override { return &field_collection_; }
  char const* getPluginName() const noexcept override { return kind_.name; }
  char const* getPluginVersion() const noexcept override { return kVersion; }
  char const* getPluginNamespace() const noexcept override { return kNamespace; }

 private:
  OpKind kind_;
  std::vector<nvinfer1::PluginField> fields_;
  nvinfer1::PluginFieldCollection field_collection_{};
};

// The twelve creators: DSR's six (IF/LIF x Spike/Step/SpikeQ) and SpikingJelly's six (dsr_trt_sj_plugin.h,
// IF/LIF/PLIF x Spike/Step), one static instance each; shared by both registration libraries.
nvinfer1::IPluginCreatorInterface* const* all_creators(int32_t& count) noexcept;

// Where plugin errors go: the logger TensorRT handed to setLoggerFinder (dynamic library), else stderr.
void set_logger_finder(nvinfer1::ILoggerFinder* finder) noexcept;
void log_error(std::string const& msg) noexcept;

}  // namespace dsr_trt
