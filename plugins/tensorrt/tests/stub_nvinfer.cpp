// A stub libnvinfer for tests (never shipped): exports getPluginRegistry (the only libnvinfer symbol
// libdsr_trt_plugin.so uses) backed by a recording registry, plus dsr_stub_registered() to read what was registered.
// tests/test_native_trt.py builds it as libnvinfer.so.<major> (SONAME included), links the plugin against it and
// loads the plugin in a fresh process with only this stub present:
//
//   g++ -std=c++17 -shared -fPIC -I<trt>/include -Wl,-soname,libnvinfer.so.11 stub_nvinfer.cpp -o libnvinfer.so.11
#include <cstdio>
#include <cstring>

#include "recording_registry.h"

namespace {
dsr_trt_test::RecordingRegistry g_registry;
}

extern "C" __attribute__((visibility("default"))) nvinfer1::IPluginRegistry* getPluginRegistry() noexcept {
  return &g_registry;
}

// "name@namespace;name@namespace;..." of the registered creators into buf; returns how many.
extern "C" __attribute__((visibility("default"))) int dsr_stub_registered(char* buf, int size) {
  std::string all;
  for (auto const& [name, ns] : g_registry.registered) all += name + "@" + ns + ";";
  if (buf && size > 0) std::snprintf(buf, static_cast<size_t>(size), "%s", all.c_str());
  return static_cast<int>(g_registry.registered.size());
}
