// TensorRT adapter for SpikingJelly's neurons: IPluginV3 plugins SJIFSpike / SJLIFSpike / SJPLIFSpike and the
// streaming SJIFStep / SJLIFStep / SJPLIFStep (namespace "dsr", version "1") on the SJ CUDA core (core/dsr_sj.h).
//
// The plugin name is the neuron description (dsr_deploy/neuron_spec.py) less its numbers: family sj-if / sj-lif /
// sj-plif, charge integrate (IF) or leak-to-reset with tau rule divide (LIF, `/ tau`) or multiply (PLIF,
// `* sigmoid(w)`), spikes 0 / 1 ("one"). The numbers are the fields, named as the ONNX node's attributes (the parser
// hands them over by name): v_threshold (float32), v_reset (float32), hard_reset (int32: 1 hard, 0 soft reset),
// LIF / PLIF also leak (float32: tau, or sigmoid(w) rounded once) and decay_input (int32).
//   *Spike: x [T, ...] float32 -> y [T, ...] float32 (membrane starts at v_reset, 0 for a soft reset)
//   *Step:  (x_t [...] float32, v [...] float32) -> (y_t [...] float32, v_new [...] float32)
// float32 only: the SJ CUDA kernel computes float32 or float64, and TensorRT has no float64 tensors.
#pragma once

#include <NvInferRuntime.h>

#include <vector>

#include "dsr_sj.h"

namespace dsr_trt {

struct SJAttributes {
  float v_threshold = 0.f;
  float v_reset = 0.f;
  int32_t hard_reset = 0;
  float leak = 1.f;
  int32_t decay_input = 1;
};

struct SJOpKind {
  char const* name;
  dsr::SJCharge charge;
  bool step;
  int32_t nb_inputs() const { return step ? 2 : 1; }
};

class SJSpikePlugin final : public nvinfer1::IPluginV3,
                            public nvinfer1::v_1_0::IPluginV3OneCore,
                            public nvinfer1::v_1_0::IPluginV3OneBuild,
                            public nvinfer1::v_1_0::IPluginV3OneRuntime {
 public:
  SJSpikePlugin(SJOpKind kind, SJAttributes attrs);

  // IPluginV3
  nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
  nvinfer1::IPluginV3* clone() noexcept override;

  // IPluginV3OneCore
  char const* getPluginName() const noexcept override { return kind_.name; }
  char const* getPluginVersion() const noexcept override;
  char const* getPluginNamespace() const noexcept override;

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
  SJOpKind kind_;
  SJAttributes attrs_;
  std::vector<nvinfer1::PluginField> fields_;
  nvinfer1::PluginFieldCollection field_collection_{};
};

class SJSpikeCreator : public nvinfer1::IPluginCreatorV3One {
 public:
  explicit SJSpikeCreator(SJOpKind kind);
  nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
                                    nvinfer1::TensorRTPhase phase) noexcept override;
  nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override { return &field_collection_; }
  char const* getPluginName() const noexcept override { return kind_.name; }
  char const* getPluginVersion() const noexcept override;
  char const* getPluginNamespace() const noexcept override;

 private:
  SJOpKind kind_;
  std::vector<nvinfer1::PluginField> fields_;
  nvinfer1::PluginFieldCollection field_collection_{};
};

// The six SpikingJelly creators (IF/LIF/PLIF x Spike/Step), one static instance each; all_creators lists them.
nvinfer1::IPluginCreatorInterface* const* sj_creators(int32_t& count) noexcept;

}  // namespace dsr_trt
