"""Early exit over time steps: the readout after every step, the rules that stop a sample, and their calibration.

A spiking network's answer builds up over T steps; for most inputs it is settled long before the last one. This
module holds the math that does not depend on a backend:

* :class:`Readout`: the readout an artifact is read with (``mean``: the IF firing rate, ``lif-rate``: the seed's
  weighted LIF rate), applied to the first t steps of the output spike train. It *is*
  :class:`dsr_deploy.models.common.RateReadout` in eval mode applied to the prefix, so the readout after step t is
  bit for bit the full model's readout on the first t steps (one source of the math; see docs/runtime.md).
* :class:`ExitRule`: ``max-prob>=p`` (softmax of the readout), ``margin>=m`` (top-1 minus top-2 of the readout),
  ``stable=k`` (the same strict top-1 for the last k steps) or ``full``; never more than ``max_steps`` steps.
  Per sample: :class:`ExitTracker` says which samples of a batch are done after each step.
* :func:`simulate`: each sample's exit step and prediction from per-step readouts ``[T, B, C]``;
  :func:`calibrate`: the cheapest rule (fewest mean steps) whose accuracy stays within ``max_drop`` points of the
  full-T accuracy, and the accuracy / mean-steps curve.

Running a runner with a rule (a streaming artifact stops early, and compacts the batch and its membranes as
samples finish) is :mod:`dsr_deploy.runtime.early_exit`.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .contract import (
    EXIT_PREDICTION,
    EXIT_READOUT,
    EXIT_STEPS,
    STREAM_INPUT,
    STREAM_OUTPUT,
    state_input_name,
    state_output_name,
)
from .errors import UserError
from .manifest import EXIT_READOUTS as READOUTS
from .manifest import EXIT_RULES as RULES
from .manifest import as_manifest

_RULE_TEXT = re.compile(r"^\s*(max-prob|margin)\s*>=\s*([0-9.eE+-]+)\s*$|^\s*stable\s*=\s*(\d+)\s*$|^\s*full\s*$")


# ---------------------------------------------------------------------------------------------------------
# The readout of a prefix of the spike train.

@dataclass(frozen=True)
class Readout:
    """How logits are read from the output layer's spikes ``[t, B, C]`` (:class:`RateReadout` in eval mode)."""

    kind: str = "mean"
    tau: float = 1.0
    delta_t: float = 0.05

    def __post_init__(self):
        if self.kind not in READOUTS:
            raise UserError(f"unknown readout {self.kind!r}; choose {' or '.join(READOUTS)}")

    def module(self):
        return _rate_readout(self.kind, self.tau, self.delta_t)

    def __call__(self, spikes: Any) -> np.ndarray:
        """The readout of the whole of ``spikes [t, B, C]`` (the full model's readout on those t steps)."""
        import torch

        y = spikes if isinstance(spikes, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(spikes))
        with torch.inference_mode():
            return self.module()(y).numpy()

    def prefixes(self, spikes: Any) -> np.ndarray:
        """``[T, B, C]`` spikes -> ``[T, B, C]`` readouts, entry t the readout of steps 0..t."""
        s = np.ascontiguousarray(spikes)
        return np.stack([self(s[: t + 1]) for t in range(s.shape[0])])

    def to_record(self) -> dict:
        return {"kind": self.kind, **({"tau": self.tau, "delta_t": self.delta_t} if self.kind == "lif-rate" else {})}


@functools.lru_cache(maxsize=16)
def _rate_readout(kind: str, tau: float, delta_t: float):
    """One eval-mode :class:`RateReadout` per readout (it holds no state; building one per step costs time)."""
    from .models.common import RateReadout

    return (RateReadout("lif", tau, delta_t) if kind == "lif-rate" else RateReadout("if")).eval()


def readout_of_manifest(manifest: Mapping) -> Readout:
    """The readout an export folder's logits are read with: its ``io`` readout, else the output layer's neuron
    (IF: mean, LIF: the weighted rate with that layer's tau / delta_t), as the quickstart reads spikes."""
    neurons = as_manifest(manifest).neurons
    last = neurons[-1] if neurons else {}
    io = as_manifest(manifest).io or {}
    if as_manifest(manifest).mode == "streaming" and io.get("output") == "logits":
        raise UserError("early exit reads the output spikes after every step; this streaming export returns its "
                        "readout (export --readout): export it without --readout")
    kind = io.get("readout") if io.get("readout") in READOUTS else ("lif-rate" if last.get("kind") == "lif"
                                                                   else "mean")
    if kind == "lif-rate":
        tau, dt = last.get("tau"), last.get("delta_t")
        if not isinstance(tau, (int, float)) or not isinstance(dt, (int, float)) or not tau > 0 or not dt > 0:
            raise UserError("the manifest's output layer has no positive tau / delta_t for the lif-rate readout")
        return Readout("lif-rate", float(tau), float(dt))
    return Readout("mean")


# ---------------------------------------------------------------------------------------------------------
# Exit rules.

@dataclass(frozen=True)
class ExitRule:
    """When a sample stops: ``kind`` with its ``threshold`` (p, m, or k steps), and at most ``max_steps`` steps
    (None: the model's T)."""

    kind: str = "full"
    threshold: float = 0.0
    max_steps: Optional[int] = None

    def __post_init__(self):
        if self.kind not in RULES:
            raise UserError(f"unknown exit rule {self.kind!r}; choose from {', '.join(RULES)}")
        if not isinstance(self.threshold, (int, float)) or isinstance(self.threshold, bool) \
                or not math.isfinite(self.threshold):
            raise UserError(f"exit rule {self.kind}: the threshold must be a finite number, got {self.threshold!r}")
        if self.kind == "max-prob" and not 0.0 <= self.threshold <= 1.0:
            raise UserError(f"exit rule max-prob: p must be in [0, 1], got {self.threshold}")
        if self.kind == "margin" and self.threshold < 0:
            raise UserError(f"exit rule margin: m must be >= 0, got {self.threshold}")
        if self.kind == "stable" and (self.threshold != int(self.threshold) or self.threshold < 1):
            raise UserError(f"exit rule stable: k must be a whole number of steps >= 1, got {self.threshold}")
        if self.max_steps is not None and (isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int)
                                           or self.max_steps < 1):
            raise UserError(f"exit rule: max_steps must be a positive integer, got {self.max_steps!r}")

    @classmethod
    def parse(cls, text: str, max_steps: Optional[int] = None) -> ExitRule:
        """``"max-prob>=0.9"``, ``"margin>=0.25"``, ``"stable=3"`` or ``"full"``."""
        m = _RULE_TEXT.match(str(text))
        if not m:
            raise UserError(f"cannot read exit rule {text!r}; write max-prob>=P, margin>=M, stable=K or full")
        if m.group(3) is not None:
            return cls("stable", int(m.group(3)), max_steps)
        if m.group(1) is None:
            return cls("full", 0.0, max_steps)
        try:
            value = float(m.group(2))
        except ValueError:
            raise UserError(f"cannot read exit rule {text!r}: {m.group(2)!r} is not a number") from None
        return cls(m.group(1), value, max_steps)

    @classmethod
    def from_record(cls, record: Mapping) -> ExitRule:
        """The rule of a manifest's ``early_exit`` record (untrusted: checked here and by the manifest schema)."""
        if not isinstance(record, Mapping):
            raise UserError("the manifest's early_exit record is not an object")
        return cls(str(record.get("rule")), record.get("threshold", 0.0), record.get("max_steps"))

    @classmethod
    def of(cls, value: Any) -> ExitRule:
        """An :class:`ExitRule` from a rule, its text or its record."""
        if isinstance(value, ExitRule):
            return value
        if isinstance(value, Mapping):
            return cls.from_record(value)
        if isinstance(value, str):
            return cls.parse(value)
        raise UserError(f"early_exit must be a rule, its text (e.g. 'margin>=0.25') or its record, "
                        f"got {type(value).__name__}")

    def to_record(self) -> dict:
        return {"rule": self.kind, "threshold": self.threshold, "max_steps": self.max_steps}

    def steps_cap(self, T: int) -> int:
        return min(int(T), self.max_steps) if self.max_steps else int(T)

    def __str__(self) -> str:
        text = {"max-prob": f"max-prob>={self.threshold:g}", "margin": f"margin>={self.threshold:g}",
                "stable": f"stable={int(self.threshold)}", "full": "full"}[self.kind]
        return text + (f" (at most {self.max_steps} steps)" if self.max_steps else "")


def scores(readout: np.ndarray, prob: bool = True) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(top-1 class, max softmax probability, top-1 minus top-2) per row of ``readout [B, C]``; ties go to the
    lowest class (argmax), the same rule as the accuracy everywhere. ``prob=False``: no softmax (None)."""
    r = np.asarray(readout, dtype=np.float64).reshape(len(readout), -1)
    top1 = r.argmax(-1)
    p = None
    if prob:
        e = np.exp(r - r.max(-1, keepdims=True))
        p = e.max(-1) / e.sum(-1)
    part = np.partition(r, r.shape[1] - 2, axis=-1) if r.shape[1] > 1 else r
    margin = part[:, -1] - part[:, -2] if r.shape[1] > 1 else np.full(len(r), np.inf)
    return top1, p, margin


class ExitTracker:
    """The per-sample exit decision over the steps of one batch (the ``stable`` rule needs each sample's run)."""

    def __init__(self, rule: ExitRule, batch: int, T: int):
        self.rule, self.cap = rule, rule.steps_cap(T)
        self.prev = np.full(batch, -1, dtype=np.int64)
        self.run = np.zeros(batch, dtype=np.int64)

    def done(self, readout: np.ndarray, step: int) -> np.ndarray:
        """Which samples of ``readout [B, C]`` (after 1-based ``step``) stop now."""
        top1, prob, margin = scores(readout, prob=self.rule.kind == "max-prob")
        strict = margin > 0
        self.run = np.where(strict & (top1 == self.prev), self.run + 1, np.where(strict, 1, 0))
        self.prev = np.where(strict, top1, -1)
        if step >= self.cap:
            return np.ones(len(top1), dtype=bool)
        kind, th = self.rule.kind, self.rule.threshold
        if kind == "max-prob":
            return prob >= th
        if kind == "margin":
            return margin >= th
        if kind == "stable":
            return self.run >= int(th)
        return np.zeros(len(top1), dtype=bool)

    def keep(self, rows: np.ndarray) -> None:
        """Compact the tracker to the samples still running (``rows`` of the current batch)."""
        self.prev, self.run = self.prev[rows], self.run[rows]


def simulate(readouts: np.ndarray, rule: ExitRule) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-step readouts ``[T, B, C]`` -> (prediction [B], steps used [B], readout at exit [B, C]) under ``rule``:
    what a run that stops each sample there returns."""
    r = np.asarray(readouts)
    T, B = r.shape[0], r.shape[1]
    tracker = ExitTracker(rule, B, T)
    steps = np.zeros(B, dtype=np.int64)
    for t in range(tracker.cap):
        done = tracker.done(r[t], t + 1) & (steps == 0)
        steps[done] = t + 1
    final = r[steps - 1, np.arange(B)]
    return final.reshape(B, -1).argmax(-1).astype(np.int64), steps, final


def _np(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def run_streaming(infer: Callable[[dict], Mapping], x_seq: np.ndarray, rule: ExitRule, readout: Readout,
                  state_shapes: Sequence[Sequence[int]],
                  initial_values: Optional[Sequence[float]] = None) -> Dict[str, np.ndarray]:
    """Step ``x_seq [T, B, ...]`` through a streaming model (``infer``: feeds by name -> outputs by name) until each
    sample's rule fires (at most T steps); finished samples leave the batch, and the batch and membranes shrink
    to the samples still running."""
    T, B = int(x_seq.shape[0]), int(x_seq.shape[1])
    active = np.arange(B)
    # where each membrane starts (a hard-reset SpikingJelly layer starts at v_reset, not at zero)
    init = list(initial_values) if initial_values is not None else [0.0] * len(state_shapes)
    states = [np.full((B, *s), v, dtype=np.float32) for s, v in zip(state_shapes, init)]
    history: List[np.ndarray] = []  # the output spikes of the active samples, one [b, C] per step
    tracker = ExitTracker(rule, B, T)
    steps = np.zeros(B, dtype=np.int64)
    final: Optional[np.ndarray] = None
    for t in range(tracker.cap):
        feeds = {STREAM_INPUT: np.ascontiguousarray(x_seq[t, active])}
        feeds.update({state_input_name(i): v for i, v in enumerate(states)})
        out = infer(feeds)
        states = [_np(out[state_output_name(i)]) for i in range(len(state_shapes))]
        history.append(_np(out[STREAM_OUTPUT]).reshape(len(active), -1))
        r = readout(np.stack(history))  # the readout of steps 0..t of each active sample
        if final is None:
            final = np.zeros((B, r.shape[-1]), dtype=r.dtype)
        done = tracker.done(r, t + 1)
        steps[active[done]] = t + 1
        final[active[done]] = r[done]
        keep = np.flatnonzero(~done)
        if not len(keep):
            break
        active = active[keep]
        states = [s[keep] for s in states]
        history = [h[keep] for h in history]
        tracker.keep(keep)
    return {EXIT_PREDICTION: final.argmax(-1).astype(np.int64), EXIT_STEPS: steps, EXIT_READOUT: final}



# ---------------------------------------------------------------------------------------------------------
# Calibration: the cheapest rule within the accuracy bound.

@dataclass
class CurvePoint:
    rule: ExitRule
    accuracy: float
    mean_steps: float

    def to_dict(self) -> dict:
        return {"rule": str(self.rule), **self.rule.to_record(), "accuracy": self.accuracy,
                "mean_steps": self.mean_steps}


def _thresholds(values: np.ndarray, n: int = 96) -> List[float]:
    v = np.unique(values[np.isfinite(values)])
    if len(v) > n:
        v = np.unique(np.quantile(v, np.linspace(0.0, 1.0, n), method="nearest"))
    return [float(x) for x in v]


def candidate_rules(readouts: np.ndarray, T: int) -> List[ExitRule]:
    """Every rule the calibration weighs: thresholds at the values the per-step readouts take (quantiles when
    there are many), ``stable=k`` for k < T, and ``full``."""
    flat = np.asarray(readouts).reshape(-1, np.asarray(readouts).shape[-1])
    _, prob, margin = scores(flat)
    rules = [ExitRule("max-prob", p) for p in _thresholds(prob)]
    rules += [ExitRule("margin", m) for m in _thresholds(margin) if m > 0]
    rules += [ExitRule("stable", k) for k in range(1, T)]
    return rules + [ExitRule("full")]


def calibrate(readouts: np.ndarray, labels: np.ndarray, max_drop: float) -> Dict[str, Any]:
    """Pick the rule with the fewest mean steps whose accuracy on ``labels`` is at most ``max_drop`` percentage
    points below the full-T accuracy (ties: the more accurate). Returns the choice, the full-T and per-step
    (every sample stops at t) points, and every rule's point."""
    r = np.asarray(readouts)
    y = np.asarray(labels).reshape(-1)
    T, B = r.shape[0], r.shape[1]
    if y.shape[0] != B:
        raise UserError(f"{y.shape[0]} labels for {B} inputs")
    if not (isinstance(max_drop, (int, float)) and math.isfinite(max_drop) and max_drop >= 0):
        raise UserError(f"--max-drop must be a finite number of percentage points >= 0, got {max_drop!r}")
    fixed = [float((r[t].reshape(B, -1).argmax(-1) == y).mean()) for t in range(T)]
    full = fixed[-1]
    points = []
    for rule in candidate_rules(r, T):
        pred, steps, _ = simulate(r, rule)
        points.append(CurvePoint(rule, float((pred == y).mean()), float(steps.mean())))
    ok = [p for p in points if 100.0 * (full - p.accuracy) <= max_drop + 1e-9]
    best = min(ok, key=lambda p: (p.mean_steps, -p.accuracy))
    return {"chosen": best, "full_accuracy": full, "T": T, "samples": B, "max_drop": float(max_drop),
            "fixed_steps": [{"steps": t + 1, "accuracy": a} for t, a in enumerate(fixed)],
            "points": points, "frontier": pareto(points)}


def pareto(points: Sequence[CurvePoint]) -> List[CurvePoint]:
    """The points no other point beats on both accuracy and mean steps, cheapest first."""
    out: List[CurvePoint] = []
    for p in sorted(points, key=lambda p: (p.mean_steps, -p.accuracy)):
        if not out or p.accuracy > out[-1].accuracy:
            out.append(p)
    return out


def manifest_record(result: Mapping[str, Any], readout: Readout, source: str) -> dict:
    """The manifest's ``early_exit`` record for a calibration result (schema: :data:`dsr_deploy.manifest`)."""
    best: CurvePoint = result["chosen"]
    return {**best.rule.to_record(), "readout": readout.to_record(),
            "calibration": {"samples": int(result["samples"]), "T": int(result["T"]),
                            "max_drop": float(result["max_drop"]), "full_accuracy": float(result["full_accuracy"]),
                            "accuracy": float(best.accuracy), "mean_steps": float(best.mean_steps),
                            "data": source}}
