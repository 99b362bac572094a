"""Running an artifact with an exit rule: ``runner.infer(feeds, early_exit=rule)`` (:mod:`dsr_deploy.early_exit`).

* A streaming artifact (``export --mode streaming``) runs one step at a time and really stops: after each step
  the samples whose rule fired leave the batch, and the batch and its membranes are compacted to the samples
  still running (:func:`run_streaming`). Each sample's result is the one it gets alone: the step model is per
  sample, and the readout is computed on each sample's own spikes.
* A multi-step artifact runs all T steps (it cannot stop inside); its per-step readout (``readout_steps`` of an
  export with ``--per-step-readout``, or the readout of each prefix of its spike output) says where each sample
  would have stopped. That answers "what does the rule keep" (calibration) but saves no time.

Either way the result is ``{"prediction": [B] int64, "steps": [B] int64, "readout": [B, C] float32}``
(names: :mod:`dsr_deploy.contract`). The rule ``"manifest"`` (or True) is the one ``exit-calibrate`` recorded.

This module knows no backend and not the runner base class: it calls ``runner.infer`` / ``inputs``.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..contract import EXIT_PREDICTION, EXIT_READOUT, EXIT_STEPS, READOUT_STEPS
from ..early_exit import ExitRule, Readout, readout_of_manifest, run_streaming, simulate
from ..errors import UserError
from ..manifest import MANIFEST, Manifest, as_manifest, read_manifest

__all__ = ["artifact_manifest", "exit_rule", "infer_early_exit", "manifest_readout", "per_step_readouts",
           "readouts_of", "runner_manifest"]


def _np(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def artifact_manifest(runner: Any) -> Manifest:
    """The validated manifest of the export folder the runner's artifact lives in (early exit needs it)."""
    path = Path(str(getattr(runner, "artifact", "")))
    folder = path if path.is_dir() else path.parent
    if not (folder / MANIFEST).is_file():
        raise UserError(f"early exit needs the export folder's {MANIFEST} beside {path} (its T and readout)")
    return read_manifest(folder)


def exit_rule(value: Any, manifest: Mapping) -> ExitRule:
    """``value`` as a rule; ``"manifest"`` / True: the rule ``exit-calibrate`` recorded in ``manifest``."""
    if value is True or value == "manifest":
        record = manifest.get("early_exit")
        if not record:
            raise UserError("the export folder has no calibrated exit rule; run dsr-deploy exit-calibrate DIR "
                            "or pass a rule (e.g. 'margin>=0.25')")
        return ExitRule.from_record(record)
    return ExitRule.of(value)


def manifest_readout(manifest: Mapping) -> Readout:
    record = (manifest.get("early_exit") or {}).get("readout")
    if isinstance(record, Mapping):  # the readout the rule was calibrated with
        return Readout(str(record.get("kind")), float(record.get("tau", 1.0)), float(record.get("delta_t", 0.05)))
    return readout_of_manifest(manifest)


def _one_input(feeds: Mapping[str, Any]) -> np.ndarray:
    if not isinstance(feeds, Mapping) or len(feeds) != 1:
        raise UserError("early exit takes one input: {name: x} with x the whole sequence [T, B, ...]")
    return np.ascontiguousarray(_np(next(iter(feeds.values()))))


def per_step_readouts(runner: Any, feeds: Mapping[str, Any], manifest: Mapping,
                      readout: Readout | None = None) -> np.ndarray:
    """``[T, B, C]``: the readout after every step of one full multi-step run (the artifact's ``readout_steps``
    output, else the readout of each prefix of its spike output)."""
    out = runner.infer(feeds)
    if READOUT_STEPS in out:
        return _np(out[READOUT_STEPS])
    io = as_manifest(manifest).io or {}
    if io.get("output") == "logits":
        raise UserError("this artifact returns logits only: export it with --per-step-readout (or as spikes, or "
                        "--mode streaming) to read the readout after every step")
    spikes = _np(next(iter(out.values())))
    if io.get("input_layout") == "BT":
        spikes = np.swapaxes(spikes, 0, 1)
    spikes = spikes.reshape(spikes.shape[0], spikes.shape[1], -1)
    return (readout or readout_of_manifest(manifest)).prefixes(spikes)


def streaming_readouts(runner: Any, x_seq: np.ndarray, readout: Readout, state_shapes: list[tuple[int, ...]],
                       initial_values: list[float] | None = None) -> np.ndarray:
    """``[T, B, C]``: the running readout of a streaming runner after every step (no early exit); each membrane
    starts at its ``initial_values`` entry (the manifest's: a hard-reset SpikingJelly layer at v_reset)."""
    from .stream import StreamSession

    session = StreamSession(runner, state_shapes, initial_values=initial_values)
    spikes = session.run(x_seq)
    return readout.prefixes(spikes.reshape(spikes.shape[0], spikes.shape[1], -1))


def readouts_of(runner: Any, x: np.ndarray, manifest: Manifest | None = None) -> np.ndarray:
    """``[T, B, C]`` per-step readouts of ``x`` (the artifact's input; the whole sequence for streaming)."""
    manifest = manifest if manifest is not None else artifact_manifest(runner)
    readout = manifest_readout(manifest)
    if manifest.mode == "streaming":
        from .stream import initial_value, manifest_states

        states = manifest_states(manifest)
        return streaming_readouts(runner, x, readout, [tuple(s["shape"]) for s in states],
                                  [initial_value(s) for s in states])
    name = runner.inputs()[0].name
    return per_step_readouts(runner, {name: x}, manifest, readout)


_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # runner -> (manifest, readout, state shapes)


def _plan(runner: Any) -> tuple:
    """The runner's manifest, readout and membrane shapes, read and validated once per runner (a call per
    request must not re-read the folder)."""
    plan = _PLANS.get(runner)
    if plan is None:
        manifest = artifact_manifest(runner)
        shapes = None
        if manifest.mode == "streaming":
            from .stream import manifest_states

            shapes = [tuple(s["shape"]) for s in manifest_states(manifest)]
        plan = _PLANS[runner] = (manifest, manifest_readout(manifest), shapes)
    return plan


def runner_manifest(runner: Any) -> Manifest:
    """The validated manifest of the runner's export folder (read once per runner)."""
    return _plan(runner)[0]


def infer_early_exit(runner: Any, feeds: Mapping[str, Any], early_exit: Any) -> dict[str, np.ndarray]:
    """``runner.infer(feeds, early_exit=rule)``: predictions, steps used and readouts (see the module docs)."""
    manifest, readout, shapes = _plan(runner)
    rule = exit_rule(early_exit, manifest)
    if manifest.mode == "streaming":
        x = _one_input(feeds)
        if x.ndim < 2:
            raise UserError(f"early exit on a streaming artifact takes the sequence [T, B, ...], got {list(x.shape)}")
        calls = []

        def infer(f: dict) -> Mapping[str, Any]:  # the feeds are checked on the first step only
            calls.append(1)
            return runner.infer(f, check=len(calls) == 1)
        from .stream import initial_value, manifest_states

        return run_streaming(infer, x, rule, readout, shapes, [initial_value(s) for s in manifest_states(manifest)])
    pred, steps, final = simulate(per_step_readouts(runner, feeds, manifest, readout), rule)
    return {EXIT_PREDICTION: pred, EXIT_STEPS: steps, EXIT_READOUT: final}
