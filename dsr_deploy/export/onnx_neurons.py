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

import json
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import onnx
from onnx import helper

from ..convert import ONNX_OP_TYPES
from ..onnx_graph import dsr_nodes

META_LAYER_OUTPUTS = "dsr_deploy.layer_outputs"  # [[layer index, output tensor], ...] in call order
META_LAYER_INPUTS = "dsr_deploy.layer_inputs"  # [[layer index, input tensor], ...] in call order
META_INDEX = "dsr.layer_index"  # metadata_props of a dsr node: its layer index
_DSR_OP_TYPES = set(ONNX_OP_TYPES.values())


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


def _attrs(node: onnx.NodeProto) -> Dict[str, object]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _meta(model: onnx.ModelProto) -> Dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


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
    sites = []
    for call, ((layer, out), inp) in enumerate(zip(outputs, inputs)):
        node = by_output.get(out)
        site = NeuronSite(call, layer, inp, out)
        if node is not None:
            site.input = site.input or node.input[0]
            site.node, site.op_type, site.attributes = node.name, node.op_type, _attrs(node)
        sites.append(site)
    return sites


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
    producer = {o: n for n in g.node for o in n.output if o}
    inits = {t.name: t for t in g.initializer}
    graph_inputs = {i.name for i in g.input}
    keep_nodes: Dict[int, onnx.NodeProto] = {}
    keep_inits: Dict[str, onnx.TensorProto] = {}
    order = {id(n): k for k, n in enumerate(g.node)}
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
