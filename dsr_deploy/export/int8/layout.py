"""``export --precision int8 --int8-layout nhwc``: the int8 graph rewritten channels-last for ONNX Runtime's CPU.

ONNX Runtime runs a quantised convolution (``QLinearConv``, fused from the Q/DQ form) only channels-last: its
optimiser turns each one into ``com.microsoft.QLinearConv`` (``channels_last=1``) with a ``Transpose`` on either
side, and removes a pair of them only when nothing between two convolutions stops it. In a spiking network a dsr
neuron (a custom op, a ``Reshape`` to ``[T, B, ...]`` and back around it) sits between every two convolutions,
so every convolution keeps both transposes: about a fifth of PreAct-ResNet-18's int8 time on a 2-core CPU.

This pass writes the graph channels-last itself, so no transpose is left between two convolutions:

* each quantised 2-D ``Conv`` in Q/DQ form (input, weight and bias dequantised from codes, its output read only
  by a ``QuantizeLinear``) becomes ``com.microsoft.QLinearConv`` with ``channels_last=1`` on the codes -- the op
  ONNX Runtime would fuse it into, so the arithmetic is the same;
* an ``Add`` of two per-tensor dequantised uint8 tensors whose output only a ``QuantizeLinear`` reads (the
  residual add, :mod:`.residual`) becomes ``com.microsoft.QLinearAdd`` on the codes (element-wise: any layout);
* a float 2-D ``Conv`` (the analog first layer) gives its output channels-last through one ``Transpose``;
* element-wise ops (the dsr neurons, ``QuantizeLinear`` / ``DequantizeLinear`` per tensor, ``Add``, ...) carry the
  layout; a ``Reshape`` that only splits or merges the leading (time, batch) dimensions carries it with its
  target shape's channel dimension moved last; an inference ``BatchNormalization`` runs on a ``[-1, C]`` view of
  the channels-last tensor (the same op, so the same arithmetic per element);
* any other consumer (pooling, ``Flatten``, the readout, a graph output) reads the tensor after one ``Transpose``
  back to the original layout.

A channels-last tensor keeps its name; the metadata ``dsr_deploy.channels_last`` maps each one to the permutation
that gives the original layout back, and probes apply it. Graph outputs keep their names and layout. Nodes whose
outputs only probes read (the float spikes of a quantised neuron op that no layer reads) move to the metadata
``dsr_deploy.probe_nodes``: ONNX Runtime runs every node of a graph, read or not, and probes put them back.

The file then runs only on ONNX Runtime's CPU provider (``com.microsoft.QLinearConv`` is its contrib op); the
default layout (``nchw``) stays the portable Q/DQ graph for other runtimes and TensorRT. The neurons are
untouched: given its input each one still gives the reference's spikes bit for bit.
"""

from __future__ import annotations

import base64
import json
from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ...contract import QUANTIZED_OP_TYPES
from ...convert import ONNX_DOMAIN
from ...onnx_graph import GraphMaps
from ..onnx_neurons import META_CHANNELS_LAST, META_PROBE_NODES
from .prune import detach_probe_nodes, prune

ORT_DOMAIN = "com.microsoft"

#: Ops applied element by element (one output element from the same position of each input): any layout passes.
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "Identity", "Neg",
               "Abs", "Max", "Min", "Cast", "QuantizeLinear", "DequantizeLinear", "QLinearAdd"}
_SHAPE_OPS = ("Reshape", "Unsqueeze", "Squeeze")  # between a DequantizeLinear and the Conv it feeds
_CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")


def to_nchw_perm(rank: int) -> List[int]:
    """The permutation taking a channels-last tensor of ``rank`` (channel axis -3 in the original) back."""
    return list(range(rank - 3)) + [rank - 1, rank - 3, rank - 2]


def to_channels_last_perm(rank: int) -> List[int]:
    return list(range(rank - 3)) + [rank - 2, rank - 1, rank - 3]


def _scalar_init(inits, name: str) -> bool:
    return name in inits and int(np.prod(inits[name].dims or [1])) == 1


class _Rewrite:
    """One pass over a model's main graph: its producers, consumers, initializers and the recorded (logical) shapes
    (``None`` for a dimension known only at run time)."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        g = model.graph
        maps = GraphMaps(model)
        self.inits, self.producer, self.consumers = maps.inits, maps.producer, maps.consumers
        self._vi = {vi.name: vi for vi in list(g.value_info) + list(g.input) + list(g.output)}
        self.shapes: Dict[str, List] = {name: [d.dim_value if d.HasField("dim_value") else None
                                               for d in vi.type.tensor_type.shape.dim]
                                        for name, vi in self._vi.items() if vi.type.tensor_type.HasField("shape")}
        self.shapes.update((i.name, list(i.dims)) for i in g.initializer)
        self.count = 0

    def fresh(self, base: str) -> str:
        self.count += 1
        return f"{base}__cl{self.count}"

    def const(self, name: str, array: np.ndarray) -> str:
        name = self.fresh(name)
        self.model.graph.initializer.append(numpy_helper.from_array(array, name))
        self.inits[name] = self.model.graph.initializer[-1]
        return name

    def copy_shape(self, src: str, dst: str, typed_like: str) -> None:
        """Record ``dst`` (codes) with the logical shape of ``src`` and the element type of ``typed_like``."""
        vi = self._vi.get(src)
        if vi is None or dst in self.shapes or typed_like not in self.inits:
            return
        new = onnx.ValueInfoProto()
        new.CopyFrom(vi)
        new.name = dst
        new.type.tensor_type.elem_type = self.inits[typed_like].data_type
        self.model.graph.value_info.append(new)
        self._vi[dst] = new
        self.shapes[dst] = self.shapes[src]

    # ---- step 1: Q/DQ convolutions -> com.microsoft.QLinearConv(channels_last=1), still reading NCHW codes
    def _dq(self, tensor: str, per_tensor: bool) -> Optional[onnx.NodeProto]:
        dq = self.producer.get(tensor)
        if dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) < 3:
            return None
        if per_tensor and not (_scalar_init(self.inits, dq.input[1]) and _scalar_init(self.inits, dq.input[2])):
            return None
        return dq

    def fuse_convs(self) -> int:
        g = self.model.graph
        drop, replace = set(), {}
        for conv in g.node:
            if conv.op_type != "Conv" or len(conv.input) < 2:
                continue
            wdq = self._dq(conv.input[1], per_tensor=False)
            if wdq is None or wdq.input[0] not in self.inits or len(self.inits[wdq.input[0]].dims) != 4 \
                    or self.inits[wdq.input[0]].data_type != TensorProto.INT8:
                continue
            chain, t = [], conv.input[0]
            while self.producer.get(t) is not None and self.producer[t].op_type in _SHAPE_OPS:
                chain.append(self.producer[t])
                t = self.producer[t].input[0]
            xdq = self._dq(t, per_tensor=True)
            users = self.consumers.get(conv.output[0], [])
            if xdq is None or len(users) != 1 or users[0].op_type != "QuantizeLinear" \
                    or conv.output[0] in {o.name for o in g.output} \
                    or not (_scalar_init(self.inits, users[0].input[1]) and len(users[0].input) > 2
                            and _scalar_init(self.inits, users[0].input[2])):
                continue
            bias = ""
            if len(conv.input) > 2 and conv.input[2]:
                bdq = self._dq(conv.input[2], per_tensor=False)
                if bdq is None or bdq.input[0] not in self.inits \
                        or self.inits[bdq.input[0]].data_type != TensorProto.INT32:
                    continue
                bias = bdq.input[0]
            q = users[0]
            codes = xdq.input[0]
            for r in reversed(chain):  # the same reshapes, on the codes
                out = self.fresh(r.output[0])
                self.copy_shape(r.output[0], out, xdq.input[2])
                replace.setdefault(id(conv), []).append(helper.make_node(
                    r.op_type, [codes, *r.input[1:]], [out], name=self.fresh(r.name or "reshape"), **_attrs(r)))
                codes = out
            if not chain:  # the codes have the conv input's shape (that of the float tensor they quantise)
                q_in = self.producer.get(codes)
                self.copy_shape(conv.input[0], codes, xdq.input[2])
                if q_in is not None and q_in.op_type == "QuantizeLinear":
                    self.copy_shape(q_in.input[0], codes, xdq.input[2])
            attrs = {k: v for k, v in _attrs(conv).items() if k in _CONV_ATTRS}
            inputs = [codes, xdq.input[1], xdq.input[2], wdq.input[0], wdq.input[1], wdq.input[2], q.input[1],
                      q.input[2]] + ([bias] if bias else [])
            node = helper.make_node("QLinearConv", inputs, [q.output[0]], name=(conv.name or q.output[0]) + "_q",
                                    domain=ORT_DOMAIN, channels_last=1, **attrs)
            self.copy_shape(conv.output[0], q.output[0], xdq.input[2])
            replace.setdefault(id(conv), []).append(node)
            drop.add(id(q))
        order = []
        for n in g.node:
            if id(n) in replace:
                order.extend(replace[id(n)])
            elif id(n) not in drop:
                order.append(n)
        del g.node[:]
        g.node.extend(order)  # the dequantised weights and biases it no longer reads go in channels_last's prune
        return len(replace)

    # ---- step 2: carry the channels-last layout through the graph
    def rank(self, tensor: str) -> Optional[int]:
        s = self.shapes.get(tensor)
        return len(s) if s is not None else None

    def propagate(self) -> Dict[str, List[int]]:
        g = self.model.graph
        self.cl: Dict[str, Tuple[int, Tuple]] = {}  # tensor -> (rank, logical trailing (C, H, W))
        self.nchw_twin: Dict[str, str] = {}  # channels-last tensor -> its transposed-back twin
        self.cl_twin: Dict[str, str] = {}  # original-layout tensor -> its channels-last twin
        self.order: List[onnx.NodeProto] = []
        cl = self.cl
        for node in list(g.node):
            tagged = [i for i in node.input if i and i in cl]
            if node.op_type == "QLinearConv" and node.domain == ORT_DOMAIN:
                self._qlinearconv(node)
            elif node.op_type == "Conv" and not tagged and self.rank(node.output[0]) == 4 \
                    and self.trailing(node.output[0]):
                self._analog_conv(node)
            elif not (tagged and self._carries(node, cl) and self._carry(node, tagged)):
                for k, i in enumerate(node.input):  # a consumer that needs the original layout
                    if i in cl:
                        node.input[k] = self.back(i)
                self.order.append(node)
        del g.node[:]
        g.node.extend(self.order)
        self._restore_outputs()
        return {t: to_nchw_perm(r) for t, (r, _) in cl.items()}

    def back(self, t: str) -> str:
        """``t`` (channels-last) in its original layout: one Transpose, shared by every consumer."""
        if t not in self.nchw_twin:
            name = self.fresh(t + "_nchw")
            self.order.append(helper.make_node("Transpose", [t], [name], perm=to_nchw_perm(self.cl[t][0]),
                                               name=self.fresh("to_nchw")))
            self.nchw_twin[t] = name
        return self.nchw_twin[t]

    def forward(self, t: str, rank: int, chw: Tuple) -> str:
        """``t`` (original layout) channels-last: one Transpose, shared by every consumer."""
        if t not in self.cl_twin:
            name = self.fresh(t + "_nhwc")
            self.order.append(helper.make_node("Transpose", [t], [name], perm=to_channels_last_perm(rank),
                                               name=self.fresh("to_nhwc")))
            self.cl_twin[t] = name
            self.cl[name] = (rank, chw)
        return self.cl_twin[t]

    def trailing(self, t: str) -> Optional[Tuple]:
        s = self.shapes.get(t)
        return tuple(s[-3:]) if s is not None and len(s) >= 3 and all(s[-3:]) else None

    def _qlinearconv(self, node: onnx.NodeProto) -> None:
        x = node.input[0]
        chw = self.trailing(x)
        if x not in self.cl:
            if chw is None or self.rank(x) != 4:
                raise ValueError(f"int8 layout: the input of {node.name} has no known 4-D shape")
            node.input[0] = self.forward(x, 4, chw)
        out_chw = self.trailing(node.output[0])
        if out_chw is None:
            raise ValueError(f"int8 layout: the output of {node.name} has no known shape")
        self.order.append(node)
        self.cl[node.output[0]] = (4, out_chw)

    def _analog_conv(self, node: onnx.NodeProto) -> None:
        """The analog first layer (a float Conv): one transpose after it."""
        self.order.append(node)
        t = node.output[0]
        fresh = self.fresh(t + "_nchw_conv")
        node.output[0] = fresh
        self.order.append(helper.make_node("Transpose", [fresh], [t], perm=to_channels_last_perm(4),
                                           name=self.fresh("to_nhwc")))
        self.cl[t] = (4, self.trailing(t))
        self.shapes[fresh] = self.shapes[t]

    def _carry(self, node: onnx.NodeProto, tagged: List[str]) -> bool:
        """Run ``node`` channels-last (its channels-last inputs ``tagged``); False when it cannot after all."""
        cl, op = self.cl, node.op_type
        ranks = {cl[i][0] for i in tagged}
        rank, chw = cl[tagged[0]]
        if op == "BatchNormalization":
            self.order.extend(self._batchnorm(node, chw))
            cl[node.output[0]] = (rank, chw)
            return True
        if op == "Reshape":
            target = self._reshape_target(node, chw, self.order)
            if target is None:
                return False
            node.input[1] = target[0]
            self.order.append(node)
            cl[node.output[0]] = (target[1], chw)
            return True
        if op in ("Unsqueeze", "Squeeze", "Gather"):
            self.order.append(node)
            cl[node.output[0]] = (self._leading_rank(node, rank), chw)
            return True
        if len(ranks) != 1:
            return False
        for k, i in enumerate(node.input):
            if i and i not in cl and not _scalar_init(self.inits, i) and not self._is_param(node, k):
                node.input[k] = self.forward(i, rank, chw)
        self.order.append(node)
        for o in node.output:
            if o:
                cl[o] = (rank, chw)
        return True

    def _restore_outputs(self) -> None:
        """Graph outputs keep their names and layout: the channels-last tensor is renamed, a transpose restores
        it."""
        g, cl = self.model.graph, self.cl
        for out in g.output:
            if out.name in cl:
                t = out.name
                renamed = self.fresh(t + "_nhwc")
                for n in g.node:
                    n.output[:] = [renamed if o == t else o for o in n.output]
                    n.input[:] = [renamed if i == t else i for i in n.input]
                g.node.append(helper.make_node("Transpose", [renamed], [t], perm=to_nchw_perm(cl[t][0]),
                                               name=self.fresh("to_nchw")))
                cl[renamed] = cl.pop(t)

    def _is_param(self, node: onnx.NodeProto, k: int) -> bool:
        """Scale / zero point inputs of QuantizeLinear / DequantizeLinear and a dsr op's non-data inputs."""
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            return k > 0
        if node.domain == ONNX_DOMAIN and node.op_type in QUANTIZED_OP_TYPES.values():
            return k > 0
        return False

    def _carries(self, node: onnx.NodeProto, cl) -> bool:
        """Whether ``node`` can run on channels-last inputs and give channels-last outputs."""
        if node.domain == ONNX_DOMAIN:
            return True  # the dsr neurons: element-wise over [T, ...] (membranes of step ops included)
        op = node.op_type
        if op in ("QuantizeLinear", "DequantizeLinear"):
            return all(_scalar_init(self.inits, i) for i in node.input[1:] if i)
        if op == "BatchNormalization":
            return len([o for o in node.output if o]) == 1 and all(i in self.inits for i in node.input[1:5])
        if op == "Reshape":
            return node.input[0] in cl and node.input[1] not in cl
        if op in ("Unsqueeze", "Squeeze", "Gather"):
            return node.input[0] in cl and self._leading_rank(node, cl[node.input[0]][0]) is not None
        if op in ELEMENTWISE:
            for k, i in enumerate(node.input):
                if not i or i in cl or _scalar_init(self.inits, i) or self._is_param(node, k):
                    continue
                if self.rank(i) is None or self.rank(i) != cl[next(t for t in node.input if t in cl)][0]:
                    return False
            return True
        return False

    def _leading_rank(self, node: onnx.NodeProto, rank: int) -> Optional[int]:
        """The output rank of an Unsqueeze / Squeeze / Gather that only adds, removes or indexes leading (time,
        batch) dimensions, leaving the trailing (C, H, W) as they are; else None."""
        if len(node.input) < 2 or node.input[1] not in self.inits:
            return None
        arg = numpy_helper.to_array(self.inits[node.input[1]])
        if node.op_type == "Gather":
            axis = int(_attrs(node).get("axis", 0))
            axis = axis + rank if axis < 0 else axis
            return rank - 1 + arg.ndim if 0 <= axis < rank - 3 else None
        axes = [int(a) for a in arg.reshape(-1)]
        out = rank + len(axes) if node.op_type == "Unsqueeze" else rank - len(axes)
        norm = [a + (out if node.op_type == "Unsqueeze" else rank) if a < 0 else a for a in axes]
        return out if all(0 <= a < out - 3 for a in norm) and out >= 3 else None

    def _batchnorm(self, node: onnx.NodeProto, chw: Tuple) -> List[onnx.NodeProto]:
        """The same BatchNormalization on a ``[-1, C]`` view of the channels-last tensor (ONNX takes axis 1 as the
        channel axis; a reshape of a contiguous tensor moves nothing): the same kernel and arithmetic per element
        as on the original layout, in one pass."""
        x, y = node.input[0], node.output[0]
        shape, flat, normed = self.fresh(x + "_shape"), self.fresh(x + "_2d"), self.fresh(y + "_2d")
        name = node.name or y
        view = self.const("bn_view", np.array([-1, int(chw[0])], np.int64))
        bn = helper.make_node("BatchNormalization", [flat, *node.input[1:5]], [normed], name=self.fresh(name),
                              **{k: v for k, v in _attrs(node).items() if k == "epsilon"})
        return [helper.make_node("Shape", [x], [shape], name=self.fresh(name)),
                helper.make_node("Reshape", [x, view], [flat], name=self.fresh(name)), bn,
                helper.make_node("Reshape", [normed, shape], [y], name=self.fresh(name))]

    def _shape_values(self, shape: str) -> Optional[List[Optional[int]]]:
        """The target shape's entries (None where computed at run time), or None if not a 1-D shape we can read."""
        if shape in self.inits:
            return [int(v) for v in numpy_helper.to_array(self.inits[shape]).reshape(-1)]
        p = self.producer.get(shape)
        if p is None or p.op_type != "Concat":
            return None
        vals: List[Optional[int]] = []
        for i in p.input:
            if i in self.inits:
                vals.extend(int(v) for v in numpy_helper.to_array(self.inits[i]).reshape(-1))
            elif self.rank(i) == 1 and self.shapes[i][0]:
                vals.extend([None] * self.shapes[i][0])
            else:
                return None
        return vals

    def _reshape_target(self, node, chw: Tuple, order) -> Optional[Tuple[str, int]]:
        """(channels-last target shape, rank) of a Reshape that keeps the trailing (C, H, W) and only changes the
        leading dimensions, else None."""
        vals = self._shape_values(node.input[1])
        if vals is None or len(vals) < 3 or tuple(vals[-3:]) != tuple(chw):
            return None
        if node.input[1] in self.inits:
            arr = numpy_helper.to_array(self.inits[node.input[1]]).reshape(-1)
            return self.const(node.input[1], _last_to_channels_last(arr)), len(vals)
        parts = list(self.producer[node.input[1]].input)
        k = len(parts)
        while k > 0 and parts[k - 1] in self.inits:  # the constant tail (holds at least C, H, W)
            k -= 1
        tail = np.concatenate([numpy_helper.to_array(self.inits[i]).reshape(-1) for i in parts[k:]]) \
            if k < len(parts) else np.zeros(0, np.int64)
        if tail.size < 3:
            return None
        out = self.fresh(node.input[1])
        order.append(helper.make_node("Concat", parts[:k] + [self.const("shape", _last_to_channels_last(tail))],
                                      [out], axis=0, name=self.fresh("shape_cl")))
        return out, len(vals)


def _last_to_channels_last(shape: np.ndarray) -> np.ndarray:
    """A target shape ``[..., C, H, W]`` as ``[..., H, W, C]``."""
    return np.concatenate([shape[:-3], shape[-2:], shape[-3:-2]]).astype(np.int64)


def _attrs(node: onnx.NodeProto) -> Dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def channels_last(model: onnx.ModelProto) -> Dict[str, int]:
    """Rewrite the int8 ``model`` channels-last in place (module docstring). Returns counts for the manifest's
    quantisation record."""
    from .residual import fuse_adds

    fused = _Rewrite(model).fuse_convs()
    adds = fuse_adds(model) if fused else 0
    perms = _Rewrite(model).propagate() if fused else {}
    produced = {o for n in model.graph.node for o in n.output}
    vis = []
    for vi in model.graph.value_info:  # the shapes of channels-last tensors as they are laid out
        if vi.name not in produced:
            continue
        if vi.name in perms:
            dims = list(vi.type.tensor_type.shape.dim)
            new = onnx.ValueInfoProto()
            new.CopyFrom(vi)
            del new.type.tensor_type.shape.dim[:]
            new.type.tensor_type.shape.dim.extend(dims[k] for k in to_channels_last_perm(len(dims)))
            vi = new
        vis.append(vi)
    del model.graph.value_info[:]
    model.graph.value_info.extend(vis)
    prune(model)
    if fused:
        if not any(o.domain == ORT_DOMAIN for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(ORT_DOMAIN, 1))
        produced = {o for n in model.graph.node for o in n.output}
        model.metadata_props.append(onnx.StringStringEntryProto(
            key=META_CHANNELS_LAST, value=json.dumps({t: p for t, p in perms.items() if t in produced})))
        detached = detach_probe_nodes(model)
        if detached:
            model.metadata_props.append(onnx.StringStringEntryProto(key=META_PROBE_NODES, value=json.dumps(
                [base64.b64encode(n.SerializeToString()).decode("ascii") for n in detached])))
    return {"qlinear_convs": fused, "qlinear_adds": adds,
            "transposes": sum(1 for n in model.graph.node if n.op_type == "Transpose")}
