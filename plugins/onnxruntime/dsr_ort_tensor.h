// What every dsr ONNX Runtime kernel reads of an input value, through the C API only: its shape, element type and
// data. Shared by the neuron ops (dsr_ort_ops.cpp) and the event-driven convolution (dsr_ort_conv.cpp).
#pragma once

#include <cstdint>
#include <vector>

#include "dsr_ort_abi.h"

namespace dsr_ort {

inline OrtStatus* tensor_shape(const OrtApi* api, const OrtValue* v, std::vector<int64_t>* dims,
                               ONNXTensorElementDataType* type) {
  OrtTensorTypeAndShapeInfo* info = nullptr;
  OrtStatus* st = api->GetTensorTypeAndShape(v, &info);
  if (st) return st;
  size_t n = 0;
  st = api->GetDimensionsCount(info, &n);
  if (!st) {
    dims->resize(n);
    st = api->GetDimensions(info, dims->data(), n);
  }
  if (!st) st = api->GetTensorElementType(info, type);
  api->ReleaseTensorTypeAndShapeInfo(info);
  return st;
}

// An input's data. GetTensorData (const) is newer than API 18; GetTensorMutableData serves every version and the
// kernels only read through the pointer.
inline OrtStatus* tensor_data(const OrtApi* api, const OrtValue* v, const void** out) {
  void* p = nullptr;
  OrtStatus* st = api->GetTensorMutableData(const_cast<OrtValue*>(v), &p);
  if (st) return st;
  *out = p;
  return nullptr;
}

}  // namespace dsr_ort
