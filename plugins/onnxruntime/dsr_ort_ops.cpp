// ONNX Runtime adapter: custom ops of domain "dsr" on the spike-loop core, through the C API only.
//
//   DSRIFSpike  (x [T, ...]) -> y [T, ...]          attrs v_threshold, alpha
//   DSRLIFSpike (x [T, ...]) -> y [T, ...]          attrs v_threshold, alpha, tau, delta_t, decay, gain
//   DSRIFStep   (x_t, v) -> (y_t, v_new)             as DSRIFSpike, one time step, v the float32 membrane
//   DSRLIFStep  (x_t, v) -> (y_t, v_new)             as DSRLIFSpike
//   SJIFSpike / SJLIFSpike / SJPLIFSpike (x [T, ...]) -> y [T, ...]  SpikingJelly's IF / LIF / PLIF (dsr_sj.h),
//               attrs v_threshold, v_reset, hard_reset (int); LIF / PLIF also leak (tau / sigmoid(w)), decay_input
//               (int); SJIFStep / SJLIFStep / SJPLIFStep (x_t, v) -> (y_t, v_new) one step. CPU EP only.
//   SpikeQLinearConv  com.microsoft.QLinearConv (channels_last=1) on spike codes, event-driven (dsr_ort_conv.cpp)
//   DSRIFSpikeQ / DSRLIFSpikeQ (x codes [T, ...], x_scale float32, x_zero_point) -> spike codes {0, 1} [T, ...]
//               codes uint8 or int8 (x, x_zero_point and the output of one type); the float op on the exact
//               DequantizeLinear of x (dsr_spike.h, QuantArgs); CPU and CUDA EP
//
// x / y float32 or float16 (the membrane v is float32 in both cases, as the reference computes float16 inputs).
// The LIF decay / gain attributes are fl32(exp(-dt/tau)) and fl32(1 - exp(-dt/tau)) as the exporter
// writes them (float32 tau / delta_t could not reproduce the double exp); when missing they are computed from tau
// and delta_t in double. The output spike value is vth / fl32(delta_t), as the reference (on every device), on both
// EPs. plugin_namespace / plugin_version (for TensorRT's parser) are ignored here.
//
// Load with SessionOptions.register_custom_ops_library(path). The C ABI comes from dsr_ort_abi.h (no ONNX Runtime
// SDK needed): the library asks ONNX Runtime for OrtApi DSR_ORT_API_VERSION (18, ONNX Runtime >= 1.18), calls only
// entries that version has, and fails registration with one clear message on an older ONNX Runtime.
#include "dsr_ort_abi.h"

#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "dsr_ort_conv.h"
#include "dsr_ort_tensor.h"
#include "dsr_sj.h"
#include "dsr_spike.h"
#if defined(DSR_WITH_CUDA)
#include "dsr_spike_cuda.h"
#endif

namespace {

const OrtApi* g_api = nullptr;

// Turns a failed OrtStatus into an early return of that status.
#define DSR_ORT_TRY(expr)                \
  do {                                   \
    OrtStatus* _st = (expr);             \
    if (_st != nullptr) return _st;      \
  } while (0)

OrtStatus* error(const std::string& msg) { return g_api->CreateStatus(ORT_INVALID_ARGUMENT, msg.c_str()); }

enum class Ep { Cpu, Cuda };

struct OpSpec {
  const char* name;
  dsr::Neuron neuron;
  bool step;  // (x_t, v) -> (y_t, v_new)
  ONNXTensorElementDataType type;  // of x and y (the membrane is always float32)
  // DSRIFSpikeQ / DSRLIFSpikeQ: (x codes [T, ...] of `type` (uint8 / int8), x_scale float, x_zero_point of `type`)
  // -> spike codes {0, 1} of `type`: the float op on DequantizeLinear(x), its spikes as codes (scale = the spike
  // value, zero point 0).
  bool quantized = false;
  int sj = 0;  // SpikingJelly: 1 + dsr::SJCharge (IF / LIF / PLIF); 0 for the DSR ops
};

struct Kernel {
  OpSpec spec;
  Ep ep;
  dsr::SpikeParams<float> params;
  dsr::SJArgs sj{};  // the SpikingJelly layer's constants (the pointers and sizes are set per call)
};

OrtStatus* float_attr(const OrtKernelInfo* info, const char* name, float* out, bool* present) {
  OrtStatus* st = g_api->KernelInfoGetAttribute_float(info, name, out);
  if (st == nullptr) {
    *present = true;
    return nullptr;
  }
  g_api->ReleaseStatus(st);
  *present = false;
  return nullptr;
}

OrtStatus* int_attr(const OrtKernelInfo* info, const char* name, int64_t* out, bool* present) {
  OrtStatus* st = g_api->KernelInfoGetAttribute_int64(info, name, out);
  *present = st == nullptr;
  if (st != nullptr) g_api->ReleaseStatus(st);
  return nullptr;
}

OrtStatus* create_sj_kernel(const OpSpec& spec, Ep ep, const OrtKernelInfo* info, void** out) {
  float vth = 0.f, v_reset = 0.f, leak = 1.f;
  int64_t hard = 0, decay_input = 1;
  bool has_vth, has_reset, has_hard, has_leak = false, has_decay = false;
  DSR_ORT_TRY(float_attr(info, "v_threshold", &vth, &has_vth));
  DSR_ORT_TRY(float_attr(info, "v_reset", &v_reset, &has_reset));
  DSR_ORT_TRY(int_attr(info, "hard_reset", &hard, &has_hard));
  const auto charge = static_cast<dsr::SJCharge>(spec.sj - 1);
  if (charge != dsr::SJCharge::IF) {
    DSR_ORT_TRY(float_attr(info, "leak", &leak, &has_leak));
    DSR_ORT_TRY(int_attr(info, "decay_input", &decay_input, &has_decay));
    if (!has_leak || !has_decay) return error(std::string(spec.name) + ": attributes leak and decay_input are required");
  }
  if (!has_vth || !has_reset || !has_hard)
    return error(std::string(spec.name) + ": attributes v_threshold, v_reset and hard_reset are required");
  auto k = std::make_unique<Kernel>();
  k->spec = spec;
  k->ep = ep;
  k->sj = dsr::SJArgs{charge, decay_input ? 1 : 0, hard ? 1 : 0, vth, v_reset, leak, dsr::DType::F32,
                      nullptr, nullptr, nullptr, nullptr, 0, 0};
  *out = k.release();
  return nullptr;
}

OrtStatus* create_kernel(const OpSpec& spec, Ep ep, const OrtKernelInfo* info, void** out) {
  if (spec.sj) return create_sj_kernel(spec, ep, info, out);
  float vth = 0.f, alpha = 0.f, tau = 0.f, dt = 0.f, decay = 0.f, gain = 0.f;
  bool has_vth, has_alpha, has_tau = false, has_dt = false, has_decay = false, has_gain = false;
  DSR_ORT_TRY(float_attr(info, "v_threshold", &vth, &has_vth));
  DSR_ORT_TRY(float_attr(info, "alpha", &alpha, &has_alpha));
  if (!has_vth || !has_alpha) return error(std::string(spec.name) + ": attributes v_threshold and alpha are required");
  if (spec.neuron == dsr::Neuron::LIF) {
    DSR_ORT_TRY(float_attr(info, "tau", &tau, &has_tau));
    DSR_ORT_TRY(float_attr(info, "delta_t", &dt, &has_dt));
    DSR_ORT_TRY(float_attr(info, "decay", &decay, &has_decay));
    DSR_ORT_TRY(float_attr(info, "gain", &gain, &has_gain));
    if (!has_dt) return error(std::string(spec.name) + ": attribute delta_t is required");
    if (!(has_decay && has_gain) && !has_tau)
      return error(std::string(spec.name) + ": attribute tau is required when decay/gain are absent");
  }
  const double decay_d = decay, gain_d = gain;
  const bool given = has_decay && has_gain;
  auto k = std::make_unique<Kernel>();
  k->spec = spec;
  k->ep = ep;
  k->params = dsr::make_params<float>(spec.neuron, vth, alpha, has_tau ? tau : 1.0, has_dt ? dt : 1.0,
                                      given ? &decay_d : nullptr,
                                      given ? &gain_d : nullptr);
  *out = k.release();
  return nullptr;
}

struct Shape {
  std::vector<int64_t> dims;
  ONNXTensorElementDataType type;
};

OrtStatus* shape_of(const OrtValue* v, Shape* s) { return dsr_ort::tensor_shape(g_api, v, &s->dims, &s->type); }

std::string dims_str(const std::vector<int64_t>& d) {
  std::string s = "[";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + "]";
}

OrtStatus* input_data(const OrtValue* v, const void** out) { return dsr_ort::tensor_data(g_api, v, out); }

struct ParallelCtx {
  const dsr::ForwardArgs* args;
};

struct SJParallelCtx {
  const dsr::SJArgs* args;
};

void run_sj_block(void* user, size_t block) {
  const auto* c = static_cast<const SJParallelCtx*>(user);
  const int64_t b = static_cast<int64_t>(block) * dsr::kCpuBlock;
  dsr::sj_cpu_forward_range(*c->args, b, std::min(c->args->N, b + dsr::kCpuBlock));
}

void run_block(void* user, size_t block) {
  const auto* c = static_cast<const ParallelCtx*>(user);
  const int64_t b = static_cast<int64_t>(block) * dsr::kCpuBlock;
  const int64_t e = std::min(c->args->N, b + dsr::kCpuBlock);
  dsr::cpu_forward_range(*c->args, b, e);
}

// A CUDA EP kernel: the launch on the stream ONNX Runtime gives the kernel (float or quantised arguments).
template <typename Args>
OrtStatus* launch_cuda(OrtKernelContext* ctx, const Args& args) {
#if defined(DSR_WITH_CUDA)
  void* stream = nullptr;
  DSR_ORT_TRY(g_api->KernelContext_GetGPUComputeStream(ctx, &stream));
  int err = 0;
  if constexpr (std::is_same_v<Args, dsr::QuantArgs>)
    err = dsr::cuda::launch_forward_quantized(args, stream);
  else
    err = dsr::cuda::launch_forward(args, stream);
  if (err != 0) return g_api->CreateStatus(ORT_EP_FAIL, dsr::cuda::error_string(err));
  return nullptr;
#else
  (void)ctx;
  (void)args;
  return g_api->CreateStatus(ORT_NOT_IMPLEMENTED, "built without CUDA");
#endif
}

// ---- the quantised ops: uint8 / int8 current codes in, spike codes out (the core's quantised loop) -------------

struct QuantCtx {
  const dsr::QuantArgs* args;
};

void run_quantized_block(void* user, size_t block) {
  const auto* c = static_cast<const QuantCtx*>(user);
  const int64_t b = static_cast<int64_t>(block) * dsr::kCpuBlock;
  dsr::cpu_forward_quantized_range(*c->args, b, std::min(c->args->N, b + dsr::kCpuBlock));
}

OrtStatus* scalar_input(OrtKernelContext* ctx, size_t i, ONNXTensorElementDataType type, const char* op,
                        const void** data) {
  const OrtValue* v = nullptr;
  DSR_ORT_TRY(g_api->KernelContext_GetInput(ctx, i, &v));
  Shape s;
  DSR_ORT_TRY(shape_of(v, &s));
  int64_t n = 1;
  for (int64_t d : s.dims) n *= d;
  if (s.type != type || n != 1)
    return error(std::string(op) + ": x_scale / x_zero_point must be scalars (one value per tensor)");
  return input_data(v, data);
}

OrtStatus* compute_quantized(const Kernel& k, OrtKernelContext* ctx) {
  const OrtValue* x = nullptr;
  DSR_ORT_TRY(g_api->KernelContext_GetInput(ctx, 0, &x));
  Shape xs;
  DSR_ORT_TRY(shape_of(x, &xs));
  if (xs.type != k.spec.type)
    return error(std::string(k.spec.name) + ": x must be uint8 or int8 codes, as its zero point");
  if (xs.dims.empty()) return error(std::string(k.spec.name) + ": x must have a leading time dimension [T, ...]");
  const void *scale = nullptr, *zp = nullptr, *xd = nullptr;
  // Scale and zero point stay where the EP keeps inputs (device memory on the CUDA EP): the kernel reads them.
  DSR_ORT_TRY(scalar_input(ctx, 1, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, k.spec.name, &scale));
  DSR_ORT_TRY(scalar_input(ctx, 2, k.spec.type, k.spec.name, &zp));
  DSR_ORT_TRY(input_data(x, &xd));
  int64_t N = 1;
  for (size_t i = 1; i < xs.dims.size(); ++i) N *= xs.dims[i];
  OrtValue* y = nullptr;
  DSR_ORT_TRY(g_api->KernelContext_GetOutput(ctx, 0, xs.dims.data(), xs.dims.size(), &y));
  void* yd = nullptr;
  DSR_ORT_TRY(g_api->GetTensorMutableData(y, &yd));
  if (N == 0 || xs.dims[0] == 0) return nullptr;
  const dsr::Code code = k.spec.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8 ? dsr::Code::I8 : dsr::Code::U8;
  const dsr::QuantArgs args{code, xd, yd, static_cast<const float*>(scale), zp, xs.dims[0], N, &k.params};
  if (k.ep == Ep::Cuda) return launch_cuda(ctx, args);
  const size_t blocks = static_cast<size_t>((N + dsr::kCpuBlock - 1) / dsr::kCpuBlock);
  if (blocks == 1) {
    dsr::cpu_forward_quantized_range(args, 0, N);
    return nullptr;
  }
  QuantCtx qc{&args};
  return g_api->KernelContext_ParallelFor(ctx, &run_quantized_block, blocks, 0, &qc);
}

OrtStatus* compute(void* op_kernel, OrtKernelContext* ctx) {
  const Kernel& k = *static_cast<const Kernel*>(op_kernel);
  if (k.spec.quantized) return compute_quantized(k, ctx);
  const OrtValue* x = nullptr;
  DSR_ORT_TRY(g_api->KernelContext_GetInput(ctx, 0, &x));
  Shape xs;
  DSR_ORT_TRY(shape_of(x, &xs));
  if (xs.type != k.spec.type) return error(std::string(k.spec.name) + ": unexpected input element type");
  int64_t T, N = 1;
  const void* v_in = nullptr;
  void* v_out = nullptr;
  std::vector<int64_t> step_dims;
  if (k.spec.step) {
    T = 1;
    step_dims = xs.dims;
    for (int64_t d : xs.dims) N *= d;
    const OrtValue* v = nullptr;
    DSR_ORT_TRY(g_api->KernelContext_GetInput(ctx, 1, &v));
    Shape vs;
    DSR_ORT_TRY(shape_of(v, &vs));
    if (vs.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
      return error(std::string(k.spec.name) + ": the membrane v must be float32");
    if (vs.dims != xs.dims)
      return error(std::string(k.spec.name) + ": v has shape " + dims_str(vs.dims) + " but x_t has " +
                   dims_str(xs.dims));
    DSR_ORT_TRY(input_data(v, &v_in));
  } else {
    if (xs.dims.empty()) return error(std::string(k.spec.name) + ": x must have a leading time dimension [T, ...]");
    T = xs.dims[0];
    for (size_t i = 1; i < xs.dims.size(); ++i) N *= xs.dims[i];
  }
  const void* xd = nullptr;
  DSR_ORT_TRY(input_data(x, &xd));
  OrtValue* y = nullptr;
  DSR_ORT_TRY(g_api->KernelContext_GetOutput(ctx, 0, xs.dims.data(), xs.dims.size(), &y));
  void* yd = nullptr;
  DSR_ORT_TRY(g_api->GetTensorMutableData(y, &yd));
  if (k.spec.step) {
    OrtValue* vn = nullptr;
    DSR_ORT_TRY(g_api->KernelContext_GetOutput(ctx, 1, step_dims.data(), step_dims.size(), &vn));
    DSR_ORT_TRY(g_api->GetTensorMutableData(vn, &v_out));
  }
  const dsr::DType dtype = k.spec.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 ? dsr::DType::F16 : dsr::DType::F32;
  if (k.spec.sj) {
    dsr::SJArgs sa = k.sj;
    sa.dtype = dtype;
    sa.x = xd, sa.y = yd, sa.v_in = v_in, sa.v_out = v_out, sa.T = T, sa.N = N;
    if (N == 0) return nullptr;
    const size_t blocks = static_cast<size_t>((N + dsr::kCpuBlock - 1) / dsr::kCpuBlock);
    if (blocks == 1 || T * N < (int64_t(1) << 16)) {
      dsr::sj_cpu_forward_range(sa, 0, N);
      return nullptr;
    }
    SJParallelCtx sc{&sa};
    return g_api->KernelContext_ParallelFor(ctx, &run_sj_block, blocks, 0, &sc);
  }
  dsr::ForwardArgs args{dtype, xd, yd, v_in, v_out, T, N, &k.params, nullptr};
  if (N == 0) return nullptr;
  if (k.ep == Ep::Cuda) return launch_cuda(ctx, args);
  const size_t blocks = static_cast<size_t>((N + dsr::kCpuBlock - 1) / dsr::kCpuBlock);
  if (blocks == 1 || T * N < (int64_t(1) << 16)) {
    dsr::cpu_forward_range(args, 0, N);
    return nullptr;
  }
  ParallelCtx pc{&args};
  // ORT's intra-op thread pool (follows SessionOptions.intra_op_num_threads).
  return g_api->KernelContext_ParallelFor(ctx, &run_block, blocks, 0, &pc);
}

// ---- the OrtCustomOp tables ----------------------------------------------------------------------------------

struct DsrOp : OrtCustomOp {
  OpSpec spec;
  Ep ep;
};

const DsrOp& self(const OrtCustomOp* op) { return *static_cast<const DsrOp*>(op); }

void init_op(DsrOp* op, const OpSpec& spec, Ep ep) {
  std::memset(static_cast<OrtCustomOp*>(op), 0, sizeof(OrtCustomOp));
  op->spec = spec;
  op->ep = ep;
  op->version = DSR_ORT_API_VERSION;
  op->CreateKernel = [](const OrtCustomOp*, const OrtApi*, const OrtKernelInfo*) -> void* { return nullptr; };
  op->GetName = [](const OrtCustomOp* o) -> const char* { return self(o).spec.name; };
  op->GetExecutionProviderType = [](const OrtCustomOp* o) -> const char* {
#if defined(DSR_ORT_CUDA_KERNELS_ON_CPU_EP)
    // Tests only (tests/test_cuda_emulation.py): the CUDA kernels, over the host-emulated core, serve the CPU EP.
    (void)o;
    return "CPUExecutionProvider";
#else
    return self(o).ep == Ep::Cuda ? "CUDAExecutionProvider" : "CPUExecutionProvider";
#endif
  };
  op->GetInputType = [](const OrtCustomOp* o, size_t i) {
    if (self(o).spec.quantized && i == 2) return self(o).spec.type;  // x_zero_point: the codes' type
    return i == 0 ? self(o).spec.type : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  };
  op->GetInputTypeCount = [](const OrtCustomOp* o) -> size_t {
    return self(o).spec.quantized ? 3 : self(o).spec.step ? 2 : 1;
  };
  op->GetOutputType = [](const OrtCustomOp* o, size_t i) {
    return i == 0 ? self(o).spec.type : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  };
  op->GetOutputTypeCount = [](const OrtCustomOp* o) -> size_t { return self(o).spec.step ? 2 : 1; };
  op->KernelCompute = [](void*, OrtKernelContext*) {};
  op->KernelDestroy = [](void* k) { delete static_cast<Kernel*>(k); };
  op->GetInputCharacteristic = [](const OrtCustomOp*, size_t) { return INPUT_OUTPUT_REQUIRED; };
  op->GetOutputCharacteristic = [](const OrtCustomOp*, size_t) { return INPUT_OUTPUT_REQUIRED; };
  op->GetInputMemoryType = [](const OrtCustomOp*, size_t) { return OrtMemTypeDefault; };
  op->GetVariadicInputMinArity = [](const OrtCustomOp*) { return 1; };
  op->GetVariadicInputHomogeneity = [](const OrtCustomOp*) { return 1; };
  op->GetVariadicOutputMinArity = [](const OrtCustomOp*) { return 1; };
  op->GetVariadicOutputHomogeneity = [](const OrtCustomOp*) { return 1; };
  op->CreateKernelV2 = [](const OrtCustomOp* o, const OrtApi*, const OrtKernelInfo* info, void** kernel) {
    return create_kernel(self(o).spec, self(o).ep, info, kernel);
  };
  op->KernelComputeV2 = [](void* k, OrtKernelContext* ctx) { return compute(k, ctx); };
  op->InferOutputShapeFn = nullptr;  // ORT keeps the ONNX-level shape inference (none for a custom domain)
  op->GetStartVersion = [](const OrtCustomOp*) { return 1; };
  op->GetEndVersion = [](const OrtCustomOp*) { return 2147483647; };
  op->GetMayInplace = [](int** in, int** out) -> size_t { *in = nullptr; *out = nullptr; return 0; };
  op->ReleaseMayInplace = [](int*, int*) {};
  op->GetAliasMap = [](int** in, int** out) -> size_t { *in = nullptr; *out = nullptr; return 0; };
  op->ReleaseAliasMap = [](int*, int*) {};
}

// One OrtCustomOp per (op, element type): ORT merges same-named ops of a domain into one schema with a type
// constraint over their types.
constexpr ONNXTensorElementDataType kF32 = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
constexpr ONNXTensorElementDataType kF16 = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
constexpr ONNXTensorElementDataType kU8 = ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
constexpr ONNXTensorElementDataType kI8 = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8;
const OpSpec kSpecs[] = {
    {"DSRIFSpike", dsr::Neuron::IF, false, kF32},
    {"DSRLIFSpike", dsr::Neuron::LIF, false, kF32},
    {"DSRIFStep", dsr::Neuron::IF, true, kF32},
    {"DSRLIFStep", dsr::Neuron::LIF, true, kF32},
    {"DSRIFSpike", dsr::Neuron::IF, false, kF16},
    {"DSRLIFSpike", dsr::Neuron::LIF, false, kF16},
    {"DSRIFStep", dsr::Neuron::IF, true, kF16},
    {"DSRLIFStep", dsr::Neuron::LIF, true, kF16},
    // The quantised ops: uint8 codes (the default int8 export) and int8 codes (--int8-activations int8).
    {"SJIFSpike", dsr::Neuron::IF, false, kF32, false, 1},
    {"SJLIFSpike", dsr::Neuron::IF, false, kF32, false, 2},
    {"SJPLIFSpike", dsr::Neuron::IF, false, kF32, false, 3},
    {"SJIFStep", dsr::Neuron::IF, true, kF32, false, 1},
    {"SJLIFStep", dsr::Neuron::IF, true, kF32, false, 2},
    {"SJPLIFStep", dsr::Neuron::IF, true, kF32, false, 3},
    {"SJIFSpike", dsr::Neuron::IF, false, kF16, false, 1},
    {"SJLIFSpike", dsr::Neuron::IF, false, kF16, false, 2},
    {"SJPLIFSpike", dsr::Neuron::IF, false, kF16, false, 3},
    {"SJIFStep", dsr::Neuron::IF, true, kF16, false, 1},
    {"SJLIFStep", dsr::Neuron::IF, true, kF16, false, 2},
    {"SJPLIFStep", dsr::Neuron::IF, true, kF16, false, 3},
    {"DSRIFSpikeQ", dsr::Neuron::IF, false, kU8, true},
    {"DSRLIFSpikeQ", dsr::Neuron::LIF, false, kU8, true},
    {"DSRIFSpikeQ", dsr::Neuron::IF, false, kI8, true},
    {"DSRLIFSpikeQ", dsr::Neuron::LIF, false, kI8, true},
};
constexpr size_t kNumSpecs = sizeof(kSpecs) / sizeof(kSpecs[0]);

struct OpTables {
  DsrOp cpu[kNumSpecs];
#if defined(DSR_WITH_CUDA)
  DsrOp cuda[kNumSpecs];
#endif
  OpTables() {
    for (size_t i = 0; i < kNumSpecs; ++i) {
      init_op(&cpu[i], kSpecs[i], Ep::Cpu);
#if defined(DSR_WITH_CUDA)
      init_op(&cuda[i], kSpecs[i], Ep::Cuda);
#endif
    }
  }
};

const OpTables& tables() {
  static const OpTables t;  // lives as long as the library: the sessions keep pointers to these ops
  return t;
}

// Why this ONNX Runtime cannot take the library, as one line.
std::string version_message(const OrtApiBase* api_base) {
  const char* version = api_base && api_base->GetVersionString ? api_base->GetVersionString() : nullptr;
  return std::string("libdsr_ort_ops needs ONNX Runtime >= 1.") + std::to_string(DSR_ORT_API_VERSION) + " (OrtApi " +
         std::to_string(DSR_ORT_API_VERSION) + "), but this ONNX Runtime (" + (version ? version : "version unknown") +
         ") does not provide it";
}

}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus*
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base && api_base->GetApi ? api_base->GetApi(DSR_ORT_API_VERSION) : nullptr;
  if (api == nullptr) {
    // Older than the API version targeted. Report it through the oldest API (CreateStatus is entry 0 of every
    // version); an OrtApiBase that serves no version at all can only be told on stderr, and nothing is registered.
    const std::string msg = version_message(api_base);
    const OrtApi* oldest = api_base && api_base->GetApi ? api_base->GetApi(1) : nullptr;
    if (oldest != nullptr && oldest->CreateStatus != nullptr) return oldest->CreateStatus(ORT_FAIL, msg.c_str());
    std::fprintf(stderr, "%s\n", msg.c_str());
    return nullptr;
  }
  g_api = api;
  OrtCustomOpDomain* domain = nullptr;
  DSR_ORT_TRY(api->CreateCustomOpDomain("dsr", &domain));
  const OpTables& t = tables();
  for (size_t i = 0; i < kNumSpecs; ++i) {
#if !defined(DSR_ORT_CUDA_KERNELS_ON_CPU_EP)
    DSR_ORT_TRY(api->CustomOpDomain_Add(domain, &t.cpu[i]));
#endif
#if defined(DSR_WITH_CUDA)
    if (!kSpecs[i].sj) DSR_ORT_TRY(api->CustomOpDomain_Add(domain, &t.cuda[i]));  // SpikingJelly ops: CPU EP only
#endif
  }
#if !defined(DSR_ORT_CUDA_KERNELS_ON_CPU_EP)
  DSR_ORT_TRY(api->CustomOpDomain_Add(domain, dsr_ort::spike_conv_op(api)));  // event-driven int8 conv: CPU EP
#endif
  // The session options keep the domain; ORT never frees a custom-op domain it was given, so neither do we:
  // a library may be registered into many sessions, each with its own domain object.
  return api->AddCustomOpDomain(options, domain);
}
