"""The residual path of an int8 graph in int8: BatchNorms folded into the convolutions that feed them, the
shortcut add quantised.

In a pre-activation ResNet block the residual sum ``x = conv2(...) + shortcut(s)`` is read only by the next
block's ``BatchNormalization``, whose output is the next neuron's input current. Left as it is, the sum and the
BatchNorm run in float32 between ``DequantizeLinear`` and ``QuantizeLinear`` (about a tenth of the int8 time of
PreAct-ResNet-18 on an AVX2 CPU). Before quantisation, :func:`fold_batchnorms` rewrites the float32 graph:

* an inference BatchNorm ``y = g * x + b`` (per channel) whose input is a convolution's output, or the ``Add`` of
  such outputs and of a neuron's spikes (through reshapes that keep the trailing ``(C, H, W)``, each tensor read
  only on that path), is folded into its terms: each convolution's weights and bias are scaled by ``g`` (the
  first also takes ``b``), and a spike term becomes a depthwise 1x1 convolution with weights ``g`` (and ``b``
  when no convolution took it) -- a weighted layer fed by spikes, so quantised like any other. ``g * (a + c) + b
  = (g * a + b) + g * c``: the same current up to float rounding, and the int8 rule of verify compares the
  neuron's current against the float32 reference within a few steps of its scale;
* any other inference BatchNorm on a 4-D tensor downstream of a neuron (or of anything, with ``quantize_all``) --
  one whose input is also read elsewhere, as the residual stream of a block whose shortcut adds the block's input
  -- becomes a depthwise 1x1 convolution with the same per-channel affine, quantised like any layer.

The quantisation then puts Q/DQ on the terms (layer outputs) and on the sum (the neuron's current, calibrated),
the form ONNX Runtime fuses into ``QLinearAdd`` and TensorRT into its int8 element-wise add. The channels-last
pass writes it as ``com.microsoft.QLinearAdd`` itself (:func:`fuse_adds`). The neurons are untouched: given its
input current each one still gives the reference's spikes bit for bit.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .graph import Graph, safe_name

ORT_DOMAIN = "com.microsoft"
_MOVES = ("Reshape", "Identity")  # value-preserving ops a residual tensor may pass through on its way


def _shapes(model: onnx.ModelProto) -> Dict[str, List]:
    g = model.graph
    return {vi.name: [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
            for vi in list(g.value_info) + list(g.input) + list(g.output) if vi.type.tensor_type.HasField("shape")}


class _Fold:
    def __init__(self, model: onnx.ModelProto, quantize_all: bool):
        self.model, self.g, self.shapes = model, Graph(model), _shapes(model)
        self.quantize_all = quantize_all
        self.folded = self.spike_terms = self.affine = 0

    def chw(self, t: str) -> Optional[Tuple]:
        s = self.shapes.get(t)
        return tuple(s[-3:]) if s is not None and len(s) >= 3 and all(s[-3:]) else None

    def single(self, t: str) -> bool:
        return len(self.g.consumers.get(t, [])) == 1 and t not in self.g.outputs

    def through_moves(self, t: str, chw: Tuple, path: List) -> Optional[str]:
        """``t`` followed back through value-preserving reshapes that keep ``chw`` (each tensor read once; the
        reshapes passed are added to ``path``)."""
        while True:
            if self.chw(t) != chw:
                return None
            p = self.g.producer.get(t)
            if p is None or p.op_type not in _MOVES:
                return t
            if not self.single(p.input[0]):
                return None
            path.append(p)
            t = p.input[0]

    def conv_term(self, t: str) -> Optional[onnx.NodeProto]:
        """The 2-D Conv producing ``t`` (float weights and bias as initializers, read only here), else None."""
        conv = self.g.producer.get(t)
        inits = self.g.inits
        if conv is None or conv.op_type != "Conv" or len(conv.input) < 2 or conv.input[1] not in inits \
                or len(inits[conv.input[1]].dims) != 4 or not self.single(t) or len(self.shapes.get(t) or []) != 4 \
                or (len(conv.input) > 2 and conv.input[2] and conv.input[2] not in inits):
            return None
        return conv

    def terms(self, x: str, chw: Tuple) -> Optional[Tuple[List, List]]:
        """([(tensor, Conv node | None for spikes)], the Add and reshapes between them and BatchNorm input ``x``)
        of a foldable BatchNorm, else None."""
        path: List = []
        t = self.through_moves(x, chw, path)
        if t is None:
            return None
        add = self.g.producer.get(t)
        if add is None or add.op_type != "Add" or len(add.input) != 2 or not (t == x or self.single(t)) \
                or any(i in self.g.inits for i in add.input):
            conv = self.conv_term(t) if t == x or self.single(t) else None
            return ([(t, conv)], []) if conv is not None else None
        path.append(add)
        found = []
        for i in add.input:
            sub: List = []
            src = self.through_moves(i, chw, sub)
            conv = self.conv_term(src) if src is not None and (src == i or self.single(i)) else None
            if conv is not None:
                found.append((src, conv))
                path.extend(sub)
            elif self.g.spike_source(i) is not None and len(self.shapes.get(i) or []) >= 4:
                found.append((i, None))
            else:
                return None
        return (found, path) if any(c is not None for _, c in found) else None

    def fold(self, bn: onnx.NodeProto) -> bool:
        inits = self.g.inits
        attrs = {a.name: helper.get_attribute_value(a) for a in bn.attribute}
        if attrs.get("training_mode", 0) or len([o for o in bn.output if o]) != 1 \
                or not all(i in inits for i in bn.input[1:5]) or len(self.shapes.get(bn.input[0]) or []) != 4:
            return False
        chw = self.chw(bn.input[0])
        if chw is None:
            return False
        found = self.terms(bn.input[0], chw)
        scale, bias, mean, var = (numpy_helper.to_array(inits[i]).astype(np.float64) for i in bn.input[1:5])
        gain = scale / np.sqrt(var + float(attrs.get("epsilon", 1e-5)))
        shift = bias - mean * gain
        if found is None:
            return self._affine(bn, gain, shift, chw)
        terms, path = found
        tag = f"int8_bnfold_{safe_name(bn.output[0])}"
        new: List[onnx.NodeProto] = []
        inputs = []
        for k, (t, conv) in enumerate(terms):  # one term takes the shift
            if conv is not None:
                self._scale_conv(conv, gain, shift if k == 0 else None, f"{tag}_{k}")
                inputs.append(t)
            else:
                inputs.append(self._spike_term(new, t, gain, shift if k == 0 else None, f"{tag}_{k}", chw))
        if path:  # the residual Add: a new one, on the (C, H, W) tensors, computes the BatchNorm's input
            new.append(helper.make_node("Add", inputs, [bn.input[0]], name=f"{tag}_Add"))
        self._rewrite(bn, path, new)
        self.folded += 1
        return True

    def _affine(self, bn: onnx.NodeProto, gain, shift, chw: Tuple) -> bool:
        """A BatchNorm whose input is read elsewhere too (the residual stream of a pre-activation block whose
        shortcut adds the block's input): a depthwise 1x1 Conv with the same per-channel affine, quantised like
        any layer -- when something upstream is quantised (a neuron, or every layer with ``quantize_all``)."""
        if not (self.quantize_all or self.g.upstream(bn.input[0], self.g.is_dsr)):
            return False
        tag = f"int8_bnconv_{safe_name(bn.output[0])}"
        c, graph = int(chw[0]), self.model.graph
        graph.initializer.append(numpy_helper.from_array(gain.reshape(c, 1, 1, 1).astype(np.float32), f"{tag}_w"))
        graph.initializer.append(numpy_helper.from_array(shift.astype(np.float32), f"{tag}_b"))
        bn.op_type = "Conv"
        bn.name = f"{tag}_Conv"
        del bn.input[1:]
        bn.input.extend([f"{tag}_w", f"{tag}_b"])
        del bn.attribute[:]
        bn.attribute.extend([helper.make_attribute("group", c), helper.make_attribute("kernel_shape", [1, 1])])
        self.affine += 1
        return True

    def _scale_conv(self, conv: onnx.NodeProto, gain, shift, tag: str) -> None:
        inits, graph = self.g.inits, self.model.graph
        w = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
        b = numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64) if len(conv.input) > 2 and \
            conv.input[2] else np.zeros(w.shape[0])
        b = b * gain + (shift if shift is not None else 0.0)
        graph.initializer.append(numpy_helper.from_array((w * gain[:, None, None, None]).astype(np.float32),
                                                         f"{tag}_w"))
        graph.initializer.append(numpy_helper.from_array(b.astype(np.float32), f"{tag}_b"))
        del conv.input[1:]
        conv.input.extend([f"{tag}_w", f"{tag}_b"])

    def _spike_term(self, new: List, t: str, gain, shift, tag: str, chw: Tuple) -> str:
        """Spikes ``t`` times ``gain`` (+ ``shift``) per channel: a depthwise 1x1 Conv (on a ``[-1, C, H, W]``
        view of ``t``) appended to ``new``; returns its output."""
        graph, c = self.model.graph, int(chw[0])
        if len(self.shapes[t]) != 4:
            graph.initializer.append(numpy_helper.from_array(np.array([-1, *chw], np.int64), f"{tag}_view"))
            new.append(helper.make_node("Reshape", [t, f"{tag}_view"], [f"{tag}_spikes"], name=f"{tag}_view"))
            t = f"{tag}_spikes"
            self._value_info(t, chw)
        graph.initializer.append(numpy_helper.from_array(gain.reshape(c, 1, 1, 1).astype(np.float32), f"{tag}_w"))
        inputs = [t, f"{tag}_w"]
        if shift is not None:
            graph.initializer.append(numpy_helper.from_array(shift.astype(np.float32), f"{tag}_b"))
            inputs.append(f"{tag}_b")
        out = f"{tag}_scaled"
        new.append(helper.make_node("Conv", inputs, [out], name=f"{tag}_Conv", group=c, kernel_shape=[1, 1]))
        self._value_info(out, chw)
        self.spike_terms += 1
        return out

    def _value_info(self, name: str, chw: Tuple) -> None:
        self.model.graph.value_info.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT,
                                                                         ["folded", *chw]))
        self.shapes[name] = [None, *chw]

    def _rewrite(self, bn: onnx.NodeProto, path: List, new: List) -> None:
        """One pass over the nodes: the BatchNorm and ``path`` (the old Add and its reshapes) go, ``new`` takes the
        old Add's place (its inputs are computed before it), the BatchNorm's readers read its input (an Identity
        keeps a graph output's name). Protobuf copies nodes on insertion: no node object is kept past this."""
        x, y = bn.input[0], bn.output[0]
        drop = {id(p) for p in path}
        add = next((id(p) for p in path if p.op_type == "Add"), None)
        order = []
        for n in self.model.graph.node:
            if n is bn:
                if y in self.g.outputs:
                    order.append(helper.make_node("Identity", [x], [y], name=f"{bn.name}_folded"))
                continue
            if id(n) == add:
                order.extend(new)
            if id(n) in drop:
                continue
            if y not in self.g.outputs:
                n.input[:] = [x if i == y else i for i in n.input]
            order.append(n)
        del self.model.graph.node[:]
        self.model.graph.node.extend(order)


def fold_batchnorms(model: onnx.ModelProto, quantize_all: bool = False) -> Dict[str, int]:
    """Fold every inference BatchNorm fed by convolutions (or a residual Add of convolutions and spikes) into
    them, the others a depthwise 1x1 Conv, in place (module docstring). Returns counts for the quantisation
    record."""
    f = _Fold(model, quantize_all)
    for y in [n.output[0] for n in model.graph.node if n.op_type == "BatchNormalization" and n.output]:
        bn = f.g.producer.get(y)  # the live node (each fold rebuilds the node list)
        if bn is not None and f.fold(bn):
            f.g = Graph(model)  # the maps after the rewrite
    used = {i for n in model.graph.node for i in n.input}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    produced = {o for n in model.graph.node for o in n.output}
    vis = [vi for vi in model.graph.value_info if vi.name in produced]  # of the tensors still computed
    del model.graph.value_info[:]
    model.graph.value_info.extend(vis)
    return {"folded_batchnorms": f.folded, "spike_scale_convs": f.spike_terms, "batchnorm_convs": f.affine}


def _per_tensor_dq(g, inits, t: str) -> Optional[onnx.NodeProto]:
    dq = g.producer.get(t)
    if dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) < 3:
        return None
    if any(i not in inits or int(np.prod(inits[i].dims or [1])) != 1 for i in dq.input[1:3]):
        return None
    return dq


def fuse_adds(model: onnx.ModelProto) -> int:
    """``DequantizeLinear`` x2 -> ``Add`` -> ``QuantizeLinear`` (per-tensor, uint8, the Add's output read only by
    that Q) becomes ``com.microsoft.QLinearAdd`` on the codes, the op ONNX Runtime fuses it into (same
    arithmetic). Returns the number fused."""
    from onnx import TensorProto

    g = Graph(model)
    inits = g.inits
    graph = model.graph
    replace, drop = {}, set()
    for add in graph.node:
        if add.op_type != "Add" or len(add.input) != 2:
            continue
        dqs = [_per_tensor_dq(g, inits, i) for i in add.input]
        users = g.consumers.get(add.output[0], [])
        if any(d is None for d in dqs) or len(users) != 1 or users[0].op_type != "QuantizeLinear" \
                or add.output[0] in g.outputs or len(users[0].input) < 3:
            continue
        q = users[0]
        types = {inits[d.input[2]].data_type for d in dqs} | {inits[q.input[2]].data_type}
        if types != {TensorProto.UINT8} or any(i not in inits for i in q.input[1:3]):
            continue
        a, b = dqs
        replace[id(add)] = helper.make_node(
            "QLinearAdd", [a.input[0], a.input[1], a.input[2], b.input[0], b.input[1], b.input[2], q.input[1],
                           q.input[2]], [q.output[0]], name=(add.name or q.output[0]) + "_q", domain=ORT_DOMAIN)
        drop.add(id(q))
    order = [replace.get(id(n), n) for n in graph.node if id(n) not in drop]
    del graph.node[:]
    graph.node.extend(order)
    if replace and not any(o.domain == ORT_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(ORT_DOMAIN, 1))
    return len(replace)
