"""Standard-ONNX step of SpikingJelly's IF / LIF / PLIF (the ``dsr::SJ*Spike`` / ``SJ*Step`` function bodies).

Written to round exactly as :func:`dsr_deploy.functional.sj_forward` in float32, one rounding per node, the node's
attributes reaching the body through ``ref_attr_name`` Constants (one FunctionProto per op type)::

    IF:    h = Add(v, x)
    LIF:   h = Add(v, Div(Sub(x, Sub(v, vr)), leak))    (decay_input)   |  Add(Sub(v, Div(Sub(v, vr), leak)), x)
    PLIF:  the same with Mul for Div (leak = sigmoid(w))
    s = Where(GreaterOrEqual(h, vth), 1, 0)
    v = Where(hard_reset, Add(Mul(s, vr), Mul(Sub(1, s), h)), Sub(h, Mul(s, vth)))

``decay_input`` / ``hard_reset`` are int attributes: both forms are computed and one is selected (``Where`` copies,
so the selected value is exactly its own form's). The membrane starts at ``v_reset`` (0 for a soft reset).
"""

from __future__ import annotations

from typing import List

import onnx
from onnx import AttributeProto, TensorProto, helper

SJ_IF_ATTRS = ["v_threshold", "v_reset", "hard_reset", "plugin_namespace", "plugin_version"]
SJ_LIF_ATTRS = ["v_threshold", "v_reset", "hard_reset", "leak", "decay_input", "plugin_namespace", "plugin_version"]


def attributes(kind: str) -> List[str]:
    return SJ_IF_ATTRS if kind == "sj_if" else SJ_LIF_ATTRS


def _ref(output: str, attr: str, int_attr: bool = False) -> onnx.NodeProto:
    node = helper.make_node("Constant", [], [output], name=f"const_{attr}")
    a = AttributeProto()
    a.name = "value_int" if int_attr else "value_float"
    a.ref_attr_name = attr
    a.type = AttributeProto.INT if int_attr else AttributeProto.FLOAT
    node.attribute.append(a)
    return node


def prologue(kind: str) -> List[onnx.NodeProto]:
    nodes = [
        _ref("vth", "v_threshold"), _ref("vr", "v_reset"), _ref("hard_i", "hard_reset", True),
        helper.make_node("Cast", ["hard_i"], ["hard"], to=TensorProto.BOOL, name="hard_flag"),
        helper.make_node("Constant", [], ["zero"], value_float=0.0, name="const_zero"),
        helper.make_node("Constant", [], ["one"], value_float=1.0, name="const_one"),
    ]
    if kind != "sj_if":
        nodes += [_ref("leak", "leak"), _ref("decay_i", "decay_input", True),
                  helper.make_node("Cast", ["decay_i"], ["decay"], to=TensorProto.BOOL, name="decay_flag")]
    return nodes


def initial(zeros: str, out: str) -> List[onnx.NodeProto]:
    """The membrane's start: ``v_reset`` (zeros + vr, exact) in the shape of ``zeros``."""
    return [helper.make_node("Add", [zeros, "vr"], [out], name=out + "_reset_value")]


def _charge(kind: str, v: str, x: str, p: str) -> List[onnx.NodeProto]:
    if kind == "sj_if":
        return [helper.make_node("Add", [v, x], [p + "h"], name=p + "charge")]
    op = "Div" if kind == "sj_lif" else "Mul"
    return [
        helper.make_node("Sub", [v, "vr"], [p + "dv"], name=p + "to_reset"),
        # decay_input: v + (x - (v - vr)) op leak
        helper.make_node("Sub", [x, p + "dv"], [p + "xd"], name=p + "input_minus"),
        helper.make_node(op, [p + "xd", "leak"], [p + "xl"], name=p + "input_leak"),
        helper.make_node("Add", [v, p + "xl"], [p + "h_in"], name=p + "charge_decay_input"),
        # else: v - (v - vr) op leak + x
        helper.make_node(op, [p + "dv", "leak"], [p + "dl"], name=p + "leak"),
        helper.make_node("Sub", [v, p + "dl"], [p + "vd"], name=p + "decayed"),
        helper.make_node("Add", [p + "vd", x], [p + "h_x"], name=p + "charge_plain"),
        helper.make_node("Where", ["decay", p + "h_in", p + "h_x"], [p + "h"], name=p + "charge"),
    ]


def step(kind: str, v_in: str, x_t: str, v_out: str, y_t: str, p: str) -> List[onnx.NodeProto]:
    """One time step from membrane ``v_in`` and input ``x_t``; names prefixed with ``p``."""
    return _charge(kind, v_in, x_t, p) + [
        helper.make_node("GreaterOrEqual", [p + "h", "vth"], [p + "fire"], name=p + "compare"),
        helper.make_node("Where", [p + "fire", "one", "zero"], [p + "s"], name=p + "spike"),
        helper.make_node("Mul", [p + "s", "vth"], [p + "sv"], name=p + "soft_amount"),
        helper.make_node("Sub", [p + "h", p + "sv"], [p + "v_soft"], name=p + "soft_reset"),
        helper.make_node("Mul", [p + "s", "vr"], [p + "sr"], name=p + "hard_reset_value"),
        helper.make_node("Sub", ["one", p + "s"], [p + "ns"], name=p + "not_spike"),
        helper.make_node("Mul", [p + "ns", p + "h"], [p + "nh"], name=p + "hard_keep"),
        helper.make_node("Add", [p + "sr", p + "nh"], [p + "v_hard"], name=p + "hard_reset"),
        helper.make_node("Where", ["hard", p + "v_hard", p + "v_soft"], [v_out], name=p + "reset"),
        helper.make_node("Identity", [p + "s"], [y_t], name=p + "out"),
    ]
