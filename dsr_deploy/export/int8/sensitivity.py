"""Which layers int8 cannot carry: each quantised layer's rounding error measured at export, the layers whose
error is too large kept float32 (what quantisation toolkits call sensitivity-based float fallback).

The error a layer's int8 parameters add to its current is, exactly, the layer's op run on its own input with the
rounding errors as parameters: ``op(x, w - dq(q(w))) + (b - dq(q(b)))`` (the bias term only where the bias is
quantised: uint8 activations, an int32 bias with scale ``input scale x weight scale``; the int8 form keeps it
float32). :func:`error_twins` adds that op, without the bias, as a twin of each layer to the calibration probe,
so the one calibration run samples both the currents and the errors (each error value with its channel, for the
bias term added once the input's scale is known). :func:`rounding_steps` gives each layer's error in steps of
its calibrated output scale (the 99th percentile of ``|error| / scale``, verify's statistic), and
:func:`fallback` the layers over :data:`~.options.ROUNDING_MAX_STEPS`, with the reason the manifest records.

A layer that fails it is one whose current barely moves against its parameters' rounding: SpikingJelly's trained
ResNets, whose last blocks' spikes are silent on the calibration data, so each current there is the folded
BatchNorm's bias alone, spread over ~1e-4, while the int32 bias steps (``1 x`` the weight scale, ~7e-4) are
hundreds of the current's steps. Kept float32, its neuron reads the float current, checked by verify's float
rule.
"""

from __future__ import annotations

from typing import Collection, Dict, List, Tuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .calibrate import Reservoir
from .graph import Graph, safe_name
from .options import INT8_QUANTILE, ROUNDING_MAX_STEPS
from .weights import (
    bias_gain,
    dequantized_weight,
    output_channel_axis,
    quantize_bias,
    quantize_weight,
    weight_axis,
    weight_levels,
)

TWIN_SUFFIX = "__int8_rounding"


def layer_name(node: onnx.NodeProto) -> str:
    """A weighted layer's name in the quantisation record (its node name, else its output)."""
    return node.name or node.output[0]


def error_twins(probe: onnx.ModelProto, layers: List[onnx.NodeProto],
                narrow: Collection[str] = ()) -> Dict[str, Tuple[str, int]]:
    """Add to ``probe`` (in place), for each layer of ``layers`` (nodes of a graph with the same tensors), a twin
    node computing ``op(x, w - dq(q(w)))`` on the layer's own input (the codes the rewrite writes:
    :func:`.weights.weight_levels`). Returns {layer name: (twin output, channel axis of that output)}."""
    inits = Graph(probe).inits
    twins = {}
    for node in layers:
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        err = (w - dequantized_weight(w, weight_axis(node), weight_levels(node, narrow))).astype(np.float32)
        tag = f"{safe_name(node.output[0])}{TWIN_SUFFIX}"
        probe.graph.initializer.append(numpy_helper.from_array(err, f"{tag}_w"))
        twin = helper.make_node(node.op_type, [node.input[0], f"{tag}_w"], [tag], name=tag)
        twin.attribute.extend(node.attribute)
        probe.graph.node.append(twin)
        twins[layer_name(node)] = (tag, output_channel_axis(node))
    return twins


def _bias_error(g: Graph, node: onnx.NodeProto, in_scale: float, signed: bool,
                narrow: Collection[str]) -> np.ndarray:
    """Per output channel: ``beta x (b - dq(q(b)))`` of the int32 bias the rewrite writes, 0 where none is."""
    if signed or len(node.input) < 3 or node.input[2] not in g.inits:
        return np.zeros(1)
    w = numpy_helper.to_array(g.inits[node.input[1]]).astype(np.float32)
    b = numpy_helper.to_array(g.inits[node.input[2]]).astype(np.float32)
    q = quantize_bias(b, in_scale, quantize_weight(w, weight_axis(node), weight_levels(node, narrow))[1])
    if q is None:
        return np.zeros(1)
    return bias_gain(node) * (b.astype(np.float64) - (q[0].astype(np.float32) * q[1]).astype(np.float64))


def rounding_steps(g: Graph, layers: List[onnx.NodeProto], twins: Dict[str, Tuple[str, int]],
                   samples: Dict[str, Reservoir], in_scales: Dict[str, float], out_scales: Dict[str, float],
                   signed: bool, narrow: Collection[str] = ()) -> Dict[str, float]:
    """{layer name: the 99th percentile of |its int8 parameters' error| in steps of its output's scale} over the
    sampled calibration values; ``in_scales`` / ``out_scales``: {layer name: scale} of its input and output."""
    steps = {}
    for node in layers:
        name = layer_name(node)
        sample = samples[twins[name][0]]
        err = sample.values().astype(np.float64)
        bias = _bias_error(g, node, in_scales[name], signed, narrow)
        err = err + (bias[sample.channels()] if bias.size > 1 else bias[0])
        steps[name] = float(np.percentile(np.abs(err), INT8_QUANTILE) / out_scales[name]) if err.size else 0.0
    return steps


def fallback(steps: Dict[str, float]) -> Dict[str, str]:
    """{layer name: why it stays float32} of the layers whose rounding error exceeds the bound."""
    return {name: f"int8 weight/bias rounding {s:.3g} steps of its current's scale (> {ROUNDING_MAX_STEPS:g})"
            for name, s in steps.items() if s > ROUNDING_MAX_STEPS}
