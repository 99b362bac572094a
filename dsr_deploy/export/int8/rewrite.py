"""``export --precision int8``: a float32 ONNX export rewritten into a quantised Q/DQ graph, spikes kept exact.

One idea, over 400 lines: the int8 rewrite of one graph (calibration, the scales, the Q/DQ placement around every
layer and neuron, the quantised neuron form); its parts only make sense together.

Every activation after a DSR neuron is exactly 0 or the layer's spike value ``s`` (``vth``; ``vth / delta_t``
for LIF, the float32 quotient the kernels compute), so as uint8 codes ``{0, 1}`` with scale ``s`` and zero point
0 the spikes are represented *exactly*: ``QuantizeLinear`` gives ``round(s / s) = 1`` and ``DequantizeLinear``
gives ``1 * s = s`` back, bit for bit. What is quantised (the Q/DQ form ONNX Runtime fuses into ``QLinearConv``
/ ``QLinearMatMul`` and TensorRT builds with explicit quantisation):

* **spikes** (a neuron's output feeding a quantised layer): uint8, scale = the spike value, zero point 0 (exact);
* **weights** of every quantised Conv / Gemm / MatMul: int8, symmetric, one scale per output channel
  (``max |w| / 127`` of that channel); a bias becomes int32 with scale ``input scale x weight scale``;
* **input currents**: the output of every quantised layer (the neuron's input current after the folded
  BatchNorm) and, where other float ops (a residual Add, a BatchNorm that could not be folded) lie between the
  layer and the neuron, the neuron's input itself: uint8 with a calibrated scale and zero point (one per tensor:
  ``QLinearConv``'s output takes one scale).

*Activations* (``activations``, ``export --int8-activations``): ``uint8`` (the default, above) or ``int8``, the
form TensorRT's explicit quantisation takes (it accepts only signed int8 with zero point 0): currents int8
symmetric (zero point 0, a calibrated scale), spikes int8 codes ``{0, 1}`` (scale = the spike value, zero point 0:
still exact), and biases kept float32 (TensorRT's DequantizeLinear takes no int32 input; it fuses a float bias into
its int8 convolution).

*Which layers are quantised*: a weighted layer whose data input comes from the spikes of a neuron. A layer fed by
analog data (the first convolution of a direct-encoded network: nothing between the graph input and it passes a
neuron) and the readout (the last weighted layers: no weighted layer after them) stay float32 by default, as does
a neuron's current computed by such a layer; ``quantize_all`` (``export --int8-all-layers``) quantises them too
(their data inputs with a calibrated scale).

*Calibration* (:func:`calibrate`): the float32 model runs on the calibration inputs (ONNX Runtime, its function
bodies inlined); for each tensor to quantise a sample of its values is kept, and the clipping range
``[lo, hi]`` (0 always inside) is the one of a few candidates -- the extreme values and the 99.999 / 99.99 /
99.9 percentiles of the values on either side of 0 -- with the smallest mean squared quantisation error on that
sample (MSE calibration). Scale ``(hi - lo) / 255``, zero point ``round(-lo / scale)``; for int8 activations
the range is symmetric, ``[-a, a]`` with ``a`` the extreme or a percentile of ``|values|``, scale ``a / 127``, zero
point 0.

The neurons themselves stay float32 ``dsr`` nodes (custom-op library or function fallback): their input is the
dequantised current, so given that input the neuron's spikes are the float32 reference's bit for bit. With
``int8_neuron="quantized"`` (:func:`quantized_neurons`) they become ``DSRIFSpikeQ`` / ``DSRLIFSpikeQ`` on the
current codes (uint8 or int8; same results, measured faster with the custom-op library; verify teacher-forces them
too). With ``layout="nhwc"`` the graph is then written channels-last for ONNX Runtime's CPU (:mod:`.int8_layout`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ...convert import ONNX_DOMAIN, ONNX_OP_TYPES
from ...errors import UserError
from ...onnx_graph import GraphMaps

CALIBRATION_HINT = ("--precision int8 needs calibration data: pass --calibration X.npy (inputs as the model takes "
                    "them, any number of samples along the batch dimension)")

#: Ops that move values without changing them: spikes stay spikes through them.
EXACT_OPS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity"}
WEIGHTED_OPS = {"Conv", "Gemm", "MatMul"}
PERCENTILES = (100.0, 99.999, 99.99, 99.9)
#: ``export --int8-activations``: the element type of quantised activations (currents and spike codes).
ACTIVATIONS = ("uint8", "int8")
SAMPLE = 1 << 20  # values kept per tensor for the MSE search
META_QUANT = "dsr_deploy.int8"
_DSR = set(ONNX_OP_TYPES.values()) | {"DSRIFStep", "DSRLIFStep"}  # multi-step ops and the streaming step ops


def spike_value(node: onnx.NodeProto) -> float:
    """The float32 value of a spike of ``node``: ``vth`` (IF) or ``fl32(vth) / fl32(delta_t)`` (LIF)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    vth = np.float32(attrs["v_threshold"])
    if node.op_type in (ONNX_OP_TYPES["lif"], "DSRLIFStep", "DSRLIFSpikeQ"):
        return float(vth / np.float32(attrs["delta_t"]))
    return float(vth)


class Graph(GraphMaps):
    """Producer / consumer maps of a main graph (rebuilt after each rewrite) and the int8 rewrite's questions."""

    def is_dsr(self, node: Optional[onnx.NodeProto]) -> bool:
        return node is not None and node.domain == ONNX_DOMAIN and node.op_type in _DSR

    def weighted(self, node: onnx.NodeProto) -> bool:
        return node.op_type in WEIGHTED_OPS and len(node.input) > 1 and node.input[1] in self.inits \
            and (node.op_type != "MatMul" or len(self.inits[node.input[1]].dims) == 2)

    def spike_source(self, tensor: str) -> Optional[onnx.NodeProto]:
        """The dsr node whose spikes ``tensor`` is (through value-preserving ops only), else None."""
        node = self.producer.get(tensor)
        while node is not None and node.op_type in EXACT_OPS:
            node = self.producer.get(node.input[0])
        return node if self.is_dsr(node) else None

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


def plan(model: onnx.ModelProto, quantize_all: bool = False) -> Dict[str, Any]:
    """What to quantise: ``layers`` (weighted nodes' names), ``spikes`` ({dsr output: spike value}),
    ``calibrated`` (tensor names that need a calibrated scale: layer outputs, float-fed layer inputs, currents),
    ``float_layers`` (kept float32 and why)."""
    g = Graph(model)
    layers, float_layers, spikes = [], {}, {}
    calibrated: List[str] = []
    for node in model.graph.node:
        if not g.weighted(node):
            continue
        analog = not g.upstream(node.input[0], g.is_dsr)
        readout = not g.downstream_has(node.output[0], g.weighted)
        if (analog or readout) and not quantize_all:
            float_layers[node.name or node.output[0]] = "analog input" if analog else "readout"
            continue
        layers.append(node)
        src = g.spike_source(node.input[0])
        if src is not None:
            spikes[src.output[0]] = spike_value(src)
        elif node.input[0] not in calibrated:
            calibrated.append(node.input[0])
        calibrated.append(node.output[0])
    quantised_outputs = {n.output[0] for n in layers}
    currents = []
    for node in model.graph.node:
        if not g.is_dsr(node):
            continue
        x = node.input[0]
        t = x
        while t not in quantised_outputs and g.producer.get(t) is not None and g.producer[t].op_type in EXACT_OPS:
            t = g.producer[t].input[0]
        if t in quantised_outputs:
            continue  # the layer's quantised output reaches the neuron unchanged
        feeding = g.upstream(x, lambda n: g.weighted(n) or g.is_dsr(n))
        if any(n.output[0] in quantised_outputs for n in feeding) and x not in calibrated:
            calibrated.append(x)
            currents.append(x)
    return {"layers": layers, "spikes": spikes, "calibrated": calibrated, "currents": currents,
            "float_layers": float_layers}


# ------------------------------------------------------------------------------------------------ calibration

class _Reservoir:
    def __init__(self, seed: int):
        self.parts: List[np.ndarray] = []
        self.count = 0
        self.rng = np.random.default_rng(seed)

    def add(self, a: np.ndarray) -> None:
        a = np.asarray(a, dtype=np.float32).reshape(-1)
        a = a[np.isfinite(a)]
        if a.size > SAMPLE // 4:
            a = a[self.rng.integers(0, a.size, SAMPLE // 4)]
        self.parts.append(a)
        self.count += a.size
        if self.count > 2 * SAMPLE:
            allv = np.concatenate(self.parts)
            self.parts = [allv[self.rng.integers(0, allv.size, SAMPLE)]]
            self.count = SAMPLE

    def values(self) -> np.ndarray:
        return np.concatenate(self.parts) if self.parts else np.zeros(1, np.float32)


def qparams(values: np.ndarray, signed: bool = False) -> Tuple[float, int]:
    """uint8 (scale, zero point) of ``values`` by MSE over the candidate clipping ranges (module docstring);
    ``signed``: int8 symmetric, zero point 0."""
    v = np.asarray(values, dtype=np.float64)
    if signed:
        return _symmetric_qparams(v)
    neg, pos = -v[v < 0], v[v > 0]
    best = None
    for p in PERCENTILES:
        lo = -float(np.percentile(neg, p)) if neg.size else 0.0
        hi = float(np.percentile(pos, p)) if pos.size else 0.0
        if hi - lo <= 0:
            continue
        scale = np.float32((hi - lo) / 255.0)
        zp = int(np.clip(round(-lo / float(scale)), 0, 255))
        q = np.clip(np.round(v / float(scale)) + zp, 0, 255)
        err = float(np.mean(((q - zp) * float(scale) - v) ** 2))
        if best is None or err < best[0]:
            best = (err, float(scale), zp)
    if best is None:  # all zeros: any scale represents it
        return 1.0, 0
    return best[1], best[2]


def _symmetric_qparams(v: np.ndarray) -> Tuple[float, int]:
    """int8 (scale, 0): the clipping range ``[-a, a]`` whose codes (QuantizeLinear: round, saturate to
    [-128, 127]) give the smallest mean squared error, ``a`` the extreme or a percentile of ``|v|``."""
    mag = np.abs(v)
    best = None
    for p in PERCENTILES:
        amax = float(np.percentile(mag, p)) if mag.size else 0.0
        if amax <= 0:
            continue
        scale = np.float32(amax / 127.0)
        q = np.clip(np.round(v / float(scale)), -128, 127)
        err = float(np.mean((q * float(scale) - v) ** 2))
        if best is None or err < best[0]:
            best = (err, float(scale))
    return (1.0, 0) if best is None else (best[1], 0)


def _batches(data: np.ndarray, batch_dim: int, chunk: int) -> Iterable[np.ndarray]:
    n = data.shape[batch_dim]
    for start in range(0, n, chunk):
        yield np.ascontiguousarray(np.take(data, range(start, min(n, start + chunk)), axis=batch_dim))


def calibrate(model: onnx.ModelProto, tensors: Sequence[str], data: np.ndarray, batch_dim: int,
              chunk: int = 4, states: Optional[Sequence[Tuple[str, str, Sequence[int]]]] = None,
              signed: bool = False) -> Dict[str, Tuple[float, int]]:
    """Run the float32 ``model`` on ``data`` (batched along ``batch_dim``) with stock ONNX Runtime and return the
    uint8 (``signed``: int8 symmetric) (scale, zero point) of each tensor in ``tensors``. ``states`` (a streaming
    step model): ``(input,
    output, per-sample shape)`` of each membrane; ``data`` ``[T, N, ...]`` is then fed one step at a time from
    zero membranes, as a stream runs."""
    import onnxruntime as ort

    if not tensors:
        return {}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {o.name for o in probe.graph.output}
    for t in tensors:
        if t not in outputs:
            probe.graph.output.append(helper.make_empty_tensor_value_info(t))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    stats = {t: _Reservoir(k) for k, t in enumerate(tensors)}
    for x in _batches(data.astype(np.float32, copy=False), batch_dim, chunk):
        if not states:
            outs = sess.run(list(tensors), {name: x})
            for t, v in zip(tensors, outs):
                stats[t].add(v)
            continue
        v = {i: np.zeros((x.shape[1], *shape), np.float32) for i, _, shape in states}
        for step in x:
            outs = sess.run(list(tensors) + [o for _, o, _ in states], {name: step, **v})
            for t, val in zip(tensors, outs):
                stats[t].add(val)
            v = {i: val for (i, _, _), val in zip(states, outs[len(tensors):])}
    return {t: qparams(s.values(), signed) for t, s in stats.items()}


def check_calibration(data: Any, shape: Sequence[int], batch_dim: int, where: str) -> np.ndarray:
    """The calibration array as float32, or a one-line UserError when it cannot feed an input of ``shape``."""
    if not isinstance(data, np.ndarray) or data.dtype.kind not in "fiub":
        raise UserError(f"calibration data {where} must be a numeric array (got {type(data).__name__})")
    want = list(shape)
    if data.ndim != len(want) or any(d != w for i, (d, w) in enumerate(zip(data.shape, want)) if i != batch_dim) \
            or data.shape[batch_dim] < 1:
        want[batch_dim] = "N"
        raise UserError(f"calibration data {where} has shape {list(data.shape)}; the model takes {want} "
                        f"(any N >= 1 along dimension {batch_dim})")
    data = data.astype(np.float32)
    if not np.isfinite(data).all():
        raise UserError(f"calibration data {where} holds NaN or infinite values")
    return data


# ------------------------------------------------------------------------------------------------ rewrite

def _const(graph, name: str, array: np.ndarray) -> str:
    graph.initializer.append(numpy_helper.from_array(array, name))
    return name


def _qdq(graph, tensor: str, scale: float, zp: int, tag: str, code=np.uint8) -> Tuple[List[onnx.NodeProto], str]:
    s = _const(graph, f"{tag}_scale", np.array(scale, dtype=np.float32))
    z = _const(graph, f"{tag}_zp", np.array(zp, dtype=code))
    q, dq = f"{tag}_q", f"{tag}_dq"
    return [helper.make_node("QuantizeLinear", [tensor, s, z], [q], name=f"{tag}_Q"),
            helper.make_node("DequantizeLinear", [q, s, z], [dq], name=f"{tag}_DQ")], dq


def quantize_weight(w: np.ndarray, axis: int) -> Tuple[np.ndarray, np.ndarray]:
    """Per-channel symmetric int8 along ``axis``: (codes, scales) with ``scale = max|w| / 127`` per channel."""
    other = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.max(np.abs(w), axis=other) if other else np.abs(w)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale


def _weight_axis(node: onnx.NodeProto) -> int:
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        trans = {a.name: a.i for a in node.attribute}.get("transB", 0)
        return 0 if trans else 1
    return 1  # MatMul: [K, N]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


NEURON_FORMS = ("qdq", "quantized")


def quantized_neurons(model: onnx.ModelProto) -> int:
    """``--int8-neuron quantized``: each multi-step dsr node whose current arrives quantised (``Q -> DQ ->
    Reshape* -> node``, each tensor read once) becomes ``dsr::DSRIFSpikeQ`` / ``DSRLIFSpikeQ`` on the codes (uint8
    or int8: ``Q -> Reshape* -> nodeQ``), and its spikes leave as codes of that type straight into the spike
    ``DequantizeLinear``
    (no separate dequantise / quantise pass around the neuron). The float spikes keep their tensor name (a
    ``DequantizeLinear`` of the codes: exact), so probes still find them. Returns the number of nodes rewritten."""
    from ..onnx_functions import QUANTIZED_OP_SUFFIX, quantized_function_proto

    g = Graph(model)
    graph = model.graph
    inits = g.inits
    drop: Set[int] = set()
    after: Dict[int, onnx.NodeProto] = {}
    kinds = []
    retyped: Set[str] = set()
    moved: Dict[str, str] = {}  # float spikes now named by their spike DequantizeLinear's output
    rewritten = 0
    for d in list(graph.node):
        if d.domain != ONNX_DOMAIN or d.op_type not in ONNX_OP_TYPES.values():
            continue
        chain, t = [], d.input[0]
        while g.producer.get(t) is not None and g.producer[t].op_type in EXACT_OPS and len(g.consumers[t]) == 1:
            chain.append(g.producer[t])
            t = g.producer[t].input[0]
        dq = g.producer.get(t)
        if dq is None or dq.op_type != "DequantizeLinear" or len(g.consumers[t]) != 1 \
                or g.producer.get(dq.input[0]) is None or g.producer[dq.input[0]].op_type != "QuantizeLinear" \
                or inits.get(dq.input[2]) is None \
                or inits[dq.input[2]].data_type not in (TensorProto.UINT8, TensorProto.INT8):
            continue
        code = numpy_helper.to_array(inits[dq.input[2]]).dtype  # the spike codes have the current codes' type
        codes_in = dq.input[0]
        if chain:
            chain[-1].input[0] = codes_in
            retyped.update(n.output[0] for n in chain)  # now uint8: their recorded float types go
        kind = "lif" if d.op_type == ONNX_OP_TYPES["lif"] else "if"
        if kind not in kinds:
            kinds.append(kind)
        y = d.output[0]
        qs = next((n for n in g.consumers.get(y, []) if n.op_type == "QuantizeLinear"), None)
        value = spike_value(d)
        d.op_type += QUANTIZED_OP_SUFFIX
        cur = chain[0].output[0] if chain else codes_in
        del d.input[:]
        d.input.extend([cur, dq.input[1], dq.input[2]])
        d.output[0] = y + "_codes"
        drop.add(id(dq))
        rewritten += 1
        remaining = [n for n in g.consumers.get(y, []) if n is not qs] or y in g.outputs
        if qs is not None:
            scale, zp = qs.input[1], qs.input[2]
            spike_dqs = g.consumers.get(qs.output[0], [])
            for n in spike_dqs:
                for k, i in enumerate(n.input):
                    if i == qs.output[0]:
                        n.input[k] = d.output[0]
            drop.add(id(qs))
            if not remaining and spike_dqs:  # the spike DequantizeLinear gives the float spikes (exact)
                moved[y] = spike_dqs[0].output[0]
                continue
        else:
            scale = _const(graph, f"int8_{_safe(y)}_spike_scale", np.array(value, np.float32))
            zp = _const(graph, f"int8_{_safe(y)}_spike_zp", np.array(0, code))
        after[id(d)] = helper.make_node("DequantizeLinear", [d.output[0], scale, zp], [y], name=f"{d.name}_spikes")
    order = []
    for n in graph.node:
        if id(n) in drop:
            continue
        order.append(n)
        if id(n) in after:
            order.append(after[id(n)])
    del graph.node[:]
    graph.node.extend(order)
    for prop in model.metadata_props:  # probes and tools find each neuron's float spikes under the new name
        if prop.key == "dsr_deploy.layer_outputs":
            prop.value = json.dumps([[i, moved.get(t, t)] for i, t in json.loads(prop.value)])
    if rewritten:  # a quantised op reads codes, not a float current: no float input to record (the float dsr
        #            nodes' inputs are still found from the nodes themselves)
        props = [p for p in model.metadata_props if p.key != "dsr_deploy.layer_inputs"]
        del model.metadata_props[:]
        model.metadata_props.extend(props)
    keep = [vi for vi in graph.value_info if vi.name not in retyped]
    del graph.value_info[:]
    graph.value_info.extend(keep)
    meta = {p.key: p.value for p in model.metadata_props}
    fns = {f.name: f for f in model.functions}
    for kind in kinds:
        ref = fns.get(ONNX_OP_TYPES[kind])
        prefix = ref.input[0][:-1] if ref is not None else None
        body = meta.get("dsr_deploy.function_body", "scan")
        model.functions.append(quantized_function_proto(kind, body, next(
            o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), T=int(meta.get("dsr_deploy.T", 0))
            or None, prefix=prefix))
    return rewritten


def quantize_model(model: onnx.ModelProto, calibration: np.ndarray, batch_dim: int, *,
                   quantize_all: bool = False, states=None, neuron: str = "qdq",
                   activations: str = "uint8", layout: str = "nchw") -> Tuple[onnx.ModelProto, Dict[str, Any]]:
    """The Q/DQ int8 model of the float32 ``model`` (module docstring) and the manifest's quantisation record.
    ``states``: a streaming step model's membranes (:func:`calibrate`); ``activations``: uint8 | int8 (the
    TensorRT form)."""
    signed = activations == "int8"
    code = np.int8 if signed else np.uint8
    out = onnx.ModelProto()
    out.CopyFrom(model)
    p = plan(out, quantize_all)
    if not p["layers"]:
        raise UserError("--precision int8: the model has no layer to quantise (weighted layers fed by spikes; the "
                        "analog first layer and the readout stay float32 unless --int8-all-layers)")
    params = calibrate(model, p["calibrated"], calibration, batch_dim, states=states, signed=signed)
    graph = out.graph
    g = Graph(out)
    new_nodes: Dict[str, List[onnx.NodeProto]] = defaultdict(list)  # inserted after the producer of the key
    rename: Dict[str, str] = {}  # tensor -> its dequantised twin, for the consumers that take it

    def qdq(tensor: str, scale: float, zp: int) -> str:
        if tensor not in rename:
            nodes, dq = _qdq(graph, tensor, scale, zp, f"int8_{_safe(tensor)}", code)
            new_nodes[tensor].extend(nodes)
            rename[tensor] = dq
        return rename[tensor]

    for t, s in p["spikes"].items():
        qdq(t, s, 0)
    for t in p["calibrated"]:
        qdq(t, *params[t])
    in_scale: Dict[str, float] = {}
    for node in p["layers"]:
        x = node.input[0]
        src = g.spike_source(x)
        in_scale[node.name] = p["spikes"][src.output[0]] if src is not None else params[x][0]
        axis = _weight_axis(node)
        w = numpy_helper.to_array(g.inits[node.input[1]]).astype(np.float32)
        codes, scales = quantize_weight(w, axis)
        tag = f"int8_{_safe(node.input[1])}"
        wq = _const(graph, f"{tag}_codes", codes)
        ws = _const(graph, f"{tag}_scale", scales)
        wz = _const(graph, f"{tag}_zp", np.zeros(scales.shape, np.int8))
        wdq = f"{tag}_dq"
        new_nodes[""].append(helper.make_node("DequantizeLinear", [wq, ws, wz], [wdq], axis=axis, name=f"{tag}_DQ"))
        node.input[1] = wdq
        if len(node.input) > 2 and node.input[2] in g.inits and not signed:  # int8: the bias stays float32
            b = numpy_helper.to_array(g.inits[node.input[2]]).astype(np.float64)
            bs = (np.float64(in_scale[node.name]) * scales.astype(np.float64)).astype(np.float32)
            if b.shape == bs.shape:
                btag = f"int8_{_safe(node.input[2])}"
                bq = _const(graph, f"{btag}_codes", np.round(b / bs).astype(np.int32))
                bsn = _const(graph, f"{btag}_scale", bs)
                bz = _const(graph, f"{btag}_zp", np.zeros(bs.shape, np.int32))
                new_nodes[""].append(helper.make_node("DequantizeLinear", [bq, bsn, bz], [f"{btag}_dq"], axis=0,
                                                      name=f"{btag}_DQ"))
                node.input[2] = f"{btag}_dq"
    # Rewire: every consumer of a quantised tensor reads its dequantised twin (never the Q node itself).
    inserted = {id(n) for ns in new_nodes.values() for n in ns}
    for node in graph.node:
        if id(node) in inserted:
            continue
        for k, i in enumerate(node.input):
            if i in rename:
                node.input[k] = rename[i]
    used = {i for n in graph.node for i in n.input}
    keep = [i for i in graph.initializer if i.name in used or any(i.name == w for ns in new_nodes.values()
                                                                    for n in ns for w in n.input)]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    # Graph outputs keep their float32 tensors. Insert the new nodes after their producers (topological order).
    order: List[onnx.NodeProto] = list(new_nodes[""])
    for t in list(new_nodes):
        if t and t not in g.producer:  # a graph input
            order.extend(new_nodes[t])
    for node in list(graph.node):
        order.append(node)
        for o in node.output:
            order.extend(new_nodes.get(o, []))
    del graph.node[:]
    graph.node.extend(order)
    for prop in out.metadata_props:  # the recorded neuron inputs: the dequantised current the neuron reads
        if prop.key == "dsr_deploy.layer_inputs":
            prop.value = json.dumps([[i, rename.get(t, t)] for i, t in json.loads(prop.value)])
    record = {
        "method": "mse-percentile",
        "calibration_samples": int(calibration.shape[batch_dim]),
        "quantized_layers": len(p["layers"]),
        "float_layers": p["float_layers"],
        "spikes": {t: {"scale": s, "zero_point": 0} for t, s in p["spikes"].items()},
        "currents": len(p["calibrated"]),
        "weights": "int8 symmetric per output channel",
        "all_layers": bool(quantize_all),
        "activations": activations,
    }
    if neuron == "quantized":
        record["quantized_neurons"] = quantized_neurons(out)
    record["neuron"] = neuron
    record["layout"] = layout
    if layout == "nhwc":  # ONNX Runtime CPU: channels-last QLinearConv, no transposes between layers
        from .layout import channels_last

        record["channels_last"] = channels_last(out)
    out.metadata_props.append(onnx.StringStringEntryProto(key=META_QUANT, value=json.dumps(record)))
    return out, record


# ------------------------------------------------------------------------------------------------ data

def _digits_training_inputs(T: int) -> np.ndarray:
    """zoo digits-cnn: its training split (never the held-out images), direct-encoded over T: ``[T, N, 1, 8, 8]``."""
    from ...models.digits import load_digits_split

    x = load_digits_split().x_train.numpy()
    return np.ascontiguousarray(np.broadcast_to(x[None], (T, *x.shape)), dtype=np.float32)


#: Zoo models that ship calibration data: name -> (T -> inputs [T, N, ...]).
ZOO_CALIBRATION = {"digits-cnn": _digits_training_inputs}


def load_calibration(path: Optional[Any], spec: Optional[str], shape: Sequence[int], layout: str = "TB",
                     encode: str = "none") -> np.ndarray:
    """``--calibration X.npy`` (read without pickle), else the zoo model's shipped data in the artifact's input
    layout, else a one-line UserError saying calibration is required."""

    if path is not None:
        try:
            return np.load(str(path), allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise UserError(f"--calibration {path}: cannot read a .npy array ({str(exc).splitlines()[0]})") from exc
    name = (spec or "")[4:] if (spec or "").startswith("zoo:") else None
    if name not in ZOO_CALIBRATION:
        raise UserError(CALIBRATION_HINT + (f"; {spec} ships no calibration data" if spec else ""))
    x = ZOO_CALIBRATION[name](int(shape[0]))  # [T, N, ...]
    if encode == "direct":
        return np.ascontiguousarray(x[0])
    return np.ascontiguousarray(x.swapaxes(0, 1)) if layout == "BT" else x


def int8_options(extra: Optional[Dict[str, Any]], shape: Sequence[int], batch_dim: int) -> Dict[str, Any]:
    """The export options of ``--precision int8``: the calibration array checked against the input ``shape``
    (one-line UserError when it is missing or does not fit) and ``int8_all_layers``."""

    extra = extra or {}
    if extra.get("calibration") is None:
        raise UserError(CALIBRATION_HINT)
    neuron = extra.get("int8_neuron") or "qdq"
    if neuron not in NEURON_FORMS:
        raise UserError(f"unknown --int8-neuron {neuron!r}; choose from {', '.join(NEURON_FORMS)}")
    activations = extra.get("int8_activations") or "uint8"
    if activations not in ACTIVATIONS:
        raise UserError(f"unknown --int8-activations {activations!r}; choose from {', '.join(ACTIVATIONS)}")
    from .layout import LAYOUTS

    layout = extra.get("int8_layout") or "nchw"
    if layout not in LAYOUTS:
        raise UserError(f"unknown --int8-layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    if activations == "int8" and layout != "nchw":
        raise UserError("--int8-activations int8 is the TensorRT form (the portable Q/DQ graph); --int8-layout "
                        f"{layout} is for ONNX Runtime's CPU, where uint8 activations are faster: choose one")
    return {"calibration": check_calibration(extra["calibration"], shape, batch_dim, "(--calibration)"),
            "int8_all_layers": bool(extra.get("int8_all_layers")), "int8_neuron": neuron,
            "int8_activations": activations, "int8_layout": layout}


def quantize_file(path, ctx, states=None) -> Dict[str, Any]:
    """Rewrite the float32 ONNX file ``path`` as its int8 model in place (checked); returns the artifact's
    ``precision`` / ``quantization`` fields."""
    from ...io import atomic_path

    model = onnx.load(str(path))
    q, record = quantize_model(model, ctx.options["calibration"], 1, quantize_all=bool(ctx.options.get(
        "int8_all_layers")), states=states, neuron=ctx.options.get("int8_neuron") or "qdq",
        activations=ctx.options.get("int8_activations") or "uint8", layout=ctx.options.get("int8_layout") or "nchw")
    onnx.checker.check_model(q, full_check=True)
    with atomic_path(path) as tmp:
        onnx.save(q, str(tmp))
    return {"precision": "int8", "quantization": record}
