// ONNX Runtime adapter of the event-driven quantised convolution (core/dsr_spike_conv.h): the op table of
// dsr::SpikeQLinearConv, registered beside the neuron ops by RegisterCustomOps (dsr_ort_ops.cpp).
#pragma once

#include "dsr_ort_abi.h"

namespace dsr_ort {

// The CPU EP op; `api` serves its kernels (the version RegisterCustomOps obtained). Lives as long as the library.
const OrtCustomOp* spike_conv_op(const OrtApi* api);

}  // namespace dsr_ort
