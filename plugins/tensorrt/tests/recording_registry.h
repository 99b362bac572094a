// A plugin registry that records registerCreator calls and does nothing else: it stands in for libnvinfer's in
// the host-side self-test (dsr_trt_plugin_selftest.cpp) and in the stub libnvinfer (stub_nvinfer.cpp) that
// tests/test_native_trt.py links libdsr_trt_plugin.so against.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "NvInferRuntime.h"

namespace dsr_trt_test {

using namespace nvinfer1;

// Records registerCreator calls; everything else is unused by the plugin libraries.
class RecordingRegistry : public IPluginRegistry {
 public:
  std::vector<std::pair<std::string, std::string>> registered;  // (plugin name, namespace)
  bool registerCreator(IPluginCreatorInterface& creator, AsciiChar const* const ns) noexcept override {
    auto* v3 = dynamic_cast<IPluginCreatorV3One*>(&creator);
    registered.emplace_back(v3 ? v3->getPluginName() : "?", ns ? ns : "");
    return true;
  }
  void setErrorRecorder(IErrorRecorder* const) noexcept override {}
  IErrorRecorder* getErrorRecorder() const noexcept override { return nullptr; }
  bool isParentSearchEnabled() const override { return false; }
  void setParentSearchEnabled(bool const) override {}
  PluginLibraryHandle loadLibrary(AsciiChar const*) noexcept override { return nullptr; }
  void deregisterLibrary(PluginLibraryHandle) noexcept override {}
  IPluginCreatorInterface* const* getAllCreators(int32_t* const n) const noexcept override {
    *n = 0;
    return nullptr;
  }
  bool deregisterCreator(IPluginCreatorInterface const&) noexcept override { return false; }
  IPluginCreatorInterface* getCreator(AsciiChar const*, AsciiChar const*, AsciiChar const*) noexcept override {
    return nullptr;
  }
  IPluginResource* acquirePluginResource(AsciiChar const*, IPluginResource*) noexcept override { return nullptr; }
  int32_t releasePluginResource(AsciiChar const*) noexcept override { return 0; }
  IPluginCreatorInterface* const* getAllCreatorsRecursive(int32_t* const n) noexcept override {
    *n = 0;
    return nullptr;
  }
};

}  // namespace dsr_trt_test
