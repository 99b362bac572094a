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

Precision: the body computes in float32 whatever the tensor type. A float16 / bfloat16 model (``export
--precision``) gets a ``Cast`` to float32 on entry and a ``Cast`` of the spikes back to the tensor type at the
end, the membrane staying float32, as :mod:`dsr_deploy.functional` and every kernel do for half inputs.

Names: every name inside a function body (formals and intermediates, the Scan body's too) carries a prefix that
no value of the calling graph starts with (:func:`scope_prefix`). onnx-tensorrt before 10.8 resolves a function's
inner names against the outer graph, so a formal ``x_t`` beside a graph input ``x_t`` made every step node read
the graph input.
"""

from __future__ import annotations

from typing import Iterable, List, Optional

import onnx
from onnx import AttributeProto, TensorProto, helper

from ..contract import QUANTIZED_OP_TYPES
from ..convert import ALL_OP_TYPES, ONNX_DOMAIN
from . import onnx_sj

ONNX_OP_TYPES = ALL_OP_TYPES  # DSR and SpikingJelly kinds (the SpikingJelly step: onnx_sj)

BODIES = ("scan", "unrolled")
SCOPE_PREFIX = "dsr_fn_"
#: ``export --precision`` -> ONNX tensor type of the model's activations (membranes stay float32).
PRECISIONS = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "bfloat16": TensorProto.BFLOAT16}
IF_ATTRS = ["v_threshold", "alpha", "plugin_namespace", "plugin_version"]
LIF_ATTRS = ["v_threshold", "alpha", "tau", "delta_t", "decay", "gain", "plugin_namespace", "plugin_version"]


def onnx_elem_type(dtype) -> int:
    """The ONNX tensor type of a torch floating dtype (float32 / float16 / bfloat16)."""
    name = str(dtype).replace("torch.", "")
    if name not in PRECISIONS:
        raise ValueError(f"no ONNX function body for dtype {name}; choose from {', '.join(PRECISIONS)}")
    return PRECISIONS[name]


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
    if kind.startswith("sj_"):
        return onnx_sj.prologue(kind)
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
    if kind.startswith("sj_"):
        return onnx_sj.step(kind, v_in, x_t, v_out, y_t, p)
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


def _initial_membrane(kind: str, src: str, out: str, start: int) -> List[onnx.NodeProto]:
    """The membrane's start in the shape of ``src`` from dim ``start`` on: zeros (DSR), v_reset (SpikingJelly)."""
    if kind.startswith("sj_"):
        return _zeros_like_step(src, out + "_zeros", start) + onnx_sj.initial(out + "_zeros", out)
    return _zeros_like_step(src, out, start)


def _zeros_like_step(src: str, out: str, start: int) -> List[onnx.NodeProto]:
    """``out`` = float32 zeros of ``src``'s shape from dim ``start`` on."""
    return [
        helper.make_node("Shape", [src], [out + "_shape"], start=start, name=out + "_shape"),
        helper.make_node("ConstantOfShape", [out + "_shape"], [out],
                         value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]), name=out + "_zeros"),
    ]


def _cast_in(x: str, elem: int) -> tuple[List[onnx.NodeProto], str]:
    """``x`` as float32: itself, or a Cast of a half-precision input (exact)."""
    if elem == TensorProto.FLOAT:
        return [], x
    return [helper.make_node("Cast", [x], [x + "_f32"], to=TensorProto.FLOAT, name=x + "_to_f32")], x + "_f32"


def _cast_out(y32: str, y: str, elem: int) -> List[onnx.NodeProto]:
    """``y`` = the float32 ``y32`` in the tensor type (rounded once, as the reference's ``.to(x.dtype)``)."""
    if elem == TensorProto.FLOAT:
        return [helper.make_node("Identity", [y32], [y], name=y + "_out")]
    return [helper.make_node("Cast", [y32], [y], to=elem, name=y + "_round")]


def scan_body(kind: str) -> List[onnx.NodeProto]:
    step = _step(kind, "v_in", "x_t", "v_out", "y_t", "")
    body = helper.make_graph(
        step, f"{kind}_step",
        [helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("x_t", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("y_t", TensorProto.FLOAT, None)],
    )
    return _prologue(kind) + _initial_membrane(kind, "x", "v0", 1) + [
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
    nodes += _initial_membrane(kind, xs[0], "v_init", 0)
    v = "v_init"
    ys = []
    for t in range(T):
        p = f"t{t}_"
        nodes += _step(kind, v, xs[t], p + "v_next", p + "y", p)
        v = p + "v_next"
        ys.append(p + "y")
    nodes.append(helper.make_node("Concat", ys, ["y"], axis=0, name="concat_time"))
    return nodes


def _graph_names(graph, out: set) -> set:
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        out.add(vi.name)
    out.update(i.name for i in graph.initializer)
    for node in graph.node:
        out.update(n for n in node.input if n)
        out.update(n for n in node.output if n)
        for a in node.attribute:
            for g in ([a.g] if a.type == AttributeProto.GRAPH else list(a.graphs)):
                _graph_names(g, out)
    return out


def graph_value_names(graph) -> set:
    """Every value name of ``graph`` and its subgraphs (inputs, outputs, initializers, node edges)."""
    return _graph_names(graph, set())


def scope_prefix(graph=None) -> str:
    """:data:`SCOPE_PREFIX`, lengthened until no value name of ``graph`` starts with it."""
    prefix = SCOPE_PREFIX
    if graph is not None:
        names = graph_value_names(graph)
        while any(n.startswith(prefix) for n in names):
            prefix = "_" + prefix
    return prefix


def _rename(names: Iterable[str], prefix: str) -> list:
    return [prefix + n if n else n for n in names]


def _set_names(field, names: list) -> None:
    del field[:]
    field.extend(names)


def _scope_nodes(nodes: Iterable[onnx.NodeProto], prefix: str) -> None:
    for node in nodes:
        _set_names(node.input, _rename(node.input, prefix))
        _set_names(node.output, _rename(node.output, prefix))
        for a in node.attribute:
            for g in ([a.g] if a.type == AttributeProto.GRAPH else list(a.graphs)):
                for vi in list(g.input) + list(g.output) + list(g.value_info):
                    vi.name = prefix + vi.name
                _scope_nodes(g.node, prefix)


def _function(op_type: str, kind: str, inputs: list, outputs: list, nodes: List[onnx.NodeProto], opset: int,
              prefix: str, doc: str) -> onnx.FunctionProto:
    _scope_nodes(nodes, prefix)
    return helper.make_function(
        ONNX_DOMAIN, op_type, _rename(inputs, prefix), _rename(outputs, prefix), nodes,
        opset_imports=[helper.make_opsetid("", opset)],
        attributes=onnx_sj.attributes(kind) if kind.startswith("sj_") else IF_ATTRS if kind == "if" else LIF_ATTRS,
        doc_string=doc)


def function_formals(fn: onnx.FunctionProto) -> set:
    """The names a function body defines or reads (formals and intermediates, subgraphs included)."""
    names = set(fn.input) | set(fn.output)
    for node in fn.node:
        names.update(n for n in node.input if n)
        names.update(n for n in node.output if n)
        for a in node.attribute:
            for g in ([a.g] if a.type == AttributeProto.GRAPH else list(a.graphs)):
                names |= graph_value_names(g)
    return names


def function_proto(kind: str, body: str, opset: int, T: int | None = None, elem: int = TensorProto.FLOAT,
                   prefix: Optional[str] = None) -> onnx.FunctionProto:
    """The FunctionProto ``dsr::DSRIFSpike`` / ``dsr::DSRLIFSpike`` with the chosen body.

    ``elem``: the ONNX type of ``x`` / ``y`` (the body computes in float32); ``prefix``: the scope of its names
    (:func:`scope_prefix` of the graph that calls it)."""
    cast, x32 = _cast_in("x", elem)
    if body == "scan":
        nodes = scan_body(kind)
    elif body == "unrolled":
        if T is None:
            raise ValueError("the unrolled body needs a fixed T")
        nodes = unrolled_body(kind, T)
    else:
        raise ValueError(f"unknown function body {body!r}; choose from {BODIES}")
    if elem != TensorProto.FLOAT:  # the float32 body reads x32 and writes y32
        for node in nodes:
            _set_names(node.input, [x32 if n == "x" else n for n in node.input])
            _set_names(node.output, ["y32" if n == "y" else n for n in node.output])
        nodes = cast + nodes + _cast_out("y32", "y", elem)
    return _function(
        ONNX_OP_TYPES[kind], kind, ["x"], ["y"], nodes, opset, prefix or SCOPE_PREFIX,
        f"DSR-{kind.upper()} spike recurrence over a leading time axis, {body} body "
        "(bit-exact with dsr_deploy.functional in float32).")


def step_function_proto(kind: str, op_type: str, opset: int, elem: int = TensorProto.FLOAT,
                        prefix: Optional[str] = None) -> onnx.FunctionProto:
    """The single-step body (streaming ``DSRIFStep`` / ``DSRLIFStep``: inputs ``x_t, v`` -> ``y_t, v_new``):
    the same prologue and step as the multi-step bodies, so the ONNX math stays in one place. ``x_t`` / ``y_t``
    have type ``elem``; the membranes ``v`` / ``v_new`` are float32."""
    cast, x32 = _cast_in("x_t", elem)
    y32 = "y_t" if elem == TensorProto.FLOAT else "y32"
    nodes = cast + _prologue(kind) + _step(kind, "v", x32, "v_new", y32, "step_")
    if elem != TensorProto.FLOAT:
        nodes += _cast_out(y32, "y_t", elem)
    return _function(
        op_type, kind, ["x_t", "v"], ["y_t", "v_new"], nodes, opset, prefix or SCOPE_PREFIX,
        f"One DSR-{kind.upper()} time step with the membrane as explicit I/O "
        "(bit-exact with dsr_deploy.functional in float32).")


#: The quantised ops of ``export --precision int8 --int8-neuron quantized``: (x codes, x_scale, x_zero_point)
#: -> spike codes {0, 1} of x's type (uint8, or int8 with ``--int8-activations int8``), i.e. the float op on
#: DequantizeLinear(x) with its spikes as codes (scale = the spike value, zero point 0; exact).
def quantized_function_proto(kind: str, body: str, opset: int, T: int | None = None,
                             prefix: Optional[str] = None) -> onnx.FunctionProto:
    """The FunctionProto ``dsr::DSRIFSpikeQ`` / ``dsr::DSRLIFSpikeQ``: ``DequantizeLinear`` of the codes, the
    float32 body of :func:`function_proto` (the same nodes), spikes turned into codes (``y != 0``) of the type of
    the current's codes (``CastLike`` the zero point: one body serves uint8 and int8 codes)."""
    if body == "scan":
        float_nodes = scan_body(kind)
    elif body == "unrolled" and T is not None:
        float_nodes = unrolled_body(kind, T)
    else:
        raise ValueError(f"no quantised {body!r} body (T={T})")
    dq = helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero_point"], ["x"], name="dequantize_current")
    codes = [helper.make_node("Equal", ["y", "zero"], ["y_silent"], name="silent"),
             helper.make_node("Not", ["y_silent"], ["y_fired"], name="fired"),
             helper.make_node("CastLike", ["y_fired", "x_zero_point"], ["yq"], name="codes")]
    nodes = [dq] + float_nodes + codes
    return _function(
        QUANTIZED_OP_TYPES[kind], kind, ["xq", "x_scale", "x_zero_point"], ["yq"], nodes, opset,
        prefix or SCOPE_PREFIX,
        f"DSR-{kind.upper()} on a quantised current (uint8 / int8 codes, scale, zero point) -> spike codes {{0, 1}} "
        "of the codes' type, "
        f"{body} body (bit-exact with dsr_deploy.functional on the dequantised current).")
