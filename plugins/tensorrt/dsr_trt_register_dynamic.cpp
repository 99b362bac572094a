// libdsr_trt_plugin_dynamic.so: exports getCreators / setLoggerFinder for IPluginRegistry::loadLibrary,
// `trtexec --dynamicPlugins` and plugins serialised into version-compatible engines. Registers nothing on load.
#include "dsr_trt_plugin.h"

// TENSORRTAPI is empty outside TensorRT's own build, and this project hides symbols by default.
#define DSR_TRT_EXPORT __attribute__((visibility("default")))

extern "C" DSR_TRT_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
  return dsr_trt::all_creators(nbCreators);
}

extern "C" DSR_TRT_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder) { dsr_trt::set_logger_finder(finder); }
