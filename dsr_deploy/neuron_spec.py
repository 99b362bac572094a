"""The typed neuron description: what one inference neuron layer computes, whatever framework trained it.

Every family dsr-deploy deploys is a member of :class:`NeuronSpec`: DSR-IF and DSR-LIF (Meng et al., CVPR 2022,
as SpikingJelly's ``neuron.dsr`` and the authors' code train them) and SpikingJelly's own ``IFNode``, ``LIFNode``
and ``ParametricLIFNode``. A spec says, for a membrane ``v`` and an input ``x``:

* ``charge``: ``"integrate"`` (``h = v + x``), ``"dsr-leak"`` (``h = decay*v + gain*x``, the two coefficients by
  ``lif_rule``), ``"leak-to-reset"`` (SpikingJelly's LIF: ``h = v + (x - (v - r)) ∘ k`` with ``decay_input``,
  else ``h = v - (v - r) ∘ k + x``);
* ``tau_rule`` of a leak-to-reset charge: ``"divide"`` (``∘ k`` is ``/ tau``, LIFNode) or ``"multiply"``
  (``* k`` with ``k = sigmoid(w)`` rounded once to float32, ParametricLIFNode);
* ``fire_threshold = threshold_scale * v_threshold`` (DSR's alpha; 1 for SpikingJelly): fire when ``h >=`` it;
* ``reset``: ``"soft"`` (``v = h - s*v_threshold``) or ``"hard"`` (``v = s*v_reset + (1-s)*h``);
* ``spike_value``: ``"threshold"`` (DSR-IF: the spike is v_threshold), ``"threshold/dt"`` (DSR-LIF: divided by
  delta_t), ``"one"`` (SpikingJelly: 0/1).

The reference recurrences are :mod:`dsr_deploy.functional` (``if_forward`` / ``lif_forward`` / ``sj_forward``);
the manifest records each layer's spec (``neurons[i].spec``) and ``inspect`` prints it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

__all__ = ["NeuronSpec", "FAMILIES", "CHARGES", "TAU_RULES", "RESETS", "SPIKE_VALUES", "spec_of", "describe"]

FAMILIES = ("dsr-if", "dsr-lif", "sj-if", "sj-lif", "sj-plif")
CHARGES = ("integrate", "dsr-leak", "leak-to-reset")
TAU_RULES = ("divide", "multiply")
RESETS = ("soft", "hard")
SPIKE_VALUES = ("threshold", "threshold/dt", "one")

# NeuronInfo.kind -> family (the kinds the converter and the wire format use)
KIND_FAMILY = {"if": "dsr-if", "lif": "dsr-lif", "sj_if": "sj-if", "sj_lif": "sj-lif", "sj_plif": "sj-plif"}
SJ_KINDS = ("sj_if", "sj_lif", "sj_plif")
# SpikingJelly kind -> the charge of dsr_deploy.functional.sj_forward
SJ_CHARGE = {"sj_if": "if", "sj_lif": "lif", "sj_plif": "plif"}


@dataclass(frozen=True)
class NeuronSpec:
    """One neuron layer's inference arithmetic (see the module docstring)."""

    family: str
    charge: str
    v_threshold: float
    threshold_scale: float = 1.0
    reset: str = "soft"
    v_reset: Optional[float] = None  # hard reset value (None for a soft reset)
    spike_value: str = "one"
    tau_rule: Optional[str] = None  # leak-to-reset: "divide" | "multiply"
    leak: Optional[float] = None  # leak-to-reset: tau ("divide") or sigmoid(w) ("multiply")
    decay_input: Optional[bool] = None  # leak-to-reset
    decay: Optional[float] = None  # dsr-leak coefficients
    gain: Optional[float] = None
    lif_rule: Optional[str] = None  # dsr-leak: how decay / gain were computed ("double" | "float32")
    delta_t: Optional[float] = None  # dsr-lif: the spike is v_threshold / delta_t

    def __post_init__(self):
        checks = ((self.family, FAMILIES, "family"), (self.charge, CHARGES, "charge"),
                  (self.reset, RESETS, "reset"), (self.spike_value, SPIKE_VALUES, "spike_value"))
        for value, allowed, what in checks:
            if value not in allowed:
                raise ValueError(f"neuron spec: unknown {what} {value!r}; known: {', '.join(allowed)}")
        if (self.reset == "hard") != (self.v_reset is not None):
            raise ValueError("neuron spec: a hard reset needs v_reset, a soft reset has none")
        if self.charge == "leak-to-reset" and (self.tau_rule not in TAU_RULES or self.leak is None
                                               or self.decay_input is None):
            raise ValueError("neuron spec: a leak-to-reset charge needs tau_rule, leak and decay_input")

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def spec_of(info) -> NeuronSpec:
    """The spec of a :class:`dsr_deploy.convert.NeuronInfo` (any family)."""
    family = KIND_FAMILY[info.kind]
    if info.kind == "if":
        return NeuronSpec(family, "integrate", info.v_threshold, info.alpha, "soft", None, "threshold")
    if info.kind == "lif":
        return NeuronSpec(family, "dsr-leak", info.v_threshold, info.alpha, "soft", None, "threshold/dt",
                          decay=info.decay, gain=info.gain, lif_rule=info.lif_rule, delta_t=info.delta_t)
    reset = "soft" if info.v_reset is None else "hard"
    if info.kind == "sj_if":
        return NeuronSpec(family, "integrate", info.v_threshold, 1.0, reset, info.v_reset, "one")
    rule = "divide" if info.kind == "sj_lif" else "multiply"
    return NeuronSpec(family, "leak-to-reset", info.v_threshold, 1.0, reset, info.v_reset, "one",
                      tau_rule=rule, leak=info.leak, decay_input=info.decay_input)


def describe(spec: NeuronSpec) -> str:
    """One line for ``inspect``: the family and its arithmetic's parameters."""
    parts = [spec.family, f"charge={spec.charge}"]
    if spec.tau_rule:
        parts.append(f"{'h=v+(x-(v-r))' if spec.decay_input else 'h=v-(v-r)'}"
                     f"{'/tau' if spec.tau_rule == 'divide' else '*k'}{'' if spec.decay_input else '+x'}")
        parts.append(("tau=" if spec.tau_rule == "divide" else "k=sigmoid(w)=") + f"{spec.leak:.9g}")
    if spec.decay is not None:
        parts.append(f"decay={spec.decay:.9g} gain={spec.gain:.9g} ({spec.lif_rule} rule)")
    thr = f"{spec.v_threshold:.9g}"
    if spec.threshold_scale != 1.0:
        thr = f"{spec.threshold_scale:.9g}*{thr}"
    parts.append(f"fire h>={thr}")
    parts.append("reset=soft" if spec.reset == "soft" else f"reset=hard to {spec.v_reset:.9g}")
    parts.append(f"spike={spec.spike_value}")
    return " ".join(parts)
