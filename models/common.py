"""Building blocks the zoo networks share: neuron construction, [T, B] folding, the firing-rate readout.

Layout: every network takes ``[T, B, ...]``. Stateless layers (conv, BN, linear, pooling, dropout) run on the
folded batch ``[T*B, ...]`` (the authors' code folds the same way, time-major), the DSR neurons on ``[T, B, ...]``.
Only standard ``torch.nn`` layers, reshapes of the two leading dims and shape-driven arithmetic are used, so the
exporters (TorchScript, ``torch.onnx.export(dynamo=True)``, ``torch.export``) see plain graphs once the neurons are
swapped for their inference modules.
"""

from __future__ import annotations

from typing import List

import torch
from torch import Tensor, nn

from dsr_deploy import functional as F
from dsr_deploy.neuron import DSRIFNode, DSRLIFNode

__all__ = ["NEURON_DEFAULTS", "NEURON_PARAMS", "READOUTS", "make_neuron", "make_readout", "fold", "unfold",
           "SeqToANN", "RateReadout", "firing_rate", "check_neuron_kind"]

# What a zoo network returns: "spikes" = the output layer's spike train [T, B, classes] (the multi-step layout the
# exporters, verify and the runners expect; the default), "rate" = the authors' readout, logits [B, classes] =
# the firing rate over T (for training and evaluation in PyTorch).
READOUTS = ("spikes", "rate")

# The authors' settings (platform-notes §1): IF runs use vth 6, alpha 0.5, bound 0.01; their CIFAR LIF runs use
# vth 0.3, tau 1.0, dt 0.05, alpha 0.3, bound 5e-4.
NEURON_DEFAULTS = {
    "if": {"v_threshold": 6.0, "alpha": 0.5, "v_threshold_lower_bound": 0.01},
    "lif": {"v_threshold": 0.3, "tau": 1.0, "delta_t": 0.05, "alpha": 0.3, "v_threshold_lower_bound": 5e-4,
            # beta and 1 - beta computed in double and rounded once (SpikingJelly, the seed); "float32": the
            # authors' arithmetic (dsr_deploy.functional.lif_coefficients)
            "lif_rule": "double"},
}
# Hyper-parameters a zoo factory forwards to every neuron it builds.
NEURON_PARAMS = {
    "if": ("v_threshold", "alpha", "v_threshold_lower_bound", "v_threshold_training", "v_threshold_grad_scaling",
           "backend", "v_threshold_grad_sync"),
    "lif": ("v_threshold", "tau", "delta_t", "alpha", "v_threshold_lower_bound", "v_threshold_training",
            "v_threshold_grad_scaling", "backend", "v_threshold_grad_sync", "lif_rule"),
}


def check_neuron_kind(neuron: str) -> str:
    kind = str(neuron).lower()
    if kind not in NEURON_DEFAULTS:
        raise ValueError(f"neuron must be 'if' or 'lif', got {neuron!r}")
    return kind


def neuron_settings(neuron: str, params: dict) -> dict:
    """The full neuron hyper-parameters: the kind's defaults overridden by ``params`` (unknown names rejected)."""
    kind = check_neuron_kind(neuron)
    unknown = sorted(set(params) - set(NEURON_PARAMS[kind]))
    if unknown:
        raise ValueError(f"unknown {kind.upper()} neuron parameter(s) {', '.join(unknown)}; "
                         f"accepted: {', '.join(NEURON_PARAMS[kind])}")
    return {**NEURON_DEFAULTS[kind], **params}


def make_neuron(neuron: str, T: int, params: dict) -> nn.Module:
    """One DSR neuron layer (multi-step) of kind ``neuron`` ('if' | 'lif') with ``params`` over the defaults."""
    kind = check_neuron_kind(neuron)
    settings = neuron_settings(kind, params)
    cls = DSRIFNode if kind == "if" else DSRLIFNode
    return cls(T=T, step_mode="m", **settings)


def fold(x: Tensor) -> Tensor:
    """``[T, B, ...] -> [T*B, ...]`` (time-major, a view)."""
    return x.flatten(0, 1)


def unfold(y: Tensor, T: int, B: int) -> Tensor:
    """``[T*B, ...] -> [T, B, ...]``."""
    shape: List[int] = [T, B] + list(y.shape[1:])
    return y.reshape(shape)


class SeqToANN(nn.Module):
    """Runs stateless layers on the folded batch: ``[T, B, ...] -> layers([T*B, ...]) -> [T, B, ...]``.

    One layer is held directly, several as an ``nn.Sequential``; the state-dict keys are ``module.*`` (the
    SpikingJelly interop loader drops that segment, see :mod:`dsr_deploy.models.interop`).
    """

    def __init__(self, *layers: nn.Module):
        super().__init__()
        if not layers:
            raise ValueError("SeqToANN needs at least one layer")
        self.module = layers[0] if len(layers) == 1 else nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return unfold(self.module(fold(x)), x.shape[0], x.shape[1])


def make_readout(readout: str, neuron: str, settings: dict) -> nn.Module:
    if readout not in READOUTS:
        raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
    if readout == "spikes":
        return nn.Identity()
    return RateReadout(neuron, settings.get("tau", 1.0), settings.get("delta_t", 0.05))


def firing_rate(spikes, neuron: str = "if", tau: float = 1.0, delta_t: float = 0.05) -> Tensor:
    """Logits from a spike train ``[T, B, ...]`` (a tensor or a numpy array from any runtime): the readout of
    :class:`RateReadout` in eval mode, so the logits of every artifact of an export are computed identically."""
    y = spikes if isinstance(spikes, Tensor) else torch.as_tensor(spikes)
    return RateReadout(neuron, tau, delta_t).eval()(y)


class RateReadout(nn.Module):
    """Logits = the output layer's firing rate over T, ``[T, B, C] -> [B, C]`` (the authors' readout).

    IF: the plain mean over T. LIF: the seed's weighted rate (weights ``exp(-(T*dt - i*dt)/tau)``, normalised).

    In training the IF mean is ``y.mean(0)`` (the gradient path). In eval it is computed as
    ``count(y != 0) * amplitude / T``: the spikes of one layer are all 0 or the same amplitude, so the count is an
    exact integer whatever order a backend sums in, and every artifact of an export gives bit-identical logits
    (a float sum of equal non-integer values depends on the summation order). The two agree up to rounding.
    The LIF weighted rate is a float sum in any mode: its last bits can depend on a backend's summation order.
    """

    def __init__(self, neuron: str = "if", tau: float = 1.0, delta_t: float = 0.05):
        super().__init__()
        self.kind = check_neuron_kind(neuron)
        self.tau = float(tau)
        self.delta_t = float(delta_t)

    def extra_repr(self) -> str:
        return f"neuron={self.kind}" + (f", tau={self.tau}, delta_t={self.delta_t}" if self.kind == "lif" else "")

    def forward(self, y: Tensor) -> Tensor:
        if self.kind == "lif":
            w = F.lif_rate_weights(y.shape[0], self.tau, self.delta_t, y.device).to(y.dtype)
            w = w.reshape([y.shape[0]] + [1] * (y.dim() - 1))
            return (w * y).sum(0) / w.sum()
        if self.training:
            return y.mean(0)
        count = (y != 0).to(y.dtype).sum(0)
        return count * y.max() / y.shape[0]
