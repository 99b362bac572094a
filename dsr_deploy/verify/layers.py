"""Defects versus numerical divergence: each layer checked on its own.

A layer's input (the current its neuron integrates), computed by the artifact from the *reference's* spikes
upstream, may differ from the reference's only by the layer's own arithmetic: float32 / float16 rounding of the
convolution, or for int8 the quantisation the file records. More than that is a **defect** of the artifact (an
edited weight or zero point, a degenerate calibration); less is the backend's own arithmetic, and spikes that
then differ end to end (a membrane within rounding of its threshold) are **numerical divergence**.

ONNX artifacts are checked for every layer, teacher-forced (:func:`forced_model`: every neuron's spikes replaced by
a graph input fed the reference's spikes, every neuron's input exposed). Other formats: from the end-to-end probe,
up to the first layer whose spikes differ (before it, every upstream spike is the reference's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..export.base import CURRENT_PREFIX, INPUT_NAME
from ..export.int8.options import INT8_MAX_STEPS, INT8_MIN_STEPS, INT8_QUANTILE

#: Relative (to the layer input's largest magnitude) difference a layer's own arithmetic explains: a sum of K
#: products rounds within about sqrt(K) ulps typically and K ulps at worst; 1e-4 is K ulps of float32 for K ~ 800
#: and still 100x below any real defect seen (a zero point or weight edit moves an input by percents).
FLOAT_TOLERANCE = {"float32": 1e-4, "float16": 2e-2, "bfloat16": 1e-1}
#: int8: INT8_MAX_STEPS / INT8_QUANTILE / INT8_MIN_STEPS (imported above) live beside the export's rounding check
#: (export/int8/options.py), which keeps float32 the layers whose parameters alone would spend half the bound.

_MOVES = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity"}  # values moved, not changed


@dataclass
class ForcedSite:
    call: int
    layer: int
    spikes: str  # the graph input fed the reference's spikes
    perm: Optional[List[int]]  # channels-last: the permutation from the reference's layout to the tensor's
    scale: Optional[str]  # int8: the current's recorded scale / zero point (initializer names)
    zero_point: Optional[str]
    has_current: bool = True  # False: the file does not show the current (the layer is not checked)


def _spike_producer_rename(graph, tensor: str, new: str) -> bool:
    for node in graph.node:
        for i, o in enumerate(node.output):
            if o == tensor:
                node.output[i] = new
                return True
    return False


def dequantized_by(producer: dict, tensor: str):
    """The DequantizeLinear that produced ``tensor`` (through reshapes), or None."""
    dq = producer.get(tensor)
    while dq is not None and dq.op_type in _MOVES:
        dq = producer.get(dq.input[0])
    return dq if dq is not None and dq.op_type == "DequantizeLinear" else None


def _current_of(graph, site, producer, cl: dict) -> Tuple[Optional[str], Optional[str], Optional[str]]:
    """(tensor holding the float current the neuron reads, its scale, zero point) of one neuron call."""
    from onnx import helper

    if site.input is not None and (site.input in producer or any(i.name == site.input for i in graph.input)):
        dq = dequantized_by(producer, site.input)  # through a reshape between it and the neuron
        if dq is not None:
            return site.input, dq.input[1], dq.input[2] if len(dq.input) > 2 else None
        return site.input, None, None
    if site.quantized:  # a quantised neuron op reads the codes: dequantise them with its own scale / zero point
        node = next(n for n in graph.node if n.name == site.node)
        if cl and node.input[0] not in cl:  # a channels-last file whose codes' layout is not recorded: unchecked
            return None, None, None
        out = f"verify_current_{site.call}"
        graph.node.append(helper.make_node("DequantizeLinear", list(node.input[:3]), [out],
                                           name=f"verify_dq_{site.call}"))
        if node.input[0] in cl:  # channels-last codes: the current is too
            cl[out] = cl[node.input[0]]
        return out, node.input[1], node.input[2]
    return None, None, None


def forced_model(model, ranks: List[int]) -> Tuple[object, List[ForcedSite]]:
    """A copy of the ONNX ``model`` whose neurons' spikes are graph inputs (of ``ranks[k]`` dimensions) and whose
    neurons' inputs are the outputs (``currents_<k>``, in the reference's layout)."""
    import onnx
    from onnx import helper

    from ..export.onnx_neurons import channels_last_map, neuron_sites, probe_nodes

    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.node.extend(probe_nodes(m))
    cl = channels_last_map(m)
    elem = m.graph.input[0].type.tensor_type.elem_type
    sites, forced, outputs = neuron_sites(m), [], []
    if cl and any(site.quantized for site in sites):
        raise ValueError("a channels-last file with quantised neuron ops passes spike codes between layers, so its "
                         "layers cannot be fed the reference's spikes")
    producer = {o: n for n in m.graph.node for o in n.output}
    for site in sites:
        cur, scale, zp = _current_of(m.graph, site, producer, cl)
        if (cur is None and not site.quantized) or \
                not _spike_producer_rename(m.graph, site.output, f"{site.output}__verify_own"):
            raise ValueError(f"layer {site.layer}: the file does not show its neuron's input and spikes")
        rank = ranks[site.call] if site.call < len(ranks) else 0
        m.graph.input.append(helper.make_tensor_value_info(site.output, elem,
                                                           [f"forced{site.call}_{i}" for i in range(rank)]))
        perm = [int(i) for i in np.argsort(cl[site.output])] if site.output in cl else None
        forced.append(ForcedSite(site.call, site.layer, site.output, perm, scale, zp, cur is not None))
        if cur is None:  # its spikes are still forced for the layers downstream
            continue
        name = f"{CURRENT_PREFIX}{site.call}"
        m.graph.node.append(helper.make_node("Transpose", [cur], [name], perm=cl[cur]) if cur in cl else
                            helper.make_node("Identity", [cur], [name]))
        outputs.append(helper.make_tensor_value_info(name, elem, None))
    del m.graph.output[:]
    m.graph.output.extend(outputs)
    return m, forced


def init_value(model, name: Optional[str]) -> Optional[np.ndarray]:
    from onnx import numpy_helper

    if not name:
        return None
    init = next((i for i in model.graph.initializer if i.name == name), None)
    return None if init is None else numpy_helper.to_array(init)


@dataclass
class LayerFigures:
    """One layer over every verify input: the largest relative difference, and for int8 the worst quantile in
    steps of the scale and the fewest steps the reference's current spans."""

    rel: float = 0.0
    steps: float = 0.0
    span_steps: float = float("inf")
    scale: Optional[float] = None
    zero_point: Optional[int] = None


def compare(fig: LayerFigures, have: np.ndarray, want: np.ndarray, scale, zp) -> None:
    d = np.abs(have.astype(np.float64) - want.astype(np.float64))
    top = float(np.max(np.abs(want))) if want.size else 0.0
    fig.rel = max(fig.rel, float(np.max(d)) / top if top > 0 else float(np.max(d, initial=0.0)))
    if scale is None:
        return
    s = float(np.max(scale))
    fig.scale, fig.zero_point = s, (int(np.max(zp)) if zp is not None else 0)
    fig.steps = max(fig.steps, float(np.percentile(d / s, INT8_QUANTILE)) if d.size else 0.0)
    lo, hi = np.percentile(want, [0.1, 99.9]) if want.size else (0.0, 0.0)
    if hi > lo:
        fig.span_steps = min(fig.span_steps, float(hi - lo) / s)


def _spikes_as_fed(call, infos) -> np.ndarray:
    """A reference call's spikes in the dsr op's layout (``[T, B, ...]``; the authors' neurons give ``[T*B, ...]``)."""
    info = infos[call.layer]
    y = call.y
    if info.layout == "flat":
        y = y.reshape((info.timesteps, y.shape[0] // info.timesteps) + y.shape[1:])
    return y


def _forced_feeds(x, calls, sites: List[ForcedSite], infos, dtype) -> dict:
    feeds = {INPUT_NAME: x}
    for site, call in zip(sites, calls):
        y = _spikes_as_fed(call, infos)
        if site.perm is not None:
            y = np.transpose(y, site.perm)
        feeds[site.spikes] = np.ascontiguousarray(y.astype(dtype))
    return feeds


def forced_figures(ctx, target, model) -> Dict[int, LayerFigures]:
    """Run the forced copy of ``model`` (an ONNX file) in the target's backend on every verify input."""
    import onnx

    from ..runtime import load_runner
    from .checks import input_dtype
    from .inputs import fits

    ranks = [len(_spikes_as_fed(c, ctx.infos).shape) for c in ctx.refs[0][3]]
    forced, sites = forced_model(model, ranks)
    path = ctx.tmp / f"forced_{target.path.stem}.onnx"
    onnx.save(forced, str(path))
    runner = load_runner(path, target.backend, **{**target.options, "trust_pickle": ctx.options.trust_pickle})
    figures: Dict[int, LayerFigures] = {}
    qparams = [(init_value(model, s.scale), init_value(model, s.zero_point)) for s in sites]
    try:
        for _name, x, _out, calls in ctx.refs:
            if fits(target.artifact, ctx.manifest, x) or len(calls) != len(sites):
                continue
            dtype = input_dtype(target.precision)
            got = runner.infer(_forced_feeds(x.astype(dtype), calls, sites, ctx.infos, dtype))
            for site, call, (scale, zp) in zip(sites, calls, qparams):
                if not site.has_current:
                    continue
                have = np.asarray(got[f"{CURRENT_PREFIX}{site.call}"]).reshape(call.x.shape)
                compare(figures.setdefault(call.layer, LayerFigures()), have, call.x, scale, zp)
    finally:
        runner.release()
    return figures


def defect_text(layer, fig: LayerFigures, tol: float) -> Optional[str]:
    where = f"layer {layer.index} ({layer.name})"
    if fig.scale is not None:
        q = f"scale {fig.scale:.3g}, zero point {fig.zero_point}"
        if fig.span_steps < INT8_MIN_STEPS:
            return (f"{where}: its int8 current ({q}) resolves the reference's current in {fig.span_steps:.3g} "
                    f"steps (< {INT8_MIN_STEPS:g}: a degenerate calibration?)")
        if fig.steps > INT8_MAX_STEPS:
            return (f"{where}: its int8 current ({q}) is off from the reference's by {fig.steps:.3g} steps "
                    f"({INT8_QUANTILE:g}th percentile; a correct layer: <= {INT8_MAX_STEPS:g})")
        return None
    if fig.rel > tol:
        return (f"{where}: its input, given the reference's spikes upstream, is off by {fig.rel:.3g} relative "
                f"(its own arithmetic explains <= {tol:g})")
    return None


def _generic(run) -> None:
    """Up to the first layer whose end-to-end spikes differ, every upstream spike is the reference's: a layer input
    off by more than its own arithmetic explains is then a defect."""
    tol = FLOAT_TOLERANCE.get(run.precision, FLOAT_TOLERANCE["float32"])
    for layer in run.layers:
        rel = layer.input_max_rel_diff
        if rel is not None and rel > tol:
            text = defect_text(layer, LayerFigures(rel=rel), tol)
            run.defects.append({"layer": layer.index, "name": layer.name, "text": text, "input_max_rel_diff": rel})
            return
        if layer.total and layer.equal != layer.total:
            return


def check_layers(ctx, target, run) -> None:
    """Fill ``run.defects`` and ``run.layer_check`` (module docstring)."""
    if target.format == "onnx" and target.backend == "onnxruntime" and ctx.options.layers:
        import onnx

        try:
            figures = forced_figures(ctx, target, onnx.load(str(target.path)))
        except Exception as exc:  # a file without recorded neuron inputs: the end-to-end rule below
            run.layer_check = f"no teacher-forced layer check ({str(exc).splitlines()[0] if str(exc) else exc!r})"
        else:
            tol = FLOAT_TOLERANCE.get(run.precision, FLOAT_TOLERANCE["float32"])
            stats = {layer.index: layer for layer in run.layers}
            for index, fig in sorted(figures.items()):
                layer = stats.get(index) or type("L", (), {"index": index, "name": ctx.infos[index].name})()
                text = defect_text(layer, fig, tol)
                if text:
                    run.defects.append({"layer": index, "name": layer.name, "text": text, "input_max_rel_diff":
                                        fig.rel, "int8_steps": fig.scale and fig.steps,
                                        "int8_span_steps": fig.scale and fig.span_steps})
            worst = max((f.rel for f in figures.values() if f.scale is None), default=None)
            steps = max((f.steps for f in figures.values() if f.scale is not None), default=None)
            run.layer_check = (f"every layer teacher-forced ({len(figures)} layers, the reference's spikes upstream)"
                               + (f"; float layers' inputs within {worst:.2g} rel." if worst is not None else "")
                               + (f"; int8 currents within {steps:.2g} steps ({INT8_QUANTILE:g}th pct.)"
                                  if steps is not None else ""))
            return
    if run.precision == "int8":
        run.layer_check = run.layer_check or "int8 layers are checked teacher-forced in ONNX Runtime only"
        return
    _generic(run)
    run.layer_check = run.layer_check or "end to end, up to the first layer whose spikes differ"
