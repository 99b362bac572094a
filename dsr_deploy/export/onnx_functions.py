"""Standard-ONNX bodies of the ``dsr`` neuron ops, as model-local FunctionProtos.

A model exported with the function lowering holds one ``dsr::DSRIFSpike`` / ``dsr::DSRLIFSpike`` node per
neuron layer *and* a FunctionProto of the same domain and name: a runtime with the dsr kernels (the ORT custom-op
library, the TensorRT plugin) runs its own kernel; a stock runtime inlines the function. The node's attributes
reach the body through ``ref_attr_name`` Constants, so one FunctionProto serves every layer of its kind.

Two bodies:

* ``scan``: a ``Scan`` over the leading time axis with the membrane as its state: dynamic T;
* ``unrolled``: ``Split`` into T steps, T copies of the step, ``Concat``: fixed T (the model's T is static).

The step is written to round exactly as :mod:`dsr_deploy.functional` in float32::

    thr = Mul(alpha, v_threshold)                     # fl32(fl32(alpha) * vth)
    IF:  v = Add(v, x_t)
    LIF: v = Add(Mul(decay, v), Mul(gain, x_t))       # two roundings, no FMA
    s = Where(GreaterOrEqual(v, thr), v_threshold, 0)
    v = Sub(v, s)
    y_t = s (IF) | Div(s, delta_t) (LIF)              # true division, as the reference on every device

Bodies are float32 (the dtype the exporter writes).
"""

from __future__ import annotations

from typing import List

import onnx
from onnx import AttributeProto, TensorProto, helper

from ..convert import ONNX_DOMAIN, ONNX_OP_TYPES

BODIES = ("scan", "unrolled")
IF_ATTRS = ["v_threshold", "alpha", "plugin_namespace", "plugin_version"]
LIF_ATTRS = ["v_threshold", "alpha", "tau", "delta_t", "decay", "gain", "plugin_namespace", "plugin_version"]


def _ref_constant(output: str, attr: str) -> onnx.NodeProto:
    """``output = Constant(value_float=<the calling node's attribute attr>)``."""
    node = helper.make_node("Constant", [], [output], name=f"const_{attr}")
    a = AttributeProto()
    a.name = "value_float"
    a.ref_attr_name = attr
    a.type = AttributeProto.FLOAT
    node.attribute.append(a)
    return node


def _prologue(kind: str) -> List[onnx.NodeProto]:
    nodes = [
        _ref_constant("vth", "v_threshold"),
        _ref_constant("alpha", "alpha"),
        helper.make_node("Mul", ["alpha", "vth"], ["thr"], name="threshold"),
        helper.make_node("Constant", [], ["zero"], value_float=0.0, name="const_zero"),
    ]
    if kind == "lif":
        nodes += [_ref_constant("decay", "decay"), _ref_constant("gain", "gain"), _ref_constant("dt", "delta_t")]
    return nodes


def _step(kind: str, v_in: str, x_t: str, v_out: str, y_t: str, p: str) -> List[onnx.NodeProto]:
    """One time step from membrane ``v_in`` and input ``x_t``; names prefixed with ``p``."""
    nodes = []
    if kind == "if":
        nodes.append(helper.make_node("Add", [v_in, x_t], [p + "v"], name=p + "integrate"))
    else:
        nodes += [
            helper.make_node("Mul", ["decay", v_in], [p + "dv"], name=p + "leak"),
            helper.make_node("Mul", ["gain", x_t], [p + "gx"], name=p + "input_gain"),
            helper.make_node("Add", [p + "dv", p + "gx"], [p + "v"], name=p + "integrate"),
        ]
    nodes += [
        helper.make_node("GreaterOrEqual", [p + "v", "thr"], [p + "fire"], name=p + "compare"),
        helper.make_node("Where", [p + "fire", "vth", "zero"], [p + "s"], name=p + "spike"),
        helper.make_node("Sub", [p + "v", p + "s"], [v_out], name=p + "reset"),
    ]
    if kind == "if":
        nodes.append(helper.make_node("Identity", [p + "s"], [y_t], name=p + "out"))
    else:
        nodes.append(helper.make_node("Div", [p + "s", "dt"], [y_t], name=p + "out"))
    return nodes


def _zeros_like_step(src: str, out: str, start: int) -> List[onnx.NodeProto]:
    """``out`` = float32 zeros of ``src``'s shape from dim ``start`` on."""
    return [
        helper.make_node("Shape", [src], [out + "_shape"], start=start, name=out + "_shape"),
        helper.make_node("ConstantOfShape", [out + "_shape"], [out],
                         value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]), name=out + "_zeros"),
    ]


def scan_body(kind: str) -> List[onnx.NodeProto]:
    step = _step(kind, "v_in", "x_t", "v_out", "y_t", "")
    body = helper.make_graph(
        step, f"{kind}_step",
        [helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("x_t", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("y_t", TensorProto.FLOAT, None)],
    )
    return _prologue(kind) + _zeros_like_step("x", "v0", 1) + [
        helper.make_node("Scan", ["v0", "x"], ["v_final", "y"], body=body, num_scan_inputs=1, name="time_loop"),
    ]


def unrolled_body(kind: str, T: int) -> List[onnx.NodeProto]:
    if T < 1:
        raise ValueError(f"an unrolled body needs T >= 1, got {T}")
    xs = [f"x{t}" for t in range(T)]
    nodes = _prologue(kind) + [
        helper.make_node("Constant", [], ["split_sizes"],
                         value=helper.make_tensor("split_sizes", TensorProto.INT64, [T], [1] * T), name="const_split"),
        helper.make_node("Split", ["x", "split_sizes"], xs, axis=0, name="split_time"),
    ]
    # The membrane starts at zero with the shape of one (kept-dim) time slice.
    nodes += _zeros_like_step(xs[0], "v_init", 0)
    v = "v_init"
    ys = []
    for t in range(T):
        p = f"t{t}_"
        nodes += _step(kind, v, xs[t], p + "v_next", p + "y", p)
        v = p + "v_next"
        ys.append(p + "y")
    nodes.append(helper.make_node("Concat", ys, ["y"], axis=0, name="concat_time"))
    return nodes


def function_proto(kind: str, body: str, opset: int, T: int | None = None) -> onnx.FunctionProto:
    """The FunctionProto ``dsr::DSRIFSpike`` / ``dsr::DSRLIFSpike`` with the chosen body."""
    if body == "scan":
        nodes = scan_body(kind)
    elif body == "unrolled":
        if T is None:
            raise ValueError("the unrolled body needs a fixed T")
        nodes = unrolled_body(kind, T)
    else:
        raise ValueError(f"unknown function body {body!r}; choose from {BODIES}")
    return helper.make_function(
        ONNX_DOMAIN, ONNX_OP_TYPES[kind], ["x"], ["y"], nodes,
        opset_imports=[helper.make_opsetid("", opset)],
        attributes=IF_ATTRS if kind == "if" else LIF_ATTRS,
        doc_string=f"DSR-{kind.upper()} spike recurrence over a leading time axis, {body} body "
                   "(bit-exact with dsr_deploy.functional in float32).",
    )


def step_function_proto(kind: str, op_type: str, opset: int) -> onnx.FunctionProto:
    """The single-step body (streaming ``DSRIFStep`` / ``DSRLIFStep``: inputs ``x_t, v`` -> ``y_t, v_new``):
    the same prologue and step as the multi-step bodies, so the ONNX math stays in one place."""
    nodes = _prologue(kind) + _step(kind, "v", "x_t", "v_new", "y_t", "step_")
    return helper.make_function(
        ONNX_DOMAIN, op_type, ["x_t", "v"], ["y_t", "v_new"], nodes,
        opset_imports=[helper.make_opsetid("", opset)],
        attributes=IF_ATTRS if kind == "if" else LIF_ATTRS,
        doc_string=f"One DSR-{kind.upper()} time step with the membrane as explicit I/O "
                   "(bit-exact with dsr_deploy.functional in float32).",
    )
