// libdsr_trt_plugin.so: registers the dsr creators when the library is loaded (dlopen / ctypes.CDLL, LD_PRELOAD,
// `trtexec --staticPlugins`, Triton's `--backend-config=tensorrt,plugins=...`).
//
// This is what REGISTER_TENSORRT_PLUGIN does, except that the macro's PluginRegistrar registers under namespace ""
// while the ONNX nodes ask for plugin_namespace "dsr": register each creator under its own namespace instead.
// Do not load this library and libdsr_trt_plugin_dynamic.so into one process (a creator registers only once).
#include "dsr_trt_plugin.h"

namespace {

struct StaticRegistrar {
  StaticRegistrar() {
    int32_t count = 0;
    nvinfer1::IPluginCreatorInterface* const* creators = dsr_trt::all_creators(count);
    nvinfer1::IPluginRegistry* registry = getPluginRegistry();
    if (registry == nullptr) {
      dsr_trt::log_error("no TensorRT plugin registry (is libnvinfer loaded?)");
      return;
    }
    for (int32_t i = 0; i < count; ++i) {
      if (!registry->registerCreator(*creators[i], dsr_trt::kNamespace))
        dsr_trt::log_error("registering a dsr creator failed (already registered?)");
    }
  }
};

StaticRegistrar const g_registrar;

}  // namespace
