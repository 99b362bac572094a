"""``--int8-neuron quantized``: the dsr neurons of an int8 graph rewritten to run on the current codes."""

from __future__ import annotations

import json
from typing import Dict, List, Optional, Set, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ...contract import DOMAIN as ONNX_DOMAIN
from ...contract import QUANTIZED_OP_TYPES, SPIKE_OP_TYPES
from .graph import EXACT_OPS, Graph, const, safe_name, spike_value


class _Pass:
    """What the pass collects while it rewrites nodes: nodes to drop, the spike DequantizeLinear to insert after a
    rewritten node, the neuron kinds met, tensors whose recorded float types go and float spikes renamed."""

    def __init__(self, model: onnx.ModelProto):
        self.model, self.graph, self.g = model, model.graph, Graph(model)
        self.drop: Set[int] = set()
        self.after: Dict[int, onnx.NodeProto] = {}
        self.kinds: List[str] = []
        self.retyped: Set[str] = set()
        self.moved: Dict[str, str] = {}  # float spikes now named by their spike DequantizeLinear's output
        self.rewritten = 0

    def current_codes(self, d: onnx.NodeProto) -> Optional[Tuple[list, onnx.NodeProto]]:
        """``(Reshape* chain, DequantizeLinear)`` when ``d``'s current arrives as ``Q -> DQ -> Reshape* -> d``
        (each tensor read once, uint8 / int8 codes), else None."""
        g, inits = self.g, self.g.inits
        chain, t = [], d.input[0]
        while g.producer.get(t) is not None and g.producer[t].op_type in EXACT_OPS and len(g.consumers[t]) == 1:
            chain.append(g.producer[t])
            t = g.producer[t].input[0]
        dq = g.producer.get(t)
        if dq is None or dq.op_type != "DequantizeLinear" or len(g.consumers[t]) != 1 \
                or g.producer.get(dq.input[0]) is None or g.producer[dq.input[0]].op_type != "QuantizeLinear" \
                or inits.get(dq.input[2]) is None \
                or inits[dq.input[2]].data_type not in (TensorProto.UINT8, TensorProto.INT8):
            return None
        return chain, dq

    def rewrite(self, d: onnx.NodeProto, chain: list, dq: onnx.NodeProto) -> None:
        """``d`` becomes its quantised op on the codes; its spikes leave as codes into the spike DequantizeLinear."""
        g = self.g
        code = numpy_helper.to_array(g.inits[dq.input[2]]).dtype  # the spike codes have the current codes' type
        codes_in = dq.input[0]
        if chain:
            chain[-1].input[0] = codes_in
            self.retyped.update(n.output[0] for n in chain)  # now uint8: their recorded float types go
        kind = "lif" if d.op_type == SPIKE_OP_TYPES["lif"] else "if"
        if kind not in self.kinds:
            self.kinds.append(kind)
        y = d.output[0]
        qs = next((n for n in g.consumers.get(y, []) if n.op_type == "QuantizeLinear"), None)
        value = spike_value(d)
        d.op_type = QUANTIZED_OP_TYPES[kind]
        cur = chain[0].output[0] if chain else codes_in
        del d.input[:]
        d.input.extend([cur, dq.input[1], dq.input[2]])
        d.output[0] = y + "_codes"
        self.drop.add(id(dq))
        self.rewritten += 1
        remaining = [n for n in g.consumers.get(y, []) if n is not qs] or y in g.outputs
        if qs is not None:
            scale, zp = qs.input[1], qs.input[2]
            spike_dqs = g.consumers.get(qs.output[0], [])
            for n in spike_dqs:
                for k, i in enumerate(n.input):
                    if i == qs.output[0]:
                        n.input[k] = d.output[0]
            self.drop.add(id(qs))
            if not remaining and spike_dqs:  # the spike DequantizeLinear gives the float spikes (exact)
                self.moved[y] = spike_dqs[0].output[0]
                return
        else:
            scale = const(self.graph, f"int8_{safe_name(y)}_spike_scale", np.array(value, np.float32))
            zp = const(self.graph, f"int8_{safe_name(y)}_spike_zp", np.array(0, code))
        self.after[id(d)] = helper.make_node("DequantizeLinear", [d.output[0], scale, zp], [y],
                                             name=f"{d.name}_spikes")

    def reorder(self) -> None:
        order = []
        for n in self.graph.node:
            if id(n) in self.drop:
                continue
            order.append(n)
            if id(n) in self.after:
                order.append(self.after[id(n)])
        del self.graph.node[:]
        self.graph.node.extend(order)

    def finish(self) -> None:
        """The metadata, value infos and function bodies that follow the rewrite."""
        from ..onnx_functions import quantized_function_proto

        model, graph = self.model, self.graph
        for prop in model.metadata_props:  # probes and tools find each neuron's float spikes under the new name
            if prop.key == "dsr_deploy.layer_outputs":
                prop.value = json.dumps([[i, self.moved.get(t, t)] for i, t in json.loads(prop.value)])
        if self.rewritten:  # a quantised op reads codes, not a float current: no float input to record (the
            #                 float dsr nodes' inputs are still found from the nodes themselves)
            props = [p for p in model.metadata_props if p.key != "dsr_deploy.layer_inputs"]
            del model.metadata_props[:]
            model.metadata_props.extend(props)
        keep = [vi for vi in graph.value_info if vi.name not in self.retyped]
        del graph.value_info[:]
        graph.value_info.extend(keep)
        meta = {p.key: p.value for p in model.metadata_props}
        fns = {f.name: f for f in model.functions}
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
        for kind in self.kinds:
            ref = fns.get(SPIKE_OP_TYPES[kind])
            prefix = ref.input[0][:-1] if ref is not None else None
            body = meta.get("dsr_deploy.function_body", "scan")
            model.functions.append(quantized_function_proto(kind, body, opset, T=int(meta.get("dsr_deploy.T", 0))
                                                            or None, prefix=prefix))


def quantized_neurons(model: onnx.ModelProto) -> int:
    """``--int8-neuron quantized``: each multi-step dsr node whose current arrives quantised (``Q -> DQ ->
    Reshape* -> node``, each tensor read once) becomes ``dsr::DSRIFSpikeQ`` / ``DSRLIFSpikeQ`` on the codes (uint8
    or int8: ``Q -> Reshape* -> nodeQ``), and its spikes leave as codes of that type straight into the spike
    ``DequantizeLinear`` (no separate dequantise / quantise pass around the neuron). The float spikes keep their
    tensor name (a ``DequantizeLinear`` of the codes: exact), so probes still find them. Returns the number of
    nodes rewritten."""
    p = _Pass(model)
    for d in list(model.graph.node):
        if d.domain != ONNX_DOMAIN or d.op_type not in SPIKE_OP_TYPES.values():
            continue
        found = p.current_codes(d)
        if found is not None:
            p.rewrite(d, *found)
    p.reorder()
    p.finish()
    return p.rewritten
