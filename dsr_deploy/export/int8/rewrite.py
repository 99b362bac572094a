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
(their data inputs with a calibrated scale). A layer whose int8 weights' and bias' rounding alone would move its
current by more than half of verify's bound (measured at export on the calibration inputs: :mod:`.sensitivity`)
stays float32 too, recorded in ``float_layers`` with the measured steps.

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
too). With ``layout="nhwc"`` the graph is then written channels-last for ONNX Runtime's CPU (:mod:`.layout`), its
convolutions on spikes event-driven (:mod:`.spike_conv`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ...errors import UserError
from .calibrate import calibrate, collect, grid_qparams, qparams
from .graph import EXACT_OPS, Graph, const, qdq, safe_name, spike_value
from .sensitivity import error_twins, fallback, layer_name, rounding_steps
from .weights import SAFE_INPUT_CODE, quantize_bias, quantize_weight, weight_axis, weight_levels

META_QUANT = "dsr_deploy.int8"


def plan(model: onnx.ModelProto, quantize_all: bool = False,
         keep_float: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """What to quantise: ``layers`` (weighted nodes' names), ``spikes`` ({dsr output: spike value}),
    ``calibrated`` (tensor names that need a calibrated scale: layer outputs, float-fed layer inputs, currents),
    ``float_layers`` (kept float32 and why: ``keep_float`` {layer name: reason} too, :mod:`.sensitivity`)."""
    g = Graph(model)
    layers, float_layers, spikes = [], {}, {}
    calibrated: List[str] = []
    for node in model.graph.node:
        if not g.weighted(node):
            continue
        if keep_float and layer_name(node) in keep_float:
            float_layers[layer_name(node)] = keep_float[layer_name(node)]
            continue
        analog = not g.upstream(node.input[0], g.is_dsr)
        readout = not g.downstream_has(node.output[0], g.weighted)
        if (analog or readout) and not quantize_all:
            float_layers[layer_name(node)] = "analog input" if analog else "readout"
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
        # The current is quantised where it is computed (before the reshapes to the neuron: the same values),
        # so a residual Add's output is its Q/DQ's input (QLinearAdd).
        if any(n.output[0] in quantised_outputs for n in feeding) and t not in calibrated:
            calibrated.append(t)
            currents.append(t)
    return {"layers": layers, "spikes": spikes, "calibrated": calibrated, "currents": currents,
            "float_layers": float_layers}


def _input_view(graph, tensor: str) -> bool:
    """Whether ``tensor`` is a graph input, or one seen through value-preserving ops only."""
    producer = {o: n for n in graph.node for o in n.output}
    while tensor in producer and producer[tensor].op_type in EXACT_OPS:
        tensor = producer[tensor].input[0]
    return tensor not in producer and any(i.name == tensor for i in graph.input)


def _in_scale(g: Graph, p: Dict[str, Any], params: Dict[str, Tuple[float, int]], node: onnx.NodeProto) -> float:
    """The scale of a quantised layer's input: its spikes' value, else the input's calibrated scale."""
    src = g.spike_source(node.input[0])
    return p["spikes"][src.output[0]] if src is not None else params[node.input[0]][0]


def _exact_scales(model: onnx.ModelProto, tensors: Sequence[str], params: Dict[str, Tuple[float, int]],
                  calibration: np.ndarray, signed: bool) -> None:
    """Scales that represent a tensor exactly, over the calibrated ones: the analog input on its own grid, sums
    of spikes on the spike value."""
    grid = grid_qparams(calibration, signed)
    g = Graph(model)
    for t in tensors:
        if grid is not None and _input_view(model.graph, t):  # the analog input on its own grid: exact
            params[t] = grid
        counted = g.spike_count(t)
        if counted is not None and counted[1] <= (127 if signed else 255):  # summed spikes: exact, as spikes are
            params[t] = (counted[0], 0)


def narrow_inputs(model: onnx.ModelProto, layers: Sequence[onnx.NodeProto], calibration: np.ndarray,
                  signed: bool) -> set:
    """The inputs of quantised ``layers`` whose uint8 codes may pass :data:`.weights.SAFE_INPUT_CODE` (their layers
    get 7-bit weights): calibrated inputs, not spikes or counts of spikes, nor the analog input on a grid of small
    codes (the digits' pixel levels)."""
    if signed:
        return set()
    g = Graph(model)
    grid = grid_qparams(calibration, signed)
    small_grid = grid is not None and int(np.round(np.max(calibration) / grid[0])) + grid[1] <= SAFE_INPUT_CODE
    return {n.input[0] for n in layers if g.spike_source(n.input[0]) is None and g.spike_count(n.input[0]) is None
            and not (small_grid and _input_view(model.graph, n.input[0]))}


def _calibrated_plan(folded: onnx.ModelProto, out: onnx.ModelProto, p: Dict[str, Any], calibration: np.ndarray,
                     batch_dim: int, states, signed: bool, quantize_all: bool):
    """(plan, {tensor: (scale, zero point)}, {int8 layer: rounding steps}, the 7-bit-weight layer inputs
    (:func:`narrow_inputs`)): one calibration run samples the
    tensors to quantise and each layer's int8 rounding error (:mod:`.sensitivity`); the layers int8 cannot carry
    are kept float32 and the graph re-planned, a second run calibrating only what the new plan quantises that
    the first did not (a current whose feeding layer turned float, say)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(folded)
    narrow = narrow_inputs(out, p["layers"], calibration, signed)
    twins = error_twins(probe, p["layers"], narrow)
    samples = collect(probe, p["calibrated"] + [t for t, _ in twins.values()], calibration, batch_dim,
                      states=states, axes=dict(twins.values()))
    params = {t: qparams(samples[t].values(), signed) for t in p["calibrated"]}
    _exact_scales(out, p["calibrated"], params, calibration, signed)
    g = Graph(out)
    steps = rounding_steps(g, p["layers"], twins, samples,
                           {layer_name(n): _in_scale(g, p, params, n) for n in p["layers"]},
                           {layer_name(n): params[n.output[0]][0] for n in p["layers"]}, signed, narrow)
    drop = fallback(steps)
    if not drop:
        return p, params, steps, narrow
    p = plan(out, quantize_all, keep_float=drop)
    if not p["layers"]:
        raise UserError("--precision int8: no layer can be int8 (each one's weight rounding moves its current "
                        "by more than a few steps of its scale: see the float32 export)")
    missing = [t for t in p["calibrated"] if t not in params]
    if missing:
        params.update(calibrate(folded, missing, calibration, batch_dim, states=states, signed=signed))
        _exact_scales(out, missing, params, calibration, signed)
    return p, params, {k: v for k, v in steps.items() if k not in drop}, narrow


def _quantize_layer(graph, g: Graph, node: onnx.NodeProto, in_scale: float, signed: bool,
                    narrow: set) -> List[onnx.NodeProto]:
    """Per-channel int8 weights (and, for uint8 activations, an int32 bias) for one weighted ``node``: the
    DequantizeLinear nodes to insert; ``node`` reads their outputs."""
    out = []
    axis = weight_axis(node)
    w = numpy_helper.to_array(g.inits[node.input[1]]).astype(np.float32)
    codes, scales = quantize_weight(w, axis, weight_levels(node, narrow))
    tag = f"int8_{safe_name(node.input[1])}"
    wq = const(graph, f"{tag}_codes", codes)
    ws = const(graph, f"{tag}_scale", scales)
    wz = const(graph, f"{tag}_zp", np.zeros(scales.shape, np.int8))
    out.append(helper.make_node("DequantizeLinear", [wq, ws, wz], [f"{tag}_dq"], axis=axis, name=f"{tag}_DQ"))
    node.input[1] = f"{tag}_dq"
    if len(node.input) > 2 and node.input[2] in g.inits and not signed:  # int8: the bias stays float32
        bias = quantize_bias(numpy_helper.to_array(g.inits[node.input[2]]), in_scale, scales)
        if bias is not None:
            btag = f"int8_{safe_name(node.input[2])}"
            bq = const(graph, f"{btag}_codes", bias[0])
            bsn = const(graph, f"{btag}_scale", bias[1])
            bz = const(graph, f"{btag}_zp", np.zeros(bias[1].shape, np.int32))
            out.append(helper.make_node("DequantizeLinear", [bq, bsn, bz], [f"{btag}_dq"], axis=0,
                                        name=f"{btag}_DQ"))
            node.input[2] = f"{btag}_dq"
    return out


def _insert(graph, g: Graph, new_nodes: Dict[str, List[onnx.NodeProto]], rename: Dict[str, str]) -> None:
    """Rewire every consumer of a quantised tensor to its dequantised twin (never the Q node itself), drop unused
    initializers and insert the new nodes after their producers (topological order). Graph outputs keep their
    float32 tensors."""
    inserted = {id(n) for ns in new_nodes.values() for n in ns}
    for node in graph.node:
        if id(node) in inserted:
            continue
        for k, i in enumerate(node.input):
            if i in rename:
                node.input[k] = rename[i]
    used = {i for n in graph.node for i in n.input} | {w for ns in new_nodes.values() for n in ns for w in n.input}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
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


def quantize_model(model: onnx.ModelProto, calibration: np.ndarray, batch_dim: int, *,
                   quantize_all: bool = False, states=None, neuron: str = "qdq",
                   activations: str = "uint8", layout: str = "nchw",
                   fold_residual: bool = True) -> Tuple[onnx.ModelProto, Dict[str, Any]]:
    """The Q/DQ int8 model of the float32 ``model`` (module docstring) and the manifest's quantisation record.
    ``states``: a streaming step model's membranes (:func:`calibrate`); ``activations``: uint8 | int8 (the
    TensorRT form); ``fold_residual=False``: BatchNorms stay float (the form before :mod:`.residual`, for
    benchmarks/profile_int8.py's comparison)."""
    signed = activations == "int8"
    code = np.int8 if signed else np.uint8
    from .residual import fold_batchnorms

    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    folds = fold_batchnorms(folded, quantize_all) if fold_residual else {}  # the residual path in int8 (.residual);
    #                                                           calibrated on the folded graph
    out = onnx.ModelProto()
    out.CopyFrom(folded)
    p = plan(out, quantize_all)
    if not p["layers"]:
        raise UserError("--precision int8: the model has no layer to quantise (weighted layers fed by spikes; the "
                        "analog first layer and the readout stay float32 unless --int8-all-layers)")
    p, params, steps, narrow = _calibrated_plan(folded, out, p, calibration, batch_dim, states, signed, quantize_all)
    g = Graph(out)
    graph = out.graph
    new_nodes: Dict[str, List[onnx.NodeProto]] = defaultdict(list)  # inserted after the producer of the key
    rename: Dict[str, str] = {}  # tensor -> its dequantised twin, for the consumers that take it
    for t, (scale, zp) in [*((t, (s, 0)) for t, s in p["spikes"].items()), *((t, params[t]) for t in
                                                                               p["calibrated"])]:
        if t not in rename:
            nodes, rename[t] = qdq(graph, t, scale, zp, f"int8_{safe_name(t)}", code)
            new_nodes[t].extend(nodes)
    for node in p["layers"]:
        new_nodes[""].extend(_quantize_layer(graph, g, node, _in_scale(g, p, params, node), signed, narrow))
    _insert(graph, g, new_nodes, rename)
    for prop in out.metadata_props:  # the recorded neuron inputs: the dequantised current the neuron reads
        if prop.key == "dsr_deploy.layer_inputs":
            prop.value = json.dumps([[i, rename.get(t, t)] for i, t in json.loads(prop.value)])
    record = {
        "method": "mse-percentile",
        "calibration_samples": int(calibration.shape[batch_dim]),
        "quantized_layers": len(p["layers"]),
        "float_layers": p["float_layers"],
        "rounding_steps_max": round(max(steps.values(), default=0.0), 4),  # of the int8 layers (.sensitivity)
        "spikes": {t: {"scale": s, "zero_point": 0} for t, s in p["spikes"].items()},
        "currents": len(p["calibrated"]),
        "weights": "int8 symmetric per output channel",
        "all_layers": bool(quantize_all),
        "activations": activations,
        **folds,
    }
    if neuron == "quantized":
        from .neurons import quantized_neurons

        record["quantized_neurons"] = quantized_neurons(out)
    record["neuron"] = neuron
    record["layout"] = layout
    if layout == "nhwc":  # ONNX Runtime CPU: channels-last QLinearConv, no transposes between layers
        from .layout import channels_last

        record["channels_last"] = channels_last(out)
        if not signed:  # the convolutions on spikes, event-driven (.spike_conv; the same codes)
            from .spike_conv import event_convs

            record["event_convs"] = event_convs(out)
    out.metadata_props.append(onnx.StringStringEntryProto(key=META_QUANT, value=json.dumps(record)))
    return out, record


def quantize_file(path, ctx, states=None) -> Dict[str, Any]:
    """Rewrite the float32 ONNX file ``path`` as its int8 model in place (checked) with the export's
    :class:`~.options.Int8Options`; returns the artifact's ``precision`` / ``quantization`` fields."""
    from ...io import atomic_path

    model = onnx.load(str(path))
    q, record = quantize(model, ctx.options.int8, 1, states=states)
    onnx.checker.check_model(q, full_check=True)
    with atomic_path(path) as tmp:
        onnx.save(q, str(tmp))
    return {"precision": "int8", "quantization": record}


def quantize(model: onnx.ModelProto, opts, batch_dim: int, states=None) -> Tuple[onnx.ModelProto, Dict[str, Any]]:
    """:func:`quantize_model` with resolved :class:`~.options.Int8Options` ``opts``."""
    return quantize_model(model, opts.calibration, batch_dim, quantize_all=opts.all_layers, states=states,
                          neuron=opts.neuron, activations=opts.activations, layout=opts.layout)
