"""The comparisons of one artifact x backend run against the reference: end to end (output, top-1, accuracy,
per-layer spikes and inputs from the probe) and the teacher-forced neuron check."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from ..errors import UserError
from ..export.base import CURRENT_PREFIX, INPUT_NAME, OUTPUT_NAME, PROBE_PREFIX
from ..numerics import count_equal, max_abs_diff
from .inputs import fits
from .probes import probe_output_names
from .reference import Call, top1
from .report import LayerStat, Run


def _stat(stats: Dict[int, LayerStat], layer: int, infos) -> LayerStat:
    if layer not in stats:
        info = infos[layer]
        stats[layer] = LayerStat(layer, info.name, info.op_type)
    return stats[layer]


@dataclass
class Probe:
    """An artifact with every neuron call's spikes and input exposed (:mod:`.probes`)."""

    path: Optional[Path] = None
    layer_of: Optional[list] = None  # layer index of each probe output (None: the reference's call order)
    note: str = ""


def _probe_runner(ctx, target, probe: Optional[Probe], n_calls: int, load_runner):
    if target.module is not None or probe is None or probe.path is None:
        return None
    popts = {**target.options, "trust_pickle": ctx.options.trust_pickle}
    if target.format != "onnx":
        popts.update(input_names=[INPUT_NAME], output_names=probe_output_names(n_calls))
    return load_runner(probe.path, target.backend, **popts)


def run_end_to_end(ctx, target, run: Run, runner, probe: Optional[Probe]) -> None:
    """The artifact on every verify input: output difference, top-1 (and accuracy), per-layer spikes and inputs
    from the probe (the PyTorch target is its own probe)."""
    from ..runtime import load_runner

    stats: Dict[int, LayerStat] = {}
    is_module = target.module is not None
    probe_runner = _probe_runner(ctx, target, probe, len(ctx.refs[0][3]), load_runner)
    try:
        for k, (name, x, ref_out, ref_calls) in enumerate(ctx.refs):
            skip = fits(target.artifact, ctx.manifest, x) if not is_module else None
            if skip:
                run.layers_note = (run.layers_note + f"; input {name} skipped ({skip})").lstrip("; ")
                continue
            x = x.astype(input_dtype(run.precision))
            out = runner.infer({INPUT_NAME: x})
            _score_output(ctx, run, out, ref_out, last=k == len(ctx.refs) - 1)
            got = out if is_module else (probe_runner.infer({INPUT_NAME: x}) if probe_runner is not None else None)
            if got is not None:
                layer_of = probe.layer_of if probe is not None else None
                _accumulate(stats, got, ref_calls, layer_of, ctx.infos, run.precision)
    finally:
        if probe_runner is not None:
            probe_runner.release()
    run.layers = [stats[i] for i in sorted(stats)]


def _score_output(ctx, run: Run, out: dict, ref_out: np.ndarray, last: bool) -> None:
    y = np.asarray(out[OUTPUT_NAME] if OUTPUT_NAME in out else next(iter(out.values()))).astype(np.float32)
    if y.shape != ref_out.shape:
        raise UserError(f"output shape {list(y.shape)} differs from the model's {list(ref_out.shape)}")
    run.max_abs_diff = max_abs_diff(y, ref_out, run.max_abs_diff)  # NaN-aware (dsr_deploy.numerics)
    t_art, t_ref = top1(y, ctx.io), top1(ref_out, ctx.io)
    run.top1_equal += int((t_art == t_ref).sum())
    run.top1_total += int(t_ref.size)
    if ctx.labels is not None and last:
        run.correct, run.labelled = int((t_art == ctx.labels).sum()), int(ctx.labels.size)


def _accumulate(stats: Dict[int, LayerStat], got: dict, ref_calls: List[Call], probe_idx, infos,
                precision: str = "float32") -> None:
    # Match the j-th call of layer i in the probe with the j-th call of layer i in the reference.
    by_layer: Dict[int, List[Call]] = {}
    for c in ref_calls:
        by_layer.setdefault(c.layer, []).append(c)
    keys = sorted((k for k in got if k.startswith(PROBE_PREFIX)), key=lambda k: int(k[len(PROBE_PREFIX):]))
    if len(keys) != len(ref_calls):
        raise UserError(f"the probe exposes {len(keys)} neuron outputs, the model made {len(ref_calls)} neuron calls")
    seen: Dict[int, int] = {}
    for k, key in enumerate(keys):
        layer = probe_idx[k] if probe_idx is not None and probe_idx[k] is not None else ref_calls[k].layer
        j = seen.get(layer, 0)
        seen[layer] = j + 1
        want = by_layer[layer][j]
        have = np.asarray(got[key])
        if have.size != want.y.size:
            raise UserError(f"layer {layer}: spikes of shape {list(have.shape)}, the model's are {list(want.y.shape)}")
        # A flat layer's probe gives [T, B, ...] spikes for the training neuron's [T*B, ...]: same order.
        have = have.reshape(want.y.shape).astype(np.float32)
        st = _stat(stats, layer, infos)
        st.equal += count_equal(have, _rounded(want.y, precision))  # NaN spikes of a NaN model agree
        st.total += int(want.y.size)
        cur = got.get(f"{CURRENT_PREFIX}{key[len(PROBE_PREFIX):]}")
        if cur is not None:
            cur = np.asarray(cur, dtype=np.float64).reshape(want.x.shape) if np.size(cur) == want.x.size else None
        if cur is not None:
            d = np.abs(cur - want.x.astype(np.float64))
            scale = float(np.max(np.abs(want.x))) if want.x.size else 0.0
            mx = float(np.max(d)) if d.size else 0.0
            st.input_max_abs_diff = max(st.input_max_abs_diff or 0.0, mx)
            st.input_max_rel_diff = max(st.input_max_rel_diff or 0.0, mx / scale if scale > 0 else 0.0)
            st.input_differing += int((d > 0).sum())


# ---------------------------------------------------------------------------------------------------------
# The teacher-forced neuron check.


def _to_time_major(x: np.ndarray, info) -> np.ndarray:
    """A training neuron's input in the ``[T, B, ...]`` layout the dsr ops take (the authors' neurons take
    ``[T*B, ...]``, time-major flattened)."""
    if info.layout == "flat":
        return x.reshape((info.timesteps, x.shape[0] // info.timesteps) + x.shape[1:])
    return x


def _reference_spikes(reference_neurons, layer: int, info, x: np.ndarray, time_major: bool) -> np.ndarray:
    """The reference training neuron of ``layer`` run on ``x`` (in the artifact neuron's layout); its spikes in that
    layout."""
    import torch

    if reference_neurons is None or layer not in reference_neurons:
        raise ValueError(f"layer {layer}: no reference neuron to feed the quantised current")
    module = reference_neurons[layer]
    inp = x.reshape((-1,) + x.shape[2:]) if time_major and info.layout == "flat" else x
    with torch.no_grad():
        y = module(torch.from_numpy(np.ascontiguousarray(inp, dtype=np.float32)))
    return y.detach().cpu().numpy().reshape(x.shape)


def run_neuron_check(run: Run, runner, refs, infos, reference_neurons=None) -> None:
    """Feed every reference neuron call's input to the artifact's own neuron (``runner.neurons()``) and count equal
    spikes per layer. ``reference_neurons`` (layer -> the training neuron module): for a neuron that quantises its
    input (int8), the reference is re-run on the current that neuron really integrated."""
    try:
        neurons = runner.neurons()
    except UserError as exc:
        run.neuron_note = str(exc)
        return
    if not neurons:
        run.neuron_note = "the artifact exposes no neuron"
        return
    by_name = {info.name: i for i, info in infos.items()}
    for n in neurons:  # a program's op call knows its module path, not the layer index
        if n.layer is None and n.params.get("module_path") in by_name:
            n.layer = by_name[n.params["module_path"]]
    stats = {layer.index: layer for layer in run.layers}
    ordered = [n for n in neurons if n.layer is None]
    for _name, _x, _out, calls in refs:
        seen: Dict[int, int] = {}
        for k, call in enumerate(calls):
            j = seen.get(call.layer, 0)
            seen[call.layer] = j + 1
            match = [n for n in neurons if n.layer == call.layer and (n.call is None or n.call == j)]
            if not match and len(ordered) == len(calls):
                match = [ordered[k]]
            if not match:
                raise UserError(f"layer {call.layer} ({infos[call.layer].name}): the artifact holds no neuron for "
                                f"its call {j}")
            info = infos[call.layer]
            st = _stat(stats, call.layer, infos)
            for n in match:
                x = _to_time_major(call.x, info) if n.time_major else call.x
                want = call.y.reshape(x.shape)
                try:
                    have = n.run(np.ascontiguousarray(x.astype(input_dtype(run.precision))))
                except ValueError as exc:  # the file cannot give this neuron alone
                    run.neuron_note = str(exc)
                    return
                if isinstance(have, tuple):  # the neuron quantised its input: the reference gets what it integrated
                    have, integrated = have
                    want = _reference_spikes(reference_neurons, call.layer, info, integrated, n.time_major)
                have = np.asarray(have)
                if have.shape != want.shape:
                    raise UserError(f"layer {call.layer}: the artifact's neuron returned {list(have.shape)}, "
                                    f"the reference {list(want.shape)}")
                st.neuron_equal += count_equal(have.astype(np.float32), _rounded(want, run.precision))
                st.neuron_total += int(want.size)
    run.layers = [stats[i] for i in sorted(stats)]
    run.neuron_checked = True


def input_dtype(precision: str):
    return np.float16 if precision == "float16" else np.float32


def _rounded(spikes: np.ndarray, precision: str) -> np.ndarray:
    """The reference's float32 spikes as a half-precision artifact represents them (each spike value, vth or
    vth/dt, rounded once to the artifact's dtype)."""
    if precision == "float16":
        return spikes.astype(np.float16).astype(np.float32)
    return spikes
