"""The pass rule of ``dsr-deploy verify`` as one typed value (:class:`VerifyRule`) and its judgement of a run."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

from ..errors import UserError
from .report import Run

DEFAULT_MIN_TOP1 = 0.99
DEFAULT_MAX_ACCURACY_DROP = 0.5  # percentage points
HALF_NEURON_AGREEMENT = 0.999  # float16 / bfloat16 neurons: spikes equal given the same input
# int8 (quantised weights and currents; neurons and spikes exact): every quantised layer is checked on its own
# against its recorded scale (verify.layers); end to end, with labels, accuracy at most this many points below
# PyTorch's (or --max-accuracy-drop when larger). Without labels, top-1 agreement with the float32 model on
# generated inputs is reported, not judged: on such inputs it measures how close the logits are to ties (a correct
# export of a small random-weight LIF net agrees on 77 % of 64 samples), not whether the export is right.
INT8_MAX_ACCURACY_DROP = 1.0
HALF = ("float16", "bfloat16")


@dataclass(frozen=True)
class VerifyRule:
    """What a run must show to pass (docs/fidelity.md)."""

    min_top1: float = DEFAULT_MIN_TOP1
    max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP
    min_agreement: Optional[float] = None  # opt-in: every layer's end-to-end spike agreement at least this
    allow_skipped: bool = False  # an artifact no backend ran here is not a failure

    def validate(self) -> VerifyRule:
        for name, v, lo, hi in (("--min-top1", self.min_top1, 0.0, 1.0),
                                ("--max-accuracy-drop", self.max_accuracy_drop, 0.0, 100.0)):
            if not lo <= v <= hi:
                raise UserError(f"{name} must be within [{lo:g}, {hi:g}], got {v}")
        if self.min_agreement is not None and not 0.0 <= self.min_agreement <= 1.0:
            raise UserError(f"--min-agreement must be within [0, 1], got {self.min_agreement}")
        return self

    def describe(self, samples: int) -> dict:
        return {**asdict(self), "samples": samples,
                "neuron": "float32 and int8: every spike equal given the reference's input; float16/bfloat16: >= "
                          f"{HALF_NEURON_AGREEMENT:.1%}",
                "defects": "no layer whose input, given the reference's spikes upstream, is off by more than its "
                           "own arithmetic explains (float: relative 1e-4; int8: a few steps of its recorded scale)",
                "top1": f"top-1 agreement >= {self.min_top1:.0%} over {samples} samples",
                "int8": "every quantised layer within a few steps of its recorded scale given the reference's spikes; "
                        f"with labels, accuracy at most {INT8_MAX_ACCURACY_DROP:g} points below PyTorch's; top-1 "
                        f"agreement over {samples} samples reported"}

    def judge(self, run: Run, ref_correct: Optional[int]) -> None:
        """Fill ``run.failures`` and ``run.passed``."""
        _neuron_failures(run)
        run.failures += [f"defect: {d['text']}" for d in run.defects]
        min_top1, max_drop = self.min_top1, self.max_accuracy_drop
        if run.precision == "int8":
            min_top1 = 0.0
            max_drop = max(max_drop, INT8_MAX_ACCURACY_DROP)
        if run.top1_agreement is not None and run.top1_agreement < min_top1:
            run.failures.append(f"top-1 agreement {run.top1_agreement:.2%} < {min_top1:.2%} "
                                f"(over {run.top1_total} samples)")
        if ref_correct is not None and run.labelled:
            drop = 100.0 * (ref_correct - run.correct) / run.labelled
            if drop > max_drop + 1e-9:
                run.failures.append(f"accuracy {run.correct}/{run.labelled} is {drop:.2f} points below PyTorch's")
        if self.min_agreement is not None:
            low = [la for la in run.layers if la.agreement is not None and la.agreement < self.min_agreement]
            run.failures += [f"layer {la.index} ({la.name}) end-to-end spike agreement {la.agreement:.4%} < "
                             f"{self.min_agreement:.4%}" for la in low]
        run.passed = not run.failures


def _neuron_failures(run: Run) -> None:
    half = run.precision in HALF
    if not run.neuron_checked:
        run.failures.append(f"neuron check did not run: {run.neuron_note}")
    for layer in run.layers:
        if not layer.neuron_total:
            continue
        exact = layer.neuron_equal == layer.neuron_total
        if (not half and not exact) or (half and layer.neuron_agreement < HALF_NEURON_AGREEMENT):
            run.failures.append(f"layer {layer.index} ({layer.name}) neuron differs from the reference given the same "
                                f"input: {layer.neuron_total - layer.neuron_equal} of {layer.neuron_total} spikes")
