// Pins dsr_ort_abi.h to an official ONNX Runtime header: compiles only if every declaration there matches it.
//
// Built (never linked into anything) when ONNXRUNTIME_ROOT is given: `dsr-deploy plugins build --ort-root DIR`, or
// by hand: g++ -std=c++17 -fsyntax-only -I<dir with onnxruntime_c_api.h> plugins/onnxruntime/dsr_ort_abi_check.cpp
// Checked, with static_asserts:
//  * each OrtApi entry the adapter calls: same position (offset) and the exact same function type (parameters,
//    return type, noexcept), once dsr's opaque handles and enums are mapped to ONNX Runtime's;
//  * OrtApiBase: both fields, offsets and types;
//  * OrtCustomOp: every field of the API-18 layout, offset and type, and that the official struct is not smaller;
//  * the enums: the value of every enumerator declared, and each enum's size and signedness;
//  * the official header serves at least the targeted API version.
#include <cstddef>
#include <cstdint>
#include <type_traits>

// The official header's warn_unused_result / nonnull attributes are not part of a type: quiet gcc about them.
#pragma GCC diagnostic ignored "-Wignored-attributes"
#include <onnxruntime_c_api.h>

namespace dsr_abi {
#include "dsr_ort_abi.h"
}

namespace {

// Map<T>: dsr_abi's type T spelled with the official header's types (pointers, const and function types recursed).
template <class T> struct Map { using type = T; };
template <class T> struct Map<T*> { using type = typename Map<T>::type*; };
template <class T> struct Map<const T> { using type = const typename Map<T>::type; };
template <class R, class... A> struct Map<R(A...)> {
  using type = typename Map<R>::type(typename Map<A>::type...);
};
template <class R, class... A> struct Map<R(A...) noexcept> {
  using type = typename Map<R>::type(typename Map<A>::type...) noexcept;
};
#define DSR_MAP_SAME_NAME(name) \
  template <> struct Map<dsr_abi::name> { using type = ::name; };
DSR_ORT_OPAQUE_TYPES(DSR_MAP_SAME_NAME)
DSR_ORT_ENUM_TYPES(DSR_MAP_SAME_NAME)
DSR_MAP_SAME_NAME(OrtApi)
DSR_MAP_SAME_NAME(OrtApiBase)
DSR_MAP_SAME_NAME(OrtCustomOp)
#undef DSR_MAP_SAME_NAME

template <class Ours, class Theirs>
constexpr bool same_v = std::is_same<typename Map<Ours>::type, Theirs>::value;

static_assert(ORT_API_VERSION >= DSR_ORT_API_VERSION, "this header is older than the API version dsr targets");

// ---- OrtApi entries -------------------------------------------------------------------------------------------
#define DSR_CHECK_ENTRY(index, name)                                                                  \
  static_assert(offsetof(dsr_abi::OrtApi, name) == offsetof(::OrtApi, name),                          \
                "OrtApi::" #name ": position differs from the official header");                     \
  static_assert(same_v<decltype(dsr_abi::OrtApi::name), decltype(::OrtApi::name)>,                    \
                "OrtApi::" #name ": signature differs from the official header");                    \
  static_assert(offsetof(::OrtApi, name) < DSR_ORT_API_ENTRIES_IN_TARGET * sizeof(void*), #name);
DSR_ORT_API_USED(DSR_CHECK_ENTRY)
#undef DSR_CHECK_ENTRY

// ---- OrtApiBase ---------------------------------------------------------------------------------------------
#define DSR_CHECK_FIELD(Struct, name)                                                                 \
  static_assert(offsetof(dsr_abi::Struct, name) == offsetof(::Struct, name),                          \
                #Struct "::" #name ": offset differs from the official header");                     \
  static_assert(same_v<decltype(dsr_abi::Struct::name), decltype(::Struct::name)>,                    \
                #Struct "::" #name ": type differs from the official header");
DSR_CHECK_FIELD(OrtApiBase, GetApi)
DSR_CHECK_FIELD(OrtApiBase, GetVersionString)
static_assert(sizeof(dsr_abi::OrtApiBase) == sizeof(::OrtApiBase), "OrtApiBase size");

// ---- OrtCustomOp --------------------------------------------------------------------------------------------
#define DSR_CHECK_CUSTOM_OP_FIELD(name) DSR_CHECK_FIELD(OrtCustomOp, name)
DSR_ORT_CUSTOM_OP_FIELDS(DSR_CHECK_CUSTOM_OP_FIELD)
#undef DSR_CHECK_CUSTOM_OP_FIELD
#undef DSR_CHECK_FIELD
// Newer headers may append fields (ONNX Runtime reads them only when `version` says so); none may go missing.
static_assert(sizeof(dsr_abi::OrtCustomOp) <= sizeof(::OrtCustomOp), "OrtCustomOp lost fields");
static_assert(offsetof(::OrtCustomOp, ReleaseAliasMap) + sizeof(void*) == sizeof(dsr_abi::OrtCustomOp),
              "dsr's OrtCustomOp ends where the API-18 fields end");

// ---- enums -----------------------------------------------------------------------------------------------------
#define DSR_CHECK_ENUM_VALUE(name)                                                                  \
  static_assert(static_cast<long long>(dsr_abi::name) == static_cast<long long>(::name), #name " value");
DSR_ORT_ENUM_VALUES(DSR_CHECK_ENUM_VALUE)
#undef DSR_CHECK_ENUM_VALUE
#define DSR_CHECK_ENUM_TYPE(name)                                                                               \
  static_assert(sizeof(dsr_abi::name) == sizeof(::name), #name " size");                                        \
  static_assert(std::is_signed<std::underlying_type_t<dsr_abi::name>>::value ==                                 \
                    std::is_signed<std::underlying_type_t<::name>>::value,                                      \
                #name " signedness");
DSR_ORT_ENUM_TYPES(DSR_CHECK_ENUM_TYPE)
#undef DSR_CHECK_ENUM_TYPE

}  // namespace

// Something to compile into (the object is not linked anywhere).
extern "C" int dsr_ort_abi_checked_against_api_version() { return ORT_API_VERSION; }
