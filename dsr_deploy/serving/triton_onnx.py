"""The ONNX edge rewrites of a Triton model repository (``dsr-deploy triton-repo``); the math is untouched.

* multi-step models ``input [T, B, ...] -> output [T, B, ...]`` become batch first (:func:`batch_first_multistep`:
  a Transpose at each edge), so Triton can batch along the first dimension;
* streaming models get the sequence controls START and READY (:func:`add_sequence_controls`): START zeroes the
  incoming membranes, READY=false keeps a slot's membranes.

The graph's edges are read as :class:`Edge` records (name, ONNX element type, dims) shared with the config writer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..contract import STATE_IN_PREFIX, STREAM_INPUT, state_input_name, state_output_name
from ..errors import UserError

START, READY = "START", "READY"

_ONNX_TO_TRITON = {
    1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16", 5: "TYPE_INT16", 6: "TYPE_INT32",
    7: "TYPE_INT64", 9: "TYPE_BOOL", 10: "TYPE_FP16", 11: "TYPE_FP64", 12: "TYPE_UINT32", 13: "TYPE_UINT64",
    16: "TYPE_BF16",
}


@dataclass
class Edge:
    name: str
    elem_type: int
    dims: list  # int or str (symbolic) per dimension

    @property
    def triton_type(self) -> str:
        if self.elem_type not in _ONNX_TO_TRITON:
            raise UserError(f"tensor {self.name}: ONNX element type {self.elem_type} has no Triton equivalent")
        return _ONNX_TO_TRITON[self.elem_type]


def edges(values) -> list[Edge]:
    out = []
    for v in values:
        tt = v.type.tensor_type
        dims = [d.dim_param if d.HasField("dim_param") else (d.dim_value if d.HasField("dim_value") else "?")
                for d in tt.shape.dim]
        out.append(Edge(v.name, tt.elem_type, dims))
    return out


def is_streaming(inputs: Sequence[Edge]) -> bool:
    names = {e.name for e in inputs}
    return STREAM_INPUT in names and state_input_name(0) in names


def state_pairs(inputs: Sequence[Edge], outputs: Sequence[Edge]) -> list[tuple[Edge, Edge]]:
    ins = {e.name: e for e in inputs}
    outs = {e.name: e for e in outputs}
    pairs, i = [], 0
    while state_input_name(i) in ins:
        if state_output_name(i) not in outs:
            raise UserError(f"streaming model has {state_input_name(i)} but no {state_output_name(i)}")
        pairs.append((ins[state_input_name(i)], outs[state_output_name(i)]))
        i += 1
    return pairs


def _rename_uses(graph, old: str, new: str) -> None:
    for node in graph.node:
        for i, n in enumerate(node.input):
            if n == old:
                node.input[i] = new


def _rename_producer(graph, old: str, new: str) -> None:
    for node in graph.node:
        for i, n in enumerate(node.output):
            if n == old:
                node.output[i] = new
    _rename_uses(graph, old, new)


def batch_first_multistep(model, output_spikes: bool | None = None) -> bool:
    """``input [T, B, ...] -> output [T, B, ...]`` becomes ``[B, T, ...] -> [B, T, ...]``; False if not that.
    ``output_spikes`` (from the manifest's ``io``): whether the output is a ``[T, B, ...]`` spike train (False:
    logits ``[B, ...]``, left as they are); None: guessed from the dims."""
    from onnx import helper

    g = model.graph
    ins, outs = edges(g.input), edges(g.output)
    if len(ins) != 1 or len(outs) != 1 or len(ins[0].dims) < 2:
        return False
    x, y = ins[0], outs[0]
    rank_x, rank_y = len(x.dims), len(y.dims)
    inner_x, inner_y = x.name + "__tb", y.name + "__tb"
    _rename_uses(g, x.name, inner_x)
    perm_x = [1, 0] + list(range(2, rank_x))
    new_nodes = [helper.make_node("Transpose", [x.name], [inner_x], perm=perm_x, name="triton_batch_first_in")]
    # Output: transposed back when it keeps [T, B, ...] (its first two dims are the input's).
    transpose_out = rank_y >= 2 and y.dims[:2] == x.dims[:2] if output_spikes is None else output_spikes
    if transpose_out:
        _rename_producer(g, y.name, inner_y)
        perm_y = [1, 0] + list(range(2, rank_y))
        tail = [helper.make_node("Transpose", [inner_y], [y.name], perm=perm_y, name="triton_batch_first_out")]
    else:
        tail = []
    nodes = new_nodes + list(g.node) + tail
    del g.node[:]
    g.node.extend(nodes)
    _set_dims(g.input[0], [x.dims[1], x.dims[0], *x.dims[2:]])
    if transpose_out:
        _set_dims(g.output[0], [y.dims[1], y.dims[0], *y.dims[2:]])
    return True


def _set_dims(value_info, dims) -> None:
    shape = value_info.type.tensor_type.shape
    del shape.dim[:]
    for d in dims:
        nd = shape.dim.add()
        if isinstance(d, int):
            nd.dim_value = d
        elif d != "?":
            nd.dim_param = d


def add_sequence_controls(model, batched: bool = True) -> None:
    """Streaming model: add bool inputs START [B, 1] and READY [B, 1] (``[1]`` without batching: Triton's
    onnxruntime backend then wants a control input of exactly ``[1]``, applied to the whole request).

    START=true replaces the incoming membranes by zeros (a new sequence in a reused slot); READY=false returns
    the incoming membranes unchanged (an empty batch slot must not advance a state)."""
    from onnx import TensorProto, helper

    g = model.graph
    ins, outs = edges(g.input), edges(g.output)
    pairs = state_pairs(ins, outs)
    batch = next(e for e in ins if e.name == STREAM_INPUT).dims[0]
    zero = helper.make_tensor("z", TensorProto.FLOAT, [], [0.0])
    nodes = [helper.make_node("Constant", [], ["triton_zero"], value=zero)]
    tail = []
    for i, (vin, vout) in enumerate(pairs):
        rank = len(vin.dims)
        shape_name = f"triton_ctl_shape_{i}"
        nodes.append(helper.make_node("Constant", [], [shape_name],
                                      value=helper.make_tensor(shape_name, TensorProto.INT64, [rank],
                                                               [-1] + [1] * (rank - 1))))
        nodes.append(helper.make_node("Reshape", [START, shape_name], [f"triton_start_{i}"]))
        nodes.append(helper.make_node("Reshape", [READY, shape_name], [f"triton_ready_{i}"]))
        used = f"{vin.name}__seq"
        _rename_uses(g, vin.name, used)
        nodes.append(helper.make_node("Where", [f"triton_start_{i}", "triton_zero", vin.name], [used]))
        stepped = f"{vout.name}__step"
        _rename_producer(g, vout.name, stepped)
        tail.append(helper.make_node("Where", [f"triton_ready_{i}", stepped, used], [vout.name]))
    # Keep topological order: controls first, original graph, then the READY selects.
    ordered = nodes + list(g.node) + tail
    del g.node[:]
    g.node.extend(ordered)
    for ctl in (START, READY):
        g.input.append(helper.make_tensor_value_info(ctl, TensorProto.BOOL, [batch, 1] if batched else [1]))


def first_dim_dynamic(inputs: Sequence[Edge], streaming: bool) -> bool:
    """Whether the dimension Triton batches along is dynamic in every input that is batched."""
    edges = [e for e in inputs if not streaming or e.name == STREAM_INPUT or e.name.startswith(STATE_IN_PREFIX)]
    if not streaming and len(edges) == 1 and not batch_first(edges) and len(edges[0].dims) >= 2:
        return not (isinstance(edges[0].dims[1], int) and edges[0].dims[1] > 0)  # [T, B, ...]: B becomes first
    return all(e.dims and not (isinstance(e.dims[0], int) and e.dims[0] > 0) for e in edges)


def batch_first(inputs: Sequence[Edge]) -> bool:
    # An exported multi-step model is [T, B, ...]: its batch is not first. We only call a model batch-first
    # when its single input's first dim is named like a batch.
    return len(inputs) == 1 and isinstance(inputs[0].dims[0], str) and "batch" in inputs[0].dims[0].lower()
