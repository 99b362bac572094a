"""verify's figures per artifact x backend (:class:`Run`, :class:`LayerStat`); the pass rule is
:class:`dsr_deploy.verify.rule.VerifyRule`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional


@dataclass
class LayerStat:
    """One neuron layer of one run: the teacher-forced check and the end-to-end agreement."""

    index: int
    name: str
    op_type: str
    equal: int = 0  # end to end (probe): spikes equal to the reference's
    total: int = 0
    neuron_equal: int = 0  # teacher-forced: spikes equal given the reference's input
    neuron_total: int = 0
    input_max_abs_diff: Optional[float] = None  # end to end: the layer's input vs the reference's
    input_max_rel_diff: Optional[float] = None  # ... relative to the reference input's largest magnitude
    input_differing: int = 0

    @property
    def agreement(self) -> Optional[float]:
        return self.equal / self.total if self.total else None

    @property
    def neuron_agreement(self) -> Optional[float]:
        return self.neuron_equal / self.neuron_total if self.neuron_total else None

    def to_dict(self) -> dict:
        return {"index": self.index, "name": self.name, "op_type": self.op_type, "agreement": self.agreement,
                "spikes_equal": self.equal, "spikes_total": self.total,
                "neuron_agreement": self.neuron_agreement, "neuron_spikes_equal": self.neuron_equal,
                "neuron_spikes_total": self.neuron_total, "input_max_abs_diff": self.input_max_abs_diff,
                "input_max_rel_diff": self.input_max_rel_diff, "input_differing": self.input_differing}


@dataclass
class Run:
    artifact: str
    format: str
    backend: str
    variant: str = ""
    status: str = "ok"  # ok | skipped | error
    reason: str = ""
    precision: str = "float32"
    max_abs_diff: float = 0.0
    top1_equal: int = 0
    top1_total: int = 0
    correct: Optional[int] = None  # with labels
    labelled: Optional[int] = None
    layers: List[LayerStat] = field(default_factory=list)
    layers_note: str = ""
    neuron_note: str = ""  # why the neuron check did not run, if it did not
    neuron_checked: bool = False
    failures: List[str] = field(default_factory=list)
    passed: Optional[bool] = None
    # Layers whose input is off by more than their own arithmetic explains, given the reference's spikes upstream:
    # {"layer", "name", "text", evidence...} (verify.layers).
    defects: List[dict] = field(default_factory=list)
    layer_check: str = ""  # what the per-layer check did (or why it did not run)

    @property
    def top1_agreement(self) -> Optional[float]:
        return self.top1_equal / self.top1_total if self.top1_total else None

    @property
    def neuron_exact(self) -> Optional[bool]:
        if not self.neuron_checked:
            return None
        return all(layer.neuron_equal == layer.neuron_total for layer in self.layers if layer.neuron_total)

    def divergence(self) -> Optional[dict]:
        """The first layer (in layer order) whose end-to-end spikes differ, with its input's difference."""
        for layer in self.layers:
            if layer.total and layer.equal != layer.total:
                return {"layer": layer.index, "name": layer.name, "spikes_differing": layer.total - layer.equal,
                        "input_max_abs_diff": layer.input_max_abs_diff, "input_max_rel_diff": layer.input_max_rel_diff,
                        "input_differing": layer.input_differing,
                        "neuron_exact": (layer.neuron_equal == layer.neuron_total) if layer.neuron_total else None}
        return None

    def input_difference(self) -> Optional[dict]:
        """The first layer whose *input* differs end to end from the reference's (the backend's own arithmetic
        upstream of it), whether or not any spike flipped."""
        for layer in self.layers:
            if layer.input_differing:
                return {"layer": layer.index, "name": layer.name, "input_differing": layer.input_differing,
                        "input_max_abs_diff": layer.input_max_abs_diff, "input_max_rel_diff": layer.input_max_rel_diff}
        return None

    def verdict(self) -> str:
        """``exact`` | ``numerical divergence`` (spikes differ end to end, nothing in the artifact is wrong: each
        neuron exact and each layer within its own arithmetic given the reference's input) | ``defect``."""
        if self.defects or (self.neuron_exact is False):
            return "defect"
        return "numerical divergence" if self.divergence() is not None or self.max_abs_diff else "exact"

    def to_dict(self) -> dict:
        ok = self.status == "ok"
        return {
            "artifact": self.artifact, "format": self.format, "backend": self.backend, "variant": self.variant,
            "status": self.status, "reason": self.reason, "precision": self.precision,
            "max_abs_diff": self.max_abs_diff if ok else None,
            "top1_agreement": self.top1_agreement if ok else None,
            "accuracy": (self.correct / self.labelled) if ok and self.labelled else None,
            "neuron_exact": self.neuron_exact if ok else None,
            "neuron_agreement": _min_or_none(layer.neuron_agreement for layer in self.layers) if ok else None,
            "neuron_note": self.neuron_note,
            "layers": [layer.to_dict() for layer in self.layers],
            "min_layer_agreement": _min_or_none(layer.agreement for layer in self.layers),
            "divergence": self.divergence() if ok else None,
            "first_input_difference": self.input_difference() if ok else None,
            "layers_note": self.layers_note,
            "defects": list(self.defects),
            "layer_check": self.layer_check,
            "verdict": self.verdict() if ok else None,
            "failures": list(self.failures),
            "passed": self.passed,
        }


def _min_or_none(values) -> Optional[float]:
    return min((v for v in values if v is not None), default=None)


def unchecked_artifacts(runs: List[Run]) -> List[dict]:
    """The listed artifacts that no backend ran (every row skipped), with why: not a pass."""
    by: Dict[str, List[Run]] = {}
    for r in runs:
        by.setdefault(r.artifact, []).append(r)
    return [{"artifact": a, "format": rs[0].format, "reason": "; ".join(dict.fromkeys(r.reason for r in rs))}
            for a, rs in by.items() if all(r.status == "skipped" for r in rs)]

