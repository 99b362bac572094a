"""Pruning a rewritten int8 graph: nodes nothing reads, and the nodes only probes need (moved to the metadata by
the channels-last pass, :mod:`.layout`)."""

from __future__ import annotations

import json
from typing import List

import onnx

from ..onnx_neurons import META_LAYER_INPUTS, META_LAYER_OUTPUTS


def _recorded(model: onnx.ModelProto) -> set:
    """The tensors the metadata names (each neuron call's spikes and input, for probes)."""
    names = set()
    for p in model.metadata_props:
        if p.key in (META_LAYER_OUTPUTS, META_LAYER_INPUTS):
            names.update(t for _, t in json.loads(p.value))
    return names


def prune(model: onnx.ModelProto) -> None:
    """Drop nodes whose outputs nothing reads (repeat until stable; the recorded neuron tensors stay) and
    initializers no node reads."""
    g = model.graph
    outs = {o.name for o in g.output} | _recorded(model)
    while True:
        used = {i for n in g.node for i in n.input} | outs
        keep = [n for n in g.node if any(o in used for o in n.output if o)]
        if len(keep) == len(g.node):
            break
        del g.node[:]
        g.node.extend(keep)
    used = {i for n in g.node for i in n.input}
    inits = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(inits)


def detach_probe_nodes(model: onnx.ModelProto) -> List[onnx.NodeProto]:
    """Move the nodes that only the recorded neuron tensors need (e.g. a spike ``DequantizeLinear`` whose float
    spikes no layer reads) out of the graph, so the inference file does not compute them; returns them (in
    order) for :data:`META_PROBE_NODES`. ONNX Runtime runs every node of a graph, read or not."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output if o}
    needed, todo = set(), [o.name for o in g.output]
    while todo:
        n = producer.get(todo.pop())
        if n is None or id(n) in needed:
            continue
        needed.add(id(n))
        todo.extend(i for i in n.input if i)
        for a in n.attribute:  # subgraphs read outer tensors
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                todo.extend(i for sn in sub.node for i in sn.input if i)
    detached = [n for n in g.node if id(n) not in needed]
    keep = [n for n in g.node if id(n) in needed]
    del g.node[:]
    g.node.extend(keep)
    return detached
