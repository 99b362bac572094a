"""Running a streaming (single-step) model: :class:`StreamSession` holds the membranes between steps.

The model is one written by :mod:`dsr_deploy.export.streaming` (``dsr-deploy export --mode streaming``), run by any
runner (or a callable taking and returning dicts of arrays by name); the names are the wire contract's
(:mod:`dsr_deploy.contract`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..contract import STREAM_INPUT as INPUT_NAME
from ..contract import STREAM_OUTPUT as OUTPUT_NAME
from ..contract import state_input_name, state_output_name
from ..errors import UserError

__all__ = ["StreamSession", "manifest_states", "neuron_states", "readout_state", "stream_steps", "stream_result"]


def manifest_states(manifest: Mapping) -> list[dict]:
    """The membrane records of a streaming export's manifest (a validated one, or a mapping built in memory)."""
    from ..manifest import as_manifest

    m = as_manifest(manifest)
    if not m.states:
        raise UserError("the manifest has no membrane states: not a streaming export (dsr-deploy export --mode "
                        "streaming)")
    return m.states


def neuron_states(states: Sequence[Mapping]) -> list:
    """The membrane records (every state but a ``--readout`` export's window)."""
    return [s for s in states if "readout" not in s]


def readout_state(states: Sequence[Mapping]):
    """The readout's window record of a streaming ``--readout`` export (its last state), else None."""
    return next((s for s in states if "readout" in s), None)


def stream_steps(x: Any, io: Mapping | None) -> np.ndarray:
    """A whole input as the artifact of the export's ``io`` record takes it -> the ``[T, B, ...]`` steps fed one
    by one: ``BT`` transposed; a static ``[B, ...]`` image (``--encode direct``) fed at each of the T steps."""
    x = _as_numpy(x)
    layout = (io or {}).get("input_layout", "TB")
    if layout == "static":
        return np.repeat(x[None], int(io["T"]), axis=0)
    return np.swapaxes(x, 0, 1) if layout == "BT" else x


def stream_result(ys: np.ndarray, io: Mapping | None) -> np.ndarray:
    """The stacked step outputs ``[T, B, ...]`` as the multi-step export with the same flags returns them: with a
    readout the last step's (the readout of the window, the last T steps), with ``BT`` ``[B, T, ...]``."""
    io = io or {}
    if io.get("output") == "logits":
        return ys[-1]
    return np.ascontiguousarray(np.swapaxes(ys, 0, 1)) if io.get("input_layout") == "BT" else ys


def initial_value(state: Mapping) -> float:
    """A membrane record's starting value (untrusted manifest: a number or nothing)."""
    value = state.get("initial_value", 0.0) if state.get("initial", "zeros") != "zeros" else 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise UserError(f"manifest: membrane {state.get('input')!r} has a bad initial_value {value!r}")
    return float(value)


def _as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor (torch is not imported here)
        return x.detach().cpu().numpy()
    return np.asarray(x)


class StreamSession:
    """Runs one stream (a batch of B synchronous streams) over a streaming model, holding the membranes.

    ``model`` is a :class:`dsr_deploy.runtime.base.Runner` (its ``infer``) or any callable taking a dict of
    input arrays by name and returning a dict of output arrays by name. ``state_shapes`` are the per-sample
    membrane shapes (the manifest's ``states[i]["shape"]``); without them they are read from the runner's
    ``inputs()``.
    """

    def __init__(self, model: Any, state_shapes: Sequence[Sequence[int]] | None = None, readout: Any = None,
                 initial_values: Sequence[float] | None = None, io: Mapping | None = None):
        # io: the export's I/O record (--layout / --encode / --readout): how run() takes and returns a sequence
        self.io = dict(io or {})
        self.last: np.ndarray | None = None
        # initial_values: where each membrane starts a stream (the manifest's states[i]["initial_value"]; 0 else)
        self.initial_values = [float(v) for v in initial_values] if initial_values is not None else None
        self._infer: Callable[[Mapping[str, Any]], Mapping[str, Any]] = getattr(model, "infer", model)
        if state_shapes is None:
            if not hasattr(model, "inputs"):
                raise UserError("StreamSession needs state_shapes for a plain callable")
            specs = {s.name: s for s in model.inputs()}
            state_shapes = []
            while state_input_name(len(state_shapes)) in specs:
                shape = specs[state_input_name(len(state_shapes))].shape[1:]
                if not all(isinstance(d, int) for d in shape):
                    raise UserError(f"membrane {state_input_name(len(state_shapes))} has a symbolic shape {shape}; "
                                    "pass state_shapes")
                state_shapes.append(tuple(shape))
        self.state_shapes = [tuple(int(d) for d in s) for s in state_shapes]
        self.states: list[np.ndarray] | None = None
        self.steps = 0
        # The running readout (dsr_deploy.early_exit.Readout): the output spikes so far are kept for it.
        self.readout_of = readout
        self._outputs: list[np.ndarray] = []

    @classmethod
    def from_manifest(cls, model: Any, manifest: Mapping | str | Path) -> StreamSession:
        if not isinstance(manifest, Mapping):
            from ..manifest import read_manifest

            p = Path(manifest)
            manifest = read_manifest(p if p.is_dir() else p.parent)
        from ..early_exit import readout_of_manifest
        from ..manifest import as_manifest

        states = manifest_states(manifest)
        io = as_manifest(manifest).io or {}
        # With --readout the step returns the readout itself (its window is a state): nothing to apply here.
        readout = None if io.get("output") == "logits" else readout_of_manifest(manifest)
        return cls(model, [s["shape"] for s in states], readout=readout,
                   initial_values=[initial_value(s) for s in states], io=io)

    def reset(self) -> None:
        """Start a new stream: the next step begins from zero membranes."""
        self.states, self.steps = None, 0
        self._outputs, self.last = [], None

    def step(self, x_t: Any) -> np.ndarray:
        """One time step ``x_t [B, ...]`` -> ``y_t``; the membranes are kept for the next step."""
        x = _as_numpy(x_t)
        if self.states is None or self.states[0].shape[0] != x.shape[0]:
            if self.states is not None and self.steps:
                raise UserError(f"the batch changed mid-stream ({self.states[0].shape[0]} -> {x.shape[0]}); reset()")
            init = self.initial_values or [0.0] * len(self.state_shapes)
            self.states = [np.full((x.shape[0], *s), v, dtype=np.float32) for s, v in zip(self.state_shapes, init)]
        feeds = {INPUT_NAME: x}
        feeds.update({state_input_name(i): v for i, v in enumerate(self.states)})
        out = self._infer(feeds)
        self.states = [_as_numpy(out[state_output_name(i)]) for i in range(len(self.state_shapes))]
        self.steps += 1
        y = self.last = _as_numpy(out[OUTPUT_NAME])
        if self.readout_of is not None:
            self._outputs.append(y.reshape(y.shape[0], -1))
        return y

    def readout(self) -> np.ndarray:
        """The running readout ``[B, C]`` after the steps so far: bit for bit the full model's readout on those
        steps (:class:`dsr_deploy.early_exit.Readout`; the session needs ``readout=`` or ``from_manifest``)."""
        if self.io.get("output") == "logits" and self.last is not None:
            return self.last  # the step's own readout (export --readout): of the last T steps
        if self.readout_of is None or not self._outputs:
            raise UserError("no running readout: create the session with readout= (or from_manifest) and step it")
        return self.readout_of(np.stack(self._outputs))

    def run_early_exit(self, x_seq: Any, rule: Any) -> dict:
        """Feed ``x_seq [T, B, ...]`` until each sample's exit rule fires (``"margin>=0.25"``, an
        :class:`~dsr_deploy.early_exit.ExitRule`); finished samples leave the batch. Returns ``prediction``,
        ``steps`` (used per sample) and ``readout`` (:mod:`.early_exit`). Independent of the session's stream."""
        from ..early_exit import ExitRule, Readout, run_streaming

        if self.io.get("output") == "logits":
            raise UserError("early exit reads the output spikes after every step; this streaming export returns "
                            "its readout (export --readout): export it without --readout")
        return run_streaming(self._infer, _as_numpy(x_seq), ExitRule.of(rule), self.readout_of or Readout(),
                             self.state_shapes, self.initial_values)

    def run(self, x_seq: Any, reset: bool = True) -> np.ndarray:
        """Feed every step of ``x_seq``; returns what the multi-step export with the same flags returns. Without an
        ``io`` record: ``[T, B, ...]`` in, the stacked outputs ``[T, B, ...]`` out; ``BT``: ``[B, T, ...]`` both
        ways; ``--encode direct``: a static ``[B, ...]`` image fed at each of the T steps; ``--readout``: the
        last step's readout ``[B, classes]`` (:func:`stream_steps`, :func:`stream_result`)."""
        if reset:
            self.reset()
        x = stream_steps(x_seq, self.io)
        return stream_result(np.stack([self.step(x[t]) for t in range(x.shape[0])]), self.io)
