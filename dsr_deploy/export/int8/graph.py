"""The int8 rewrite's view of an ONNX graph: which nodes are dsr neurons and weighted layers, where spikes come
from, and the small builders (constants, Q/DQ pairs) every int8 pass uses."""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ...contract import DOMAIN as ONNX_DOMAIN
from ...contract import QUANTIZED_OP_TYPES, SJ_SPIKE_OP_TYPES, SJ_STEP_OP_TYPES, SPIKE_OP_TYPES, STEP_OP_TYPES
from ...onnx_graph import GraphMaps

#: Ops that move values without changing them: spikes stay spikes through them.
EXACT_OPS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity"}
WEIGHTED_OPS = {"Conv", "Gemm", "MatMul"}
SJ_OPS = set(SJ_SPIKE_OP_TYPES.values()) | set(SJ_STEP_OP_TYPES.values())  # SpikingJelly's: spikes 0 / 1
DSR_FLOAT_OPS = set(SPIKE_OP_TYPES.values()) | set(STEP_OP_TYPES.values()) | SJ_OPS  # multi-step and streaming
LIF_OPS = {SPIKE_OP_TYPES["lif"], STEP_OP_TYPES["lif"], QUANTIZED_OP_TYPES["lif"]}


def spike_value(node: onnx.NodeProto) -> float:
    """The float32 value of a spike of ``node``: ``vth`` (IF), ``fl32(vth) / fl32(delta_t)`` (LIF), 1 (SpikingJelly)."""
    if node.op_type in SJ_OPS:  # SpikingJelly's spikes are 0 / 1: scale 1, exact
        return 1.0
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    vth = np.float32(attrs["v_threshold"])
    if node.op_type in LIF_OPS:
        return float(vth / np.float32(attrs["delta_t"]))
    return float(vth)

class Graph(GraphMaps):
    """Producer / consumer maps of a main graph (rebuilt after each rewrite) and the int8 rewrite's questions."""

    def is_dsr(self, node: Optional[onnx.NodeProto]) -> bool:
        return node is not None and node.domain == ONNX_DOMAIN and node.op_type in DSR_FLOAT_OPS

    def weighted(self, node: onnx.NodeProto) -> bool:
        return node.op_type in WEIGHTED_OPS and len(node.input) > 1 and node.input[1] in self.inits \
            and (node.op_type != "MatMul" or len(self.inits[node.input[1]].dims) == 2)

    def spike_source(self, tensor: str) -> Optional[onnx.NodeProto]:
        """The dsr node whose spikes ``tensor`` is (through value-preserving ops only), else None."""
        node = self.producer.get(tensor)
        while node is not None and node.op_type in EXACT_OPS:
            node = self.producer.get(node.input[0])
        return node if self.is_dsr(node) else None

    def spike_count(self, tensor: str) -> Optional[Tuple[float, int]]:
        """``(spike value, most spikes summed)`` when ``tensor`` is a sum of spike trains of one spike value (a SEW
        ResNet's ADD shortcut: every value is a count times the spike value), else None. Quantised with scale = the
        spike value and zero point 0 it is exact, as spikes are; a range calibrated on it would cut rare counts.
        A ``MaxPool`` keeps both (a max of counts is one of them: the zoo's stem pools its spikes), and the codes
        stay small: a calibrated range puts a count of 1 at code 255, which ONNX Runtime's u8s8 kernels on a CPU
        without VNNI saturate (int16 pair sums) -- measured: SEW ResNet-18's block-input layers 3-7 steps off."""
        node = self.producer.get(tensor)
        while node is not None and (node.op_type in EXACT_OPS or node.op_type == "MaxPool"):
            node = self.producer.get(node.input[0])
        if self.is_dsr(node):
            return spike_value(node), 1
        if node is None or node.op_type not in ("Add", "Sum"):
            return None
        parts = [self.spike_count(i) for i in node.input]
        if any(p is None for p in parts) or len({p[0] for p in parts}) != 1:
            return None
        return parts[0][0], sum(p[1] for p in parts)

    def upstream(self, tensor: str, stop) -> List[onnx.NodeProto]:
        """The nearest nodes upstream of ``tensor`` for which ``stop(node)`` holds (the search ends there)."""
        seen, found, todo = set(), [], [tensor]
        while todo:
            t = todo.pop()
            node = self.producer.get(t)
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            if stop(node):
                found.append(node)
            else:
                todo.extend(i for i in node.input if i and i not in self.inits)
        return found

    def downstream_has(self, tensor: str, pred) -> bool:
        seen, todo = set(), [tensor]
        while todo:
            t = todo.pop()
            for n in self.consumers.get(t, []):
                if id(n) in seen:
                    continue
                seen.add(id(n))
                if pred(n):
                    return True
                todo.extend(o for o in n.output if o)
        return False


def const(graph, name: str, array: np.ndarray) -> str:
    """Add ``array`` as initializer ``name``; returns the name."""
    graph.initializer.append(numpy_helper.from_array(array, name))
    return name


def qdq(graph, tensor: str, scale: float, zp: int, tag: str, code=np.uint8) -> Tuple[List[onnx.NodeProto], str]:
    """A QuantizeLinear -> DequantizeLinear pair on ``tensor`` (not yet inserted) and the dequantised name."""
    s = const(graph, f"{tag}_scale", np.array(scale, dtype=np.float32))
    z = const(graph, f"{tag}_zp", np.array(zp, dtype=code))
    q, dq = f"{tag}_q", f"{tag}_dq"
    return [helper.make_node("QuantizeLinear", [tensor, s, z], [q], name=f"{tag}_Q"),
            helper.make_node("DequantizeLinear", [q, s, z], [dq], name=f"{tag}_DQ")], dq


def safe_name(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)
