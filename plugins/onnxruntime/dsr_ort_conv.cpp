// ONNX Runtime adapter of dsr::SpikeQLinearConv: com.microsoft.QLinearConv (channels_last=1) on spike codes, run
// by the event-driven core (core/dsr_spike_conv.h). Same inputs and attributes as that op:
//
//   x [N, H, W, C] uint8, x_scale float32, x_zero_point uint8, w [M, C, KH, KW] int8, w_scale float32 (scalar or
//   [M]), w_zero_point int8 (zeros), y_scale float32, y_zero_point uint8, B int32 [M] (optional)
//   -> y [N, OH, OW, M] uint8
//   attrs channels_last (1), group (1), kernel_shape, strides, pads [top, left, bottom, right], dilations, auto_pad
//   (NOTSET or absent)
//
// Anything else is refused with one message naming what is supported (the exporter writes this op only where it
// holds; elsewhere the model keeps QLinearConv). The weights are re-laid once and kept with the kernel; each call
// compares them with the input (a weight that is a graph input, or changes, is re-laid: never a stale result).
#include "dsr_ort_conv.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "dsr_ort_tensor.h"
#include "dsr_spike_conv.h"

namespace dsr_ort {
namespace {

const OrtApi* g_api = nullptr;

#define DSR_CONV_TRY(expr)           \
  do {                               \
    OrtStatus* _st = (expr);         \
    if (_st != nullptr) return _st;  \
  } while (0)

constexpr const char* kName = "SpikeQLinearConv";

OrtStatus* fail(const std::string& msg) {
  return g_api->CreateStatus(ORT_INVALID_ARGUMENT, (std::string(kName) + ": " + msg).c_str());
}

struct Prepared {
  std::vector<int8_t> source;  // the weight codes it was built from
  std::vector<int64_t> dims;
  dsr::SpikeConvWeights packed;
};

struct ConvKernel {
  std::vector<int64_t> kernel_shape, strides, pads, dilations;
  std::mutex mu;
  std::shared_ptr<const Prepared> prepared;
};

OrtStatus* ints_attr(const OrtKernelInfo* info, const char* name, std::vector<int64_t>* out) {
  size_t n = 0;
  OrtStatus* st = g_api->KernelInfoGetAttributeArray_int64(info, name, nullptr, &n);
  if (st != nullptr) {  // absent
    g_api->ReleaseStatus(st);
    out->clear();
    return nullptr;
  }
  out->resize(n);
  if (n == 0) return nullptr;
  return g_api->KernelInfoGetAttributeArray_int64(info, name, out->data(), &n);
}

OrtStatus* int_attr(const OrtKernelInfo* info, const char* name, int64_t fallback, int64_t* out) {
  OrtStatus* st = g_api->KernelInfoGetAttribute_int64(info, name, out);
  if (st != nullptr) {
    g_api->ReleaseStatus(st);
    *out = fallback;
  }
  return nullptr;
}

OrtStatus* create(const OrtKernelInfo* info, void** out) {
  int64_t channels_last = 0, group = 1;
  DSR_CONV_TRY(int_attr(info, "channels_last", 0, &channels_last));
  DSR_CONV_TRY(int_attr(info, "group", 1, &group));
  if (channels_last != 1) return fail("needs channels_last=1 (x [N, H, W, C])");
  if (group != 1) return fail("supports group 1 only, got " + std::to_string(group));
  size_t n = 0;
  OrtStatus* st = g_api->KernelInfoGetAttribute_string(info, "auto_pad", nullptr, &n);
  if (st != nullptr) {
    g_api->ReleaseStatus(st);
  } else if (n > 1) {
    std::string pad(n, '\0');
    DSR_CONV_TRY(g_api->KernelInfoGetAttribute_string(info, "auto_pad", &pad[0], &n));
    pad.resize(std::strlen(pad.c_str()));
    if (pad != "NOTSET") return fail("supports explicit pads only (auto_pad NOTSET), got auto_pad " + pad);
  }
  auto k = std::make_unique<ConvKernel>();
  DSR_CONV_TRY(ints_attr(info, "kernel_shape", &k->kernel_shape));
  DSR_CONV_TRY(ints_attr(info, "strides", &k->strides));
  DSR_CONV_TRY(ints_attr(info, "pads", &k->pads));
  DSR_CONV_TRY(ints_attr(info, "dilations", &k->dilations));
  *out = k.release();
  return nullptr;
}

struct Tensor {
  const void* data = nullptr;
  std::vector<int64_t> dims;
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  int64_t size() const {
    int64_t s = 1;
    for (int64_t d : dims) s *= d;
    return s;
  }
};

OrtStatus* input(OrtKernelContext* ctx, size_t i, Tensor* t, bool* present = nullptr) {
  const OrtValue* v = nullptr;
  DSR_CONV_TRY(g_api->KernelContext_GetInput(ctx, i, &v));
  if (present) *present = v != nullptr;
  if (v == nullptr) return present ? nullptr : fail("input " + std::to_string(i) + " is missing");
  DSR_CONV_TRY(tensor_shape(g_api, v, &t->dims, &t->type));
  return tensor_data(g_api, v, &t->data);
}

// The attribute `v` (absent: `n` copies of `fallback`), checked to hold `n` values.
OrtStatus* geometry(const std::vector<int64_t>& v, size_t n, int64_t fallback, const char* name,
                    std::vector<int64_t>* out) {
  if (v.empty()) {
    out->assign(n, fallback);
    return nullptr;
  }
  if (v.size() != n) return fail(std::string(name) + " must hold " + std::to_string(n) + " values");
  *out = v;
  return nullptr;
}

// The scalars and the weights' shape, checked: per tensor x / y quantisation, per tensor or per channel weights with
// zero point 0.
OrtStatus* check_inputs(const Tensor* t, bool has_bias) {
  if (t[0].type != ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 || t[0].dims.size() != 4)
    return fail("x must be uint8 codes [N, H, W, C]");
  if (t[3].type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8 || t[3].dims.size() != 4)
    return fail("w must be int8 codes [M, C, KH, KW]");
  const int64_t M = t[3].dims[0];
  for (size_t i : {size_t(1), size_t(6)})
    if (t[i].type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT || t[i].size() != 1)
      return fail("x_scale and y_scale must be float32 scalars");
  for (size_t i : {size_t(2), size_t(7)})
    if (t[i].type != ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 || t[i].size() != 1)
      return fail("x_zero_point and y_zero_point must be uint8 scalars");
  if (t[4].type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT || (t[4].size() != 1 && t[4].size() != M))
    return fail("w_scale must be float32, one value or one per output channel");
  if (t[5].type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8 || (t[5].size() != 1 && t[5].size() != M))
    return fail("w_zero_point must be int8, one value or one per output channel");
  const int8_t* wz = static_cast<const int8_t*>(t[5].data);
  for (int64_t i = 0; i < t[5].size(); ++i)
    if (wz[i] != 0) return fail("supports symmetric weights only (w_zero_point 0)");
  if (has_bias && (t[8].type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 || t[8].size() != M))
    return fail("B must be int32 with one value per output channel");
  // The kernel addresses a tile's weight rows with int32 offsets: KH * KW * C rows of 64.
  if (t[3].dims[1] * t[3].dims[2] * t[3].dims[3] > (int64_t(1) << 31) / 64 - 1)
    return fail("w is too large (KH * KW * C must stay below 2^25)");
  if (t[0].dims[3] != t[3].dims[1])
    return fail("x has " + std::to_string(t[0].dims[3]) + " channels but w takes " + std::to_string(t[3].dims[1]));
  return nullptr;
}

OrtStatus* shape(const ConvKernel& k, const Tensor& x, const Tensor& w, dsr::SpikeConvShape* s) {
  std::vector<int64_t> ks, st, pd, dl;
  DSR_CONV_TRY(geometry(k.kernel_shape, 2, 0, "kernel_shape", &ks));
  if (!k.kernel_shape.empty() && (ks[0] != w.dims[2] || ks[1] != w.dims[3]))
    return fail("kernel_shape does not match w");
  DSR_CONV_TRY(geometry(k.strides, 2, 1, "strides", &st));
  DSR_CONV_TRY(geometry(k.pads, 4, 0, "pads", &pd));
  DSR_CONV_TRY(geometry(k.dilations, 2, 1, "dilations", &dl));
  for (int64_t v : st)
    if (v < 1) return fail("strides must be >= 1");
  for (int64_t v : dl)
    if (v < 1) return fail("dilations must be >= 1");
  for (int64_t v : pd)
    if (v < 0) return fail("pads must be >= 0");
  *s = dsr::SpikeConvShape{x.dims[0], x.dims[1], x.dims[2], x.dims[3], w.dims[0], w.dims[2], w.dims[3], 0, 0,
                           st[0], st[1], pd[0], pd[1], dl[0], dl[1]};
  const int64_t eh = (s->KH - 1) * s->dil_h + 1, ew = (s->KW - 1) * s->dil_w + 1;
  const int64_t hp = s->H + pd[0] + pd[2], wp = s->W + pd[1] + pd[3];
  if (hp < eh || wp < ew) return fail("the kernel is larger than the padded input");
  s->OH = (hp - eh) / s->stride_h + 1;
  s->OW = (wp - ew) / s->stride_w + 1;
  return nullptr;
}

std::shared_ptr<const Prepared> weights(ConvKernel& k, const Tensor& w) {
  const auto* codes = static_cast<const int8_t*>(w.data);
  const size_t n = static_cast<size_t>(w.size());
  std::lock_guard<std::mutex> lock(k.mu);
  if (k.prepared && k.prepared->dims == w.dims && std::memcmp(k.prepared->source.data(), codes, n) == 0)
    return k.prepared;
  auto p = std::make_shared<Prepared>();
  p->source.assign(codes, codes + n);
  p->dims = w.dims;
  dsr::spike_conv_pack(codes, w.dims[0], w.dims[1], w.dims[2], w.dims[3], &p->packed);
  k.prepared = p;
  return p;
}

struct Work {
  const dsr::SpikeConvArgs* args;
  int64_t rows, rows_per_task;
};

void run_rows(void* user, size_t task) {
  const auto* w = static_cast<const Work*>(user);
  const int64_t b = static_cast<int64_t>(task) * w->rows_per_task;
  dsr::spike_conv_rows(*w->args, b, std::min(w->rows, b + w->rows_per_task));
}

OrtStatus* compute(void* kernel, OrtKernelContext* ctx) {
  ConvKernel& k = *static_cast<ConvKernel*>(kernel);
  Tensor t[9];
  for (size_t i = 0; i < 8; ++i) DSR_CONV_TRY(input(ctx, i, &t[i]));
  bool has_bias = false;
  size_t count = 0;
  DSR_CONV_TRY(g_api->KernelContext_GetInputCount(ctx, &count));
  if (count > 8) DSR_CONV_TRY(input(ctx, 8, &t[8], &has_bias));
  DSR_CONV_TRY(check_inputs(t, has_bias));
  dsr::SpikeConvShape s;
  DSR_CONV_TRY(shape(k, t[0], t[3], &s));
  const int64_t out_dims[4] = {s.N, s.OH, s.OW, s.M};
  OrtValue* y = nullptr;
  DSR_CONV_TRY(g_api->KernelContext_GetOutput(ctx, 0, out_dims, 4, &y));
  void* yd = nullptr;
  DSR_CONV_TRY(g_api->GetTensorMutableData(y, &yd));
  if (s.N * s.OH * s.OW * s.M == 0) return nullptr;
  const auto prepared = weights(k, t[3]);
  const int64_t Mpad = prepared->packed.Mpad;
  // Per output channel, as ONNX Runtime's QLinearConv: fl32(fl32(x_scale * w_scale[m]) / y_scale).
  const float xs = *static_cast<const float*>(t[1].data), ys = *static_cast<const float*>(t[6].data);
  const auto* ws = static_cast<const float*>(t[4].data);
  std::vector<float> scale(static_cast<size_t>(Mpad), 0.f);
  std::vector<int32_t> bias(static_cast<size_t>(Mpad), 0);
  for (int64_t m = 0; m < s.M; ++m) {
    const float xw = xs * ws[t[4].size() == 1 ? 0 : m];
    scale[static_cast<size_t>(m)] = xw / ys;
    if (has_bias) bias[static_cast<size_t>(m)] = static_cast<const int32_t*>(t[8].data)[m];
  }
  const dsr::SpikeConvArgs args{s, static_cast<const uint8_t*>(t[0].data), *static_cast<const uint8_t*>(t[2].data),
                                &prepared->packed, bias.data(), scale.data(),
                                *static_cast<const uint8_t*>(t[7].data), static_cast<uint8_t*>(yd)};
  const int64_t rows = s.N * s.OH;
  // A few dozen tasks for ONNX Runtime's intra-op pool (SessionOptions.intra_op_num_threads).
  Work work{&args, rows, std::max<int64_t>(1, rows / 64)};
  const size_t tasks = static_cast<size_t>((rows + work.rows_per_task - 1) / work.rows_per_task);
  if (tasks == 1) {
    dsr::spike_conv_rows(args, 0, rows);
    return nullptr;
  }
  return g_api->KernelContext_ParallelFor(ctx, &run_rows, tasks, 0, &work);
}

ONNXTensorElementDataType input_type(size_t i) {
  switch (i) {
    case 0: case 2: case 7: return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
    case 3: case 5: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8;
    case 8: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
    default: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
}

struct ConvOp : OrtCustomOp {
  ConvOp() {
    std::memset(static_cast<OrtCustomOp*>(this), 0, sizeof(OrtCustomOp));
    version = DSR_ORT_API_VERSION;
    CreateKernel = [](const OrtCustomOp*, const OrtApi*, const OrtKernelInfo*) -> void* { return nullptr; };
    GetName = [](const OrtCustomOp*) -> const char* { return kName; };
    GetExecutionProviderType = [](const OrtCustomOp*) -> const char* { return "CPUExecutionProvider"; };
    GetInputType = [](const OrtCustomOp*, size_t i) { return input_type(i); };
    GetInputTypeCount = [](const OrtCustomOp*) -> size_t { return 9; };
    GetOutputType = [](const OrtCustomOp*, size_t) { return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8; };
    GetOutputTypeCount = [](const OrtCustomOp*) -> size_t { return 1; };
    KernelCompute = [](void*, OrtKernelContext*) {};
    KernelDestroy = [](void* k) { delete static_cast<ConvKernel*>(k); };
    GetInputCharacteristic = [](const OrtCustomOp*, size_t i) {
      return i == 8 ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
    };
    GetOutputCharacteristic = [](const OrtCustomOp*, size_t) { return INPUT_OUTPUT_REQUIRED; };
    GetInputMemoryType = [](const OrtCustomOp*, size_t) { return OrtMemTypeDefault; };
    GetVariadicInputMinArity = [](const OrtCustomOp*) { return 1; };
    GetVariadicInputHomogeneity = [](const OrtCustomOp*) { return 1; };
    GetVariadicOutputMinArity = [](const OrtCustomOp*) { return 1; };
    GetVariadicOutputHomogeneity = [](const OrtCustomOp*) { return 1; };
    CreateKernelV2 = [](const OrtCustomOp*, const OrtApi*, const OrtKernelInfo* info, void** kernel) {
      return create(info, kernel);
    };
    KernelComputeV2 = [](void* k, OrtKernelContext* ctx) { return compute(k, ctx); };
    InferOutputShapeFn = nullptr;
    GetStartVersion = [](const OrtCustomOp*) { return 1; };
    GetEndVersion = [](const OrtCustomOp*) { return 2147483647; };
    GetMayInplace = [](int** in, int** out) -> size_t { *in = nullptr; *out = nullptr; return 0; };
    ReleaseMayInplace = [](int*, int*) {};
    GetAliasMap = [](int** in, int** out) -> size_t { *in = nullptr; *out = nullptr; return 0; };
    ReleaseAliasMap = [](int*, int*) {};
  }
};

}  // namespace

const OrtCustomOp* spike_conv_op(const OrtApi* api) {
  g_api = api;
  static const ConvOp op;
  return &op;
}

}  // namespace dsr_ort
