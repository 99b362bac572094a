// The part of the ONNX Runtime C ABI that libdsr_ort_ops uses, declared here so the library builds with no SDK.
//
// Written for dsr-deploy from the documented, stable ABI (it is not ONNX Runtime's header):
//
//  * OrtGetApiBase() returns an OrtApiBase {GetApi, GetVersionString}; GetApi(v) returns the function table of API
//    version v, or null when the running ONNX Runtime is older than v. The table only ever grows at the end, so an
//    entry keeps its position (its index, in pointers) in every later version: a library built for version v
//    loads into any ONNX Runtime that serves v.
//  * OrtApi below declares the entries the adapter calls, each at its fixed position, with the unused entries in
//    between as opaque padding. Every entry it declares exists in API 18 (the table of API 18 has 280 entries).
//  * OrtCustomOp below is the layout of API 18 (ONNX Runtime 1.18): the `version` field says which fields follow,
//    and the library sets it to 18, so ONNX Runtime reads no field past ReleaseAliasMap.
//  * The enums are declared with the values the ABI fixes, for the enumerators the adapter uses.
//
// Checked: at compile time below (each declared position), and against an official onnxruntime_c_api.h by
// dsr_ort_abi_check.cpp (every declared entry's position and exact signature, the OrtCustomOp / OrtApiBase layouts and
// the enum values), built whenever ONNXRUNTIME_ROOT is given. See plugins/onnxruntime/README.md.
#ifndef DSR_ORT_ABI_H
#define DSR_ORT_ABI_H

#include <cstddef>
#include <cstdint>

// The API version requested from ONNX Runtime and the OrtCustomOp layout declared here.
#define DSR_ORT_API_VERSION 18
// Number of OrtApi entries in API version 18: every declared entry must sit below it.
#define DSR_ORT_API_ENTRIES_IN_TARGET 280

// Calling convention of the C API: the platform default on Linux and macOS (ONNX Runtime uses __stdcall on Windows
// only, where this adapter is not built).
#if defined(_WIN32)
#error "dsr_ort_abi.h declares the Linux/macOS ABI; build against onnxruntime_c_api.h on Windows"
#endif

// ---- opaque handles (never dereferenced) ---------------------------------------------------------------------
#define DSR_ORT_OPAQUE_TYPES(X) \
  X(OrtStatus)                  \
  X(OrtSessionOptions)          \
  X(OrtCustomOpDomain)          \
  X(OrtKernelInfo)              \
  X(OrtKernelContext)           \
  X(OrtValue)                   \
  X(OrtTensorTypeAndShapeInfo)  \
  X(OrtShapeInferContext)

#define DSR_ORT_DECLARE_OPAQUE(name) \
  struct name;                       \
  typedef struct name name;
DSR_ORT_OPAQUE_TYPES(DSR_ORT_DECLARE_OPAQUE)
#undef DSR_ORT_DECLARE_OPAQUE

typedef OrtStatus* OrtStatusPtr;  // null means success

// ---- enums (C enums: int-sized, the values are part of the ABI) ---------------------------------------------
typedef enum ONNXTensorElementDataType {
  ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED = 0,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT = 1,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 = 2,  // the quantised neuron ops' codes (export --precision int8)
  ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8 = 3,   // ... with --int8-activations int8
  ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 = 6,  // SpikeQLinearConv's bias
  ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 = 10,
} ONNXTensorElementDataType;

typedef enum OrtErrorCode {
  ORT_OK = 0,
  ORT_FAIL = 1,
  ORT_INVALID_ARGUMENT = 2,
  ORT_NOT_IMPLEMENTED = 9,
  ORT_EP_FAIL = 11,
} OrtErrorCode;

typedef enum OrtMemType {
  OrtMemTypeCPUInput = -2,  // (declared for the enum's signedness: ONNX Runtime's has negative values too)
  OrtMemTypeDefault = 0,
} OrtMemType;

typedef enum OrtCustomOpInputOutputCharacteristic {
  INPUT_OUTPUT_REQUIRED = 0,
  INPUT_OUTPUT_OPTIONAL = 1,  // SpikeQLinearConv's bias
} OrtCustomOpInputOutputCharacteristic;

#define DSR_ORT_ENUM_VALUES(X)                                                                         \
  X(ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED) X(ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)                    \
  X(ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8) X(ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8)                         \
  X(ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32) X(INPUT_OUTPUT_OPTIONAL)                                      \
  X(ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16) X(ORT_OK) X(ORT_FAIL) X(ORT_INVALID_ARGUMENT)               \
  X(ORT_NOT_IMPLEMENTED) X(ORT_EP_FAIL) X(OrtMemTypeCPUInput) X(OrtMemTypeDefault) X(INPUT_OUTPUT_REQUIRED)
#define DSR_ORT_ENUM_TYPES(X) \
  X(ONNXTensorElementDataType) X(OrtErrorCode) X(OrtMemType) X(OrtCustomOpInputOutputCharacteristic)

struct OrtApi;
typedef struct OrtApi OrtApi;
struct OrtCustomOp;
typedef struct OrtCustomOp OrtCustomOp;

// ---- OrtApiBase --------------------------------------------------------------------------------------------
struct OrtApiBase {
  const OrtApi* (*GetApi)(uint32_t version) noexcept;  // null when this ONNX Runtime does not serve `version`
  const char* (*GetVersionString)(void) noexcept;      // "1.18.0"
};
typedef struct OrtApiBase OrtApiBase;

// ---- OrtApi: the entries used, at their positions ----------------------------------------------------------
// (position, name). The struct below must agree; the static_asserts after it check that it does.
#define DSR_ORT_API_USED(X)                   \
  X(0, CreateStatus)                          \
  X(2, GetErrorMessage)                       \
  X(26, CreateCustomOpDomain)                 \
  X(27, CustomOpDomain_Add)                   \
  X(28, AddCustomOpDomain)                    \
  X(51, GetTensorMutableData)                 \
  X(60, GetTensorElementType)                 \
  X(61, GetDimensionsCount)                   \
  X(62, GetDimensions)                        \
  X(65, GetTensorTypeAndShape)                \
  X(85, KernelInfoGetAttribute_float)         \
  X(86, KernelInfoGetAttribute_int64)         \
  X(87, KernelInfoGetAttribute_string)        \
  X(88, KernelContext_GetInputCount)          \
  X(90, KernelContext_GetInput)               \
  X(91, KernelContext_GetOutput)              \
  X(93, ReleaseStatus)                        \
  X(99, ReleaseTensorTypeAndShapeInfo)        \
  X(163, KernelInfoGetAttributeArray_int64)   \
  X(193, KernelContext_GetGPUComputeStream)   \
  X(274, KernelContext_ParallelFor)

// Unused entries: function pointers the adapter never calls, kept only for their size.
#define DSR_ORT_SKIP(first, last) void* unused_##first##_##last[(last) - (first) + 1]

struct OrtApi {
  /*   0 */ OrtStatus* (*CreateStatus)(OrtErrorCode code, const char* msg) noexcept;
  /*   1 */ DSR_ORT_SKIP(1, 1);
  /*   2 */ const char* (*GetErrorMessage)(const OrtStatus* status) noexcept;
  /*   3 */ DSR_ORT_SKIP(3, 25);
  /*  26 */ OrtStatusPtr (*CreateCustomOpDomain)(const char* domain, OrtCustomOpDomain** out) noexcept;
  /*  27 */ OrtStatusPtr (*CustomOpDomain_Add)(OrtCustomOpDomain* custom_op_domain, const OrtCustomOp* op) noexcept;
  /*  28 */ OrtStatusPtr (*AddCustomOpDomain)(OrtSessionOptions* options, OrtCustomOpDomain* custom_op_domain) noexcept;
  /*  29 */ DSR_ORT_SKIP(29, 50);
  /*  51 */ OrtStatusPtr (*GetTensorMutableData)(OrtValue* value, void** out) noexcept;
  /*  52 */ DSR_ORT_SKIP(52, 59);
  /*  60 */ OrtStatusPtr (*GetTensorElementType)(const OrtTensorTypeAndShapeInfo* info,
                                                 ONNXTensorElementDataType* out) noexcept;
  /*  61 */ OrtStatusPtr (*GetDimensionsCount)(const OrtTensorTypeAndShapeInfo* info, size_t* out) noexcept;
  /*  62 */ OrtStatusPtr (*GetDimensions)(const OrtTensorTypeAndShapeInfo* info, int64_t* dim_values,
                                          size_t dim_values_length) noexcept;
  /*  63 */ DSR_ORT_SKIP(63, 64);
  /*  65 */ OrtStatusPtr (*GetTensorTypeAndShape)(const OrtValue* value, OrtTensorTypeAndShapeInfo** out) noexcept;
  /*  66 */ DSR_ORT_SKIP(66, 84);
  /*  85 */ OrtStatusPtr (*KernelInfoGetAttribute_float)(const OrtKernelInfo* info, const char* name,
                                                         float* out) noexcept;
  /*  86 */ OrtStatusPtr (*KernelInfoGetAttribute_int64)(const OrtKernelInfo* info, const char* name,
                                                         int64_t* out) noexcept;
  /*  87 */ OrtStatusPtr (*KernelInfoGetAttribute_string)(const OrtKernelInfo* info, const char* name, char* out,
                                                          size_t* size) noexcept;
  /*  88 */ OrtStatusPtr (*KernelContext_GetInputCount)(const OrtKernelContext* context, size_t* out) noexcept;
  /*  89 */ DSR_ORT_SKIP(89, 89);
  /*  90 */ OrtStatusPtr (*KernelContext_GetInput)(const OrtKernelContext* context, size_t index,
                                                   const OrtValue** out) noexcept;
  /*  91 */ OrtStatusPtr (*KernelContext_GetOutput)(OrtKernelContext* context, size_t index, const int64_t* dim_values,
                                                    size_t dim_count, OrtValue** out) noexcept;
  /*  92 */ DSR_ORT_SKIP(92, 92);
  /*  93 */ void (*ReleaseStatus)(OrtStatus* input);
  /*  94 */ DSR_ORT_SKIP(94, 98);
  /*  99 */ void (*ReleaseTensorTypeAndShapeInfo)(OrtTensorTypeAndShapeInfo* input);
  /* 100 */ DSR_ORT_SKIP(100, 162);
  /* 163 */ OrtStatusPtr (*KernelInfoGetAttributeArray_int64)(const OrtKernelInfo* info, const char* name, int64_t* out,
                                                              size_t* size) noexcept;
  /* 164 */ DSR_ORT_SKIP(164, 192);
  /* 193 */ OrtStatusPtr (*KernelContext_GetGPUComputeStream)(const OrtKernelContext* context, void** out) noexcept;
  /* 194 */ DSR_ORT_SKIP(194, 273);
  /* 274 */ OrtStatusPtr (*KernelContext_ParallelFor)(const OrtKernelContext* context, void (*fn)(void*, size_t),
                                                      size_t total, size_t num_batch, void* usr_data) noexcept;
  // Later entries are not declared: this struct is only ever read through a pointer ONNX Runtime hands out.
};
#undef DSR_ORT_SKIP

#define DSR_ORT_CHECK_POSITION(index, name)                                                          \
  static_assert(offsetof(OrtApi, name) == (index) * sizeof(void*), "OrtApi::" #name " is not at " #index); \
  static_assert((index) < DSR_ORT_API_ENTRIES_IN_TARGET, "OrtApi::" #name " is newer than the targeted API");
DSR_ORT_API_USED(DSR_ORT_CHECK_POSITION)
#undef DSR_ORT_CHECK_POSITION
static_assert(sizeof(void (*)()) == sizeof(void*), "function and data pointers must have one size");

// ---- OrtCustomOp, API 18 layout ---------------------------------------------------------------------------
struct OrtCustomOp {
  uint32_t version;  // the API version whose layout this is: DSR_ORT_API_VERSION
  void* (*CreateKernel)(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info);  // (V2 is used)
  const char* (*GetName)(const OrtCustomOp* op);
  const char* (*GetExecutionProviderType)(const OrtCustomOp* op);
  ONNXTensorElementDataType (*GetInputType)(const OrtCustomOp* op, size_t index);
  size_t (*GetInputTypeCount)(const OrtCustomOp* op);
  ONNXTensorElementDataType (*GetOutputType)(const OrtCustomOp* op, size_t index);
  size_t (*GetOutputTypeCount)(const OrtCustomOp* op);
  void (*KernelCompute)(void* op_kernel, OrtKernelContext* context);  // (V2 is used)
  void (*KernelDestroy)(void* op_kernel);
  OrtCustomOpInputOutputCharacteristic (*GetInputCharacteristic)(const OrtCustomOp* op, size_t index);
  OrtCustomOpInputOutputCharacteristic (*GetOutputCharacteristic)(const OrtCustomOp* op, size_t index);
  OrtMemType (*GetInputMemoryType)(const OrtCustomOp* op, size_t index);
  int (*GetVariadicInputMinArity)(const OrtCustomOp* op);
  int (*GetVariadicInputHomogeneity)(const OrtCustomOp* op);
  int (*GetVariadicOutputMinArity)(const OrtCustomOp* op);
  int (*GetVariadicOutputHomogeneity)(const OrtCustomOp* op);
  OrtStatusPtr (*CreateKernelV2)(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info, void** kernel);
  OrtStatusPtr (*KernelComputeV2)(void* op_kernel, OrtKernelContext* context);
  OrtStatusPtr (*InferOutputShapeFn)(const OrtCustomOp* op, OrtShapeInferContext* context);
  int (*GetStartVersion)(const OrtCustomOp* op);
  int (*GetEndVersion)(const OrtCustomOp* op);
  size_t (*GetMayInplace)(int** input_index, int** output_index);
  void (*ReleaseMayInplace)(int* input_index, int* output_index);
  size_t (*GetAliasMap)(int** input_index, int** output_index);
  void (*ReleaseAliasMap)(int* input_index, int* output_index);
};

#define DSR_ORT_CUSTOM_OP_FIELDS(X)                                                                                 \
  X(version) X(CreateKernel) X(GetName) X(GetExecutionProviderType) X(GetInputType) X(GetInputTypeCount)           \
  X(GetOutputType) X(GetOutputTypeCount) X(KernelCompute) X(KernelDestroy) X(GetInputCharacteristic)               \
  X(GetOutputCharacteristic) X(GetInputMemoryType) X(GetVariadicInputMinArity) X(GetVariadicInputHomogeneity)      \
  X(GetVariadicOutputMinArity) X(GetVariadicOutputHomogeneity) X(CreateKernelV2) X(KernelComputeV2)                \
  X(InferOutputShapeFn) X(GetStartVersion) X(GetEndVersion) X(GetMayInplace) X(ReleaseMayInplace) X(GetAliasMap)   \
  X(ReleaseAliasMap)
static_assert(sizeof(OrtCustomOp) == 26 * sizeof(void*), "OrtCustomOp (API 18): a uint32 then 25 pointers");
static_assert(sizeof(OrtErrorCode) == 4 && sizeof(ONNXTensorElementDataType) == 4 && sizeof(OrtMemType) == 4,
              "the ABI's enums are int-sized");

#endif  // DSR_ORT_ABI_H
