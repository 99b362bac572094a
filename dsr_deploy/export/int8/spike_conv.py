"""The channels-last int8 graph's convolutions on spikes, event-driven: ``dsr::SpikeQLinearConv``.

In the ``--int8-layout nhwc`` form every convolution is ``com.microsoft.QLinearConv`` (:mod:`.layout`). Those whose
input is spike codes -- a quantised neuron's output, or spikes (or sums of spikes) quantised with zero point 0 --
become ``dsr::SpikeQLinearConv``: the same inputs and attributes, run by the custom-op library's event-driven kernel
(plugins/core/dsr_spike_conv.h), which adds the weight rows of the inputs that spiked instead of multiplying every
input: its work follows the spike rate, its output codes are ONNX Runtime's QLinearConv's bit for bit (the same
integer sum, the same requantisation). The node carries a model-local function whose body is that
``com.microsoft.QLinearConv``, so ONNX Runtime without the library runs the dense op, with the same results.

:func:`dense_convs` turns them back (benchmarks/profile_int8.py compares the two forms).
"""

from __future__ import annotations

from typing import Optional

import onnx
from onnx import AttributeProto, TensorProto, helper

from ...contract import DOMAIN, DOMAIN_VERSION, QUANTIZED_OP_TYPES, SPIKE_CONV_OP_TYPES
from ..onnx_functions import SCOPE_PREFIX, scope_prefix
from .graph import EXACT_OPS, Graph

OP_TYPE = SPIKE_CONV_OP_TYPES["conv"]
ORT_DOMAIN = "com.microsoft"
INPUTS = ["x", "x_scale", "x_zero_point", "w", "w_scale", "w_zero_point", "y_scale", "y_zero_point", "B"]
ATTRS = {"channels_last": AttributeProto.INT, "group": AttributeProto.INT, "kernel_shape": AttributeProto.INTS,
         "strides": AttributeProto.INTS, "pads": AttributeProto.INTS, "dilations": AttributeProto.INTS,
         "auto_pad": AttributeProto.STRING}


def spike_conv_function(prefix: Optional[str] = None) -> onnx.FunctionProto:
    """``dsr::SpikeQLinearConv`` as a function: one ``com.microsoft.QLinearConv`` with the caller's attributes."""
    p = prefix or SCOPE_PREFIX
    node = helper.make_node("QLinearConv", [p + i for i in INPUTS], [p + "y"], domain=ORT_DOMAIN,
                            name=p + "qlinearconv")
    node.attribute.extend(helper.make_attribute_ref(name, kind) for name, kind in ATTRS.items())
    return helper.make_function(
        DOMAIN, OP_TYPE, [p + i for i in INPUTS], [p + "y"], [node],
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(ORT_DOMAIN, 1)], attributes=list(ATTRS),
        doc_string="A channels-last QLinearConv on spike codes; the dsr custom-op library runs it event-driven "
                   "with the same output codes.")


def _is_spike_codes(g: Graph, tensor: str) -> bool:
    """``tensor`` (uint8 codes) holds spikes: a quantised neuron's output, or a QuantizeLinear with zero point 0 of
    spikes or sums of spikes, through value-preserving ops."""
    node = g.producer.get(tensor)
    while node is not None and node.op_type in EXACT_OPS:
        node = g.producer.get(node.input[0])
    if node is None:
        return False
    if node.domain == DOMAIN and node.op_type in QUANTIZED_OP_TYPES.values():
        return g.inits.get(node.input[2]) is not None and g.inits[node.input[2]].data_type == TensorProto.UINT8
    if node.op_type != "QuantizeLinear" or len(node.input) < 3 or node.input[2] not in g.inits:
        return False
    zp = onnx.numpy_helper.to_array(g.inits[node.input[2]])
    return zp.dtype.name == "uint8" and zp.size == 1 and int(zp.reshape(-1)[0]) == 0 \
        and g.spike_count(node.input[0]) is not None


def _eligible(node: onnx.NodeProto) -> bool:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    return attrs.get("channels_last") == 1 and attrs.get("group", 1) == 1 \
        and auto_pad in (b"NOTSET", "NOTSET") and len(attrs.get("kernel_shape", [0, 0])) == 2


def event_convs(model: onnx.ModelProto) -> int:
    """Turn every channels-last ``QLinearConv`` on spike codes into ``dsr::SpikeQLinearConv`` (module docstring);
    returns how many."""
    g = Graph(model)
    count = 0
    for node in model.graph.node:
        if node.op_type == "QLinearConv" and node.domain == ORT_DOMAIN and _eligible(node) \
                and _is_spike_codes(g, node.input[0]):
            node.op_type, node.domain = OP_TYPE, DOMAIN
            count += 1
    if count:
        if not any(f.domain == DOMAIN and f.name == OP_TYPE for f in model.functions):
            model.functions.append(spike_conv_function(scope_prefix(model.graph)))
        if not any(o.domain == DOMAIN for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    return count


def dense_convs(model: onnx.ModelProto) -> int:
    """The inverse of :func:`event_convs`: every ``dsr::SpikeQLinearConv`` back to ``com.microsoft.QLinearConv``."""
    count = 0
    for node in model.graph.node:
        if node.op_type == OP_TYPE and node.domain == DOMAIN:
            node.op_type, node.domain = "QLinearConv", ORT_DOMAIN
            count += 1
    keep = [f for f in model.functions if not (f.domain == DOMAIN and f.name == OP_TYPE)]
    del model.functions[:]
    model.functions.extend(keep)
    return count
