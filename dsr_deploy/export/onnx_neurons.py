"""The neuron layers of an exported ONNX file, each cut out as a model of its own.

``verify``'s teacher-forced check runs an artifact's own neuron implementation on exactly the input the PyTorch
reference gave that neuron. For ONNX that implementation is part of the file: the ``dsr`` node with its attributes
(and the model-local function a stock runtime inlines), or, after a portable lowering, the standard ops the body
was inlined into. :func:`neuron_sites` finds every neuron call of a file (input and output tensor names, layer
index, the node's attributes); :func:`neuron_submodel` cuts the ops between that input and output out of the file,
with the initializers, functions and opset imports they use, so any ONNX runner (ONNX Runtime with or without the
dsr custom-op library, TensorRT) runs the neuron alone, as the artifact holds it. Nothing is re-derived from the
PyTorch model.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import onnx
from onnx import helper

from ..contract import QUANTIZED_OP_TYPES
from ..convert import ALL_OP_TYPES, ONNX_DOMAIN
from ..onnx_graph import dsr_nodes

META_LAYER_OUTPUTS = "dsr_deploy.layer_outputs"  # [[layer index, output tensor], ...] in call order
META_LAYER_INPUTS = "dsr_deploy.layer_inputs"  # [[layer index, input tensor], ...] in call order
# A channels-last int8 file (``--int8-layout nhwc``): {tensor: permutation back to its original layout}, and the
# nodes only probes need, moved out of the graph (serialized NodeProtos, base64, in order).
META_CHANNELS_LAST = "dsr_deploy.channels_last"
META_PROBE_NODES = "dsr_deploy.probe_nodes"
META_INDEX = "dsr.layer_index"  # metadata_props of a dsr node: its layer index
_DSR_OP_TYPES = set(ALL_OP_TYPES.values())


@dataclass
class NeuronSite:
    """One neuron call of an ONNX graph."""

    call: int  # position among the graph's neuron calls
    layer: int  # the layer index the exporter recorded
    input: Optional[str]  # tensor names in the outer graph (input None: not recorded, an old portable file)
    output: str
    node: str = ""  # the dsr node's name ("" after a portable lowering)
    op_type: str = ""
    attributes: Dict[str, object] = field(default_factory=dict)
    # An int8 quantised neuron op (``--int8-neuron quantized``): current codes in, spike codes out (uint8 / int8), its
    # float spikes the output of the DequantizeLinear after it (:func:`quantized_neuron_submodel`).
    quantized: bool = False


def _attrs(node: onnx.NodeProto) -> Dict[str, object]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _meta(model: onnx.ModelProto) -> Dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def probe_nodes(model: onnx.ModelProto) -> List[onnx.NodeProto]:
    """The nodes a channels-last int8 file keeps out of its graph because only probes read their outputs. A file
    is untrusted: anything that is not a list of ONNX nodes is a ValueError."""
    raw = _meta(model).get(META_PROBE_NODES)
    if raw is None:
        return []
    try:
        nodes = []
        for item in json.loads(raw):
            node = onnx.NodeProto()
            node.ParseFromString(base64.b64decode(item, validate=True))
            nodes.append(node)
        return nodes
    except Exception as exc:
        raise ValueError(f"metadata {META_PROBE_NODES} is not a list of ONNX nodes") from exc


def channels_last_map(model: onnx.ModelProto) -> Dict[str, List[int]]:
    """``{tensor: permutation back to its original layout}`` of a channels-last int8 file (else empty); checked."""
    raw = _meta(model).get(META_CHANNELS_LAST)
    if raw is None:
        return {}
    try:
        perms = json.loads(raw)
        if isinstance(perms, dict) and all(isinstance(k, str) and isinstance(v, list) and sorted(v) ==
                                           list(range(len(v))) for k, v in perms.items()):
            return {k: [int(i) for i in v] for k, v in perms.items()}
    except ValueError:
        pass
    raise ValueError(f"metadata {META_CHANNELS_LAST} is not a map of tensor names to permutations")


def all_nodes(model: onnx.ModelProto) -> List[onnx.NodeProto]:
    """The main graph's nodes and, after them, those kept for probes only (:func:`probe_nodes`)."""
    return list(model.graph.node) + probe_nodes(model)


def neuron_sites(model: onnx.ModelProto) -> List[NeuronSite]:
    """Every neuron call of ``model``'s main graph, in call order."""
    meta = _meta(model)
    by_output = {n.output[0]: n for n in dsr_nodes(model, _DSR_OP_TYPES, subgraphs=False) if n.output}
    if META_LAYER_OUTPUTS in meta:
        outputs = [(int(i), str(t)) for i, t in json.loads(meta[META_LAYER_OUTPUTS])]
    else:  # not written by this version: the dsr nodes themselves
        outputs = []
        for call, n in enumerate(by_output.values()):
            m = {p.key: p.value for p in n.metadata_props}
            outputs.append((int(m.get(META_INDEX, call)), n.output[0]))
    inputs: List[Optional[str]] = [None] * len(outputs)
    if META_LAYER_INPUTS in meta:
        recorded = json.loads(meta[META_LAYER_INPUTS])
        if len(recorded) == len(outputs):
            inputs = [str(t) for _, t in recorded]
    producer = {o: n for n in all_nodes(model) for o in n.output if o}
    sites = []
    for call, ((layer, out), inp) in enumerate(zip(outputs, inputs)):
        node = by_output.get(out)
        site = NeuronSite(call, layer, inp, out)
        if node is not None:
            site.input = site.input or node.input[0]
            site.node, site.op_type, site.attributes = node.name, node.op_type, _attrs(node)
        else:
            q = _quantized_op(producer, out)
            if q is not None:
                site.node, site.op_type, site.attributes, site.quantized = q.name, q.op_type, _attrs(q), True
        sites.append(site)
    return sites


def _quantized_op(producer: Dict[str, onnx.NodeProto], out: str) -> Optional[onnx.NodeProto]:
    """The quantised dsr op whose spike codes the DequantizeLinear producing ``out`` reads, if that is so."""
    dq = producer.get(out)
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    op = producer.get(dq.input[0])
    if op is None or op.domain != ONNX_DOMAIN or op.op_type not in QUANTIZED_OP_TYPES.values():
        return None
    return op


QUANTIZED_INPUT, QUANTIZED_OUTPUT, QUANTIZED_SEEN = "neuron_current", "neuron_spikes", "neuron_current_seen"


def quantized_neuron_submodel(model: onnx.ModelProto, site: NeuronSite, rank: int) -> onnx.ModelProto:
    """A quantised neuron op of ``model`` as a model of its own: a float current ``neuron_current`` (``[T, B, ...]``)
    is quantised with the op's input scale and zero point, the op runs on the codes with its attributes, and its
    spike codes are dequantised with the spike scale (``neuron_spikes``). ``neuron_current_seen`` is the current the
    op actually integrates (the codes dequantised), so a reference neuron can be fed exactly that."""
    producer = {o: n for n in all_nodes(model) for o in n.output if o}
    dq = producer[site.output]
    op = _quantized_op(producer, site.output)
    if op is None:
        raise ValueError(f"layer {site.layer}: {site.output!r} is not a quantised neuron's output")
    consts: Dict[str, onnx.TensorProto] = {t.name: t for t in model.graph.initializer}
    needed = [op.input[1], op.input[2], dq.input[1]] + ([dq.input[2]] if len(dq.input) > 2 and dq.input[2] else [])
    inits, nodes = [], []
    for name in dict.fromkeys(needed):
        if name in consts:
            inits.append(consts[name])
        elif name in producer and producer[name].op_type == "Constant":
            nodes.append(producer[name])
        else:
            raise ValueError(f"layer {site.layer}: the quantisation parameter {name!r} is not a constant")
    codes_in, codes_out = "neuron_current_codes", "neuron_spike_codes"
    q_node = helper.make_node("QuantizeLinear", [QUANTIZED_INPUT, op.input[1], op.input[2]], [codes_in],
                              name="quantize_current")
    seen = helper.make_node("DequantizeLinear", [codes_in, op.input[1], op.input[2]], [QUANTIZED_SEEN],
                            name="current_seen")
    neuron = onnx.NodeProto()
    neuron.CopyFrom(op)
    del neuron.input[:]
    neuron.input.extend([codes_in, op.input[1], op.input[2]])
    del neuron.output[:]
    neuron.output.append(codes_out)
    spikes = helper.make_node("DequantizeLinear", [codes_out] + list(dq.input[1:]), [QUANTIZED_OUTPUT],
                              name="spikes")
    dims = [f"d{k}" for k in range(rank)]
    graph = helper.make_graph(
        nodes + [q_node, seen, neuron, spikes], f"dsr_layer_{site.layer}_quantized_neuron",
        [helper.make_tensor_value_info(QUANTIZED_INPUT, onnx.TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info(QUANTIZED_OUTPUT, onnx.TensorProto.FLOAT, dims),
         helper.make_tensor_value_info(QUANTIZED_SEEN, onnx.TensorProto.FLOAT, dims)],
        initializer=inits)
    out = helper.make_model(graph, opset_imports=list(model.opset_import), functions=list(model.functions),
                            producer_name="dsr-deploy verify")
    out.ir_version = model.ir_version
    return out


def _subgraph_refs(node: onnx.NodeProto) -> set:
    """Names a node's subgraphs (Scan / Loop / If bodies) read from the enclosing scope."""
    refs: set = set()

    def walk(g: onnx.GraphProto) -> None:
        local = {i.name for i in g.input} | {t.name for t in g.initializer}
        for n in g.node:
            local |= set(n.output)
        for n in g.node:
            refs.update(x for x in n.input if x and x not in local)
            for a in n.attribute:
                for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                    walk(sub)

    for a in node.attribute:
        for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
            walk(sub)
    return refs


def neuron_submodel(model: onnx.ModelProto, site: NeuronSite, elem_type: int = onnx.TensorProto.FLOAT,
                    rank: Optional[int] = None) -> onnx.ModelProto:
    """The ops of ``model`` between ``site.input`` and ``site.output`` as a model with that one input and output
    (same names, functions, opsets, metadata of the node). Raises ValueError when the neuron's output depends on
    anything but its input and constants."""
    if site.input is None:
        raise ValueError(f"layer {site.layer}: the file does not record the neuron's input tensor")
    g = model.graph
    nodes_all = all_nodes(model)
    producer = {o: n for n in nodes_all for o in n.output if o}
    inits = {t.name: t for t in g.initializer}
    graph_inputs = {i.name for i in g.input}
    keep_nodes: Dict[int, onnx.NodeProto] = {}
    keep_inits: Dict[str, onnx.TensorProto] = {}
    order = {id(n): k for k, n in enumerate(nodes_all)}
    todo = [site.output]
    seen = set()
    while todo:
        name = todo.pop()
        if name in seen or name == site.input or not name:
            continue
        seen.add(name)
        if name in producer:
            node = producer[name]
            if id(node) not in keep_nodes:
                keep_nodes[id(node)] = node
                todo.extend(node.input)
                todo.extend(_subgraph_refs(node))
        elif name in inits:
            keep_inits[name] = inits[name]
        elif name in graph_inputs:
            raise ValueError(f"layer {site.layer}: the neuron's output depends on graph input {name!r}")
        else:
            raise ValueError(f"layer {site.layer}: tensor {name!r} has no producer")
    if site.input not in seen and not any(site.input in n.input or site.input in _subgraph_refs(n)
                                          for n in keep_nodes.values()):
        raise ValueError(f"layer {site.layer}: output {site.output!r} does not depend on input {site.input!r}")
    nodes = sorted(keep_nodes.values(), key=lambda n: order[id(n)])
    dims = [f"d{k}" for k in range(rank)] if rank is not None else None
    sub = helper.make_graph(
        nodes, f"dsr_layer_{site.layer}_neuron",
        [helper.make_tensor_value_info(site.input, elem_type, dims)],
        [helper.make_tensor_value_info(site.output, elem_type, dims)],
        initializer=list(keep_inits.values()),
    )
    out = helper.make_model(sub, opset_imports=list(model.opset_import), functions=list(model.functions),
                            producer_name="dsr-deploy verify")
    out.ir_version = model.ir_version
    return out
