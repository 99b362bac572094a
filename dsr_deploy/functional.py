"""The reference DSR recurrences and gradient formulas: the one Python source of truth for the neuron math.

Every backend (the native kernels, the ONNX function bodies, TorchScript, the TensorRT plugin) is tested
against the functions here. They are written in the TorchScript subset so the TorchScript exporter scripts
exactly this code rather than a copy of it.

Numerics (float32), as in SpikingJelly's DSR nodes (Meng et al., CVPR 2022):

* IF:  ``v = v + x[t]; s = (v >= alpha*vth) * vth; v = v - s; y[t] = s``
* LIF: ``v = beta*v + (1-beta)*x[t]; s = (v >= alpha*vth) * vth; v = v - s; y[t] = s / delta_t``.
  The coefficients ``beta`` (decay) and ``1-beta`` (gain) follow one of two rules (:data:`LIF_RULES`,
  :func:`lif_coefficients`):

  - ``"double"`` (SpikingJelly, the seed; the default): ``beta = exp(-delta_t/tau)`` computed in double
    precision and rounded to the compute dtype, ``1-beta`` rounded from the double, not ``1 - fl(beta)``;
  - ``"float32"`` (the authors' training code, github qymeng94/DSR, whose ``tau`` is a float32 tensor):
    ``beta = torch.exp(-delta_t / tau)`` and ``1 - beta`` both computed in float32 (e.g. tau 1, dt 0.05: gain
    0.04877054691314697 against the double rule's 0.04877057671546936: same beta, different spikes).

  The recurrences take the two coefficients explicitly (``decay`` / ``gain``), so every backend is handed the
  same two numbers; without them the double rule is used.
* The spike threshold ``alpha*vth`` is one multiplication in the compute dtype (alpha rounded first).
* No fused multiply-add anywhere: every product and sum is rounded on its own.
* The LIF output ``s / delta_t`` divides by ``delta_t`` held in a tensor on the input's device, not by a Python
  scalar: PyTorch CUDA eager turns a division by a Python scalar into a product with the scalar's float32
  reciprocal (``s * fl(1/dt)``, which can differ in the last bit), so the scalar spelling would make a model's
  spikes depend on the device. Every kernel, CPU and CUDA, and the ONNX body's ``Div`` divide.

Compute dtype: float64 for float64 inputs, float32 otherwise. Float16 / bfloat16 inputs are upcast exactly,
the membrane is held in float32 and the output is rounded to the input dtype (a spike's value is then vth
rounded to that dtype). The final membrane is returned in the compute dtype.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = [
    "compute_dtype",
    "if_forward",
    "lif_forward",
    "if_step",
    "lif_step",
    "SJ_CHARGES",
    "sj_forward",
    "sj_step",
    "LIF_RULES",
    "lif_coefficients",
    "lif_rate_weights",
    "lif_weighted_rate",
    "if_backward",
    "lif_backward",
]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the membrane is held in for an input of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


LIF_RULES = ("double", "float32")


def _double_coefficients(tau: float, delta_t: float) -> Tuple[float, float]:
    # TorchScript subset: lif_forward calls this when no coefficients are given.
    beta = math.exp(-delta_t / tau)
    return beta, 1.0 - beta


def lif_coefficients(tau: float, delta_t: float, rule: str = "double") -> Tuple[float, float]:
    """``(decay, gain)`` = ``(beta, 1 - beta)`` by ``rule`` (see :data:`LIF_RULES`).

    ``"double"``: in double precision exactly as the seed computes them (``math.exp``); the caller (or the op)
    rounds each once to the compute dtype. ``"float32"``: the authors' own expression evaluated on a float32 CPU
    tensor ``tau`` (``torch.exp(-delta_t / tau)``, ``1 - beta``), so both values are float32 numbers (exact in
    any compute dtype). ``tau`` should be the float32 value the authors' tensor holds.
    """
    if rule == "double":
        return _double_coefficients(tau, delta_t)
    if rule == "float32":
        tau_t = torch.tensor(tau, dtype=torch.float32)
        beta = torch.exp(-delta_t / tau_t)
        return float(beta), float(1 - beta)
    raise ValueError(f"unknown LIF coefficient rule {rule!r}; choose from {', '.join(LIF_RULES)}")


def _membrane(x: Tensor, v_init: Optional[Tensor], ct: torch.dtype) -> Tensor:
    if v_init is None:
        return torch.zeros(x.shape[1:], dtype=ct, device=x.device)
    if v_init.shape != x.shape[1:]:
        raise ValueError(
            "v_init must have the shape of one time step " + str(list(x.shape[1:])) + ", got " + str(list(v_init.shape))
        )
    return v_init.to(device=x.device, dtype=ct)


def _threshold(v_threshold: float, alpha: float, ct: torch.dtype, device: torch.device) -> Tuple[Tensor, Tensor]:
    # The threshold is a tensor op so alpha is rounded to the compute dtype before the product, as in the seed
    # where `alpha * v_threshold` multiplies a Python float with the threshold parameter.
    # torch.full, not torch.tensor: on a GPU it is a fill kernel, not a blocking host-to-device copy (the streaming
    # step calls this once per layer and time step). The value is the same: v_threshold rounded to ct.
    vth = torch.full((), v_threshold, dtype=ct, device=device)
    return vth, alpha * vth


def if_forward(
    x: Tensor,
    v_threshold: float,
    alpha: float,
    v_init: Optional[Tensor] = None,
    return_state: bool = False,
) -> Tuple[Tensor, Optional[Tensor]]:
    """DSR-IF inference over ``x`` of layout ``[T, ...]``.

    Returns ``(spikes, v_final)``; ``v_final`` is None unless ``return_state``. ``v_threshold`` is the
    effective threshold (already clamped to its lower bound).
    """
    if x.dim() < 1:
        raise ValueError("input must have a leading time dimension [T, ...]")
    ct = compute_dtype(x.dtype)
    v = _membrane(x, v_init, ct)
    vth, thr = _threshold(v_threshold, alpha, ct, x.device)
    out = torch.empty_like(x)
    for t in range(x.size(0)):
        v = v + x[t].to(ct)
        s = (v >= thr).to(ct) * vth
        v = v - s
        out[t] = s.to(x.dtype)
    if return_state:
        return out, v
    return out, None


def lif_forward(
    x: Tensor,
    v_threshold: float,
    alpha: float,
    tau: float,
    delta_t: float,
    v_init: Optional[Tensor] = None,
    return_state: bool = False,
    decay: Optional[float] = None,
    gain: Optional[float] = None,
) -> Tuple[Tensor, Optional[Tensor]]:
    """DSR-LIF inference over ``x`` of layout ``[T, ...]``; see :func:`if_forward`.

    ``decay`` / ``gain``: the coefficients from :func:`lif_coefficients` (both or neither); without them the
    double rule from ``tau`` / ``delta_t``. Each is rounded once to the compute dtype.
    """
    if x.dim() < 1:
        raise ValueError("input must have a leading time dimension [T, ...]")
    ct = compute_dtype(x.dtype)
    v = _membrane(x, v_init, ct)
    vth, thr = _threshold(v_threshold, alpha, ct, x.device)
    if decay is not None and gain is not None:
        beta, g = decay, gain
    else:
        if decay is not None or gain is not None:
            raise ValueError("decay and gain must be given together")
        beta, g = _double_coefficients(tau, delta_t)
    dt = torch.full((), delta_t, dtype=ct, device=x.device)  # a tensor divisor: true division on every device
    out = torch.empty_like(x)
    for t in range(x.size(0)):
        v = beta * v + g * x[t].to(ct)
        s = (v >= thr).to(ct) * vth
        v = v - s
        out[t] = (s / dt).to(x.dtype)
    if return_state:
        return out, v
    return out, None


def if_step(x_t: Tensor, v: Tensor, v_threshold: float, alpha: float) -> Tuple[Tensor, Tensor]:
    """One IF time step: ``x_t`` has no time dimension. Returns ``(spike, v_new)``."""
    y, v_new = if_forward(x_t.unsqueeze(0), v_threshold, alpha, v, True)
    assert v_new is not None
    return y[0], v_new


def lif_step(
    x_t: Tensor, v: Tensor, v_threshold: float, alpha: float, tau: float, delta_t: float,
    decay: Optional[float] = None, gain: Optional[float] = None,
) -> Tuple[Tensor, Tensor]:
    """One LIF time step: ``x_t`` has no time dimension. Returns ``(spike, v_new)``."""
    y, v_new = lif_forward(x_t.unsqueeze(0), v_threshold, alpha, tau, delta_t, v, True, decay, gain)
    assert v_new is not None
    return y[0], v_new


# ---------------------------------------------------------------------------------------------------------
# SpikingJelly 2.0's IFNode / LIFNode / ParametricLIFNode (multi-step inference), as its torch reference
# (spikingjelly/_ops/{if_,lif,plif}/reference.py, _ops/reset.py) computes them, operation for operation:
#
#   charge  "if":   h = v + x
#           "lif":  h = v + (x - (v - r)) / tau   (decay_input)  |  h = v - (v - r) / tau + x
#           "plif": the same with "* k" for "/ tau", k = sigmoid(w) computed once in float32 from the parameter
#   fire    s = (h >= v_threshold), 0/1 in the input dtype (SJ: heaviside(h - v_threshold); equal without FTZ)
#   reset   soft (v_reset None): v = h - s * v_threshold;  hard: v = s * v_reset + (1 - s) * h
#
# r is v_reset, or 0.0 for a soft reset; the membrane starts at r. Every scalar (threshold, reset, tau, k) is
# rounded once to the compute dtype and used as a tensor: the division by tau is a true division on every device
# (PyTorch CUDA eager turns a division by a Python scalar into a product with its reciprocal, see docs/fidelity.md).

SJ_CHARGES = ("if", "lif", "plif")


def sj_forward(
    x: Tensor,
    charge: str,
    v_threshold: float,
    v_reset: Optional[float],
    leak: float,
    decay_input: bool,
    v_init: Optional[Tensor] = None,
    return_state: bool = False,
) -> Tuple[Tensor, Optional[Tensor]]:
    """SpikingJelly IF / LIF / PLIF inference over ``x`` of layout ``[T, ...]``; returns ``(spikes, v_final)``.

    ``charge``: one of :data:`SJ_CHARGES`; ``leak``: tau ("lif", divided by) or sigmoid(w) ("plif", multiplied
    by), unused for "if"; ``v_reset`` None: soft reset. Spikes are 0/1 in the input dtype.
    """
    if x.dim() < 1:
        raise ValueError("input must have a leading time dimension [T, ...]")
    if charge != "if" and charge != "lif" and charge != "plif":
        raise ValueError("unknown SpikingJelly charge rule " + charge + "; known: if, lif, plif")
    ct = compute_dtype(x.dtype)
    hard = v_reset is not None
    r_value = 0.0
    if v_reset is not None:
        r_value = v_reset
    r = torch.full((), r_value, dtype=ct, device=x.device)
    vth = torch.full((), v_threshold, dtype=ct, device=x.device)
    k = torch.full((), leak, dtype=ct, device=x.device)
    if v_init is None:
        v = torch.full(x.shape[1:], r_value, dtype=ct, device=x.device)
    else:
        v = _membrane(x, v_init, ct)
    out = torch.empty_like(x)
    for t in range(x.size(0)):
        xt = x[t].to(ct)
        if charge == "if":
            h = v + xt
        elif charge == "lif":
            h = v + (xt - (v - r)) / k if decay_input else v - (v - r) / k + xt
        else:
            h = v + (xt - (v - r)) * k if decay_input else v - (v - r) * k + xt
        s = (h >= vth).to(ct)
        if hard:
            v = s * r + (1.0 - s) * h
        else:
            v = h - s * vth
        out[t] = s.to(x.dtype)
    if return_state:
        return out, v
    return out, None


def sj_step(x_t: Tensor, v: Tensor, charge: str, v_threshold: float, v_reset: Optional[float], leak: float,
            decay_input: bool) -> Tuple[Tensor, Tensor]:
    """One SpikingJelly time step: ``x_t`` has no time dimension. Returns ``(spike, v_new)``."""
    y, v_new = sj_forward(x_t.unsqueeze(0), charge, v_threshold, v_reset, leak, decay_input, v, True)
    assert v_new is not None
    return y[0], v_new


# ---------------------------------------------------------------------------------------------------------
# Backward: the seed's rate-based gradients (not a surrogate through time).


def lif_rate_weights(T: int, tau: float, delta_t: float, device: Optional[torch.device] = None) -> Tensor:
    """``w_i = exp(-(T*dt - i*dt)/tau)`` for i = 1..T, as float32 like the seed builds them."""
    w = [math.exp(-1.0 / tau * (delta_t * T - i * delta_t)) for i in range(1, T + 1)]
    return torch.tensor(w, device=device)


def lif_weighted_rate(data: Tensor, tau: float, delta_t: float) -> Tensor:
    """The seed's LIF weighted firing rate over the leading time dimension of ``data``."""
    w = lif_rate_weights(data.shape[0], tau, delta_t, data.device)
    # Time moved last and summed there, as the seed does, so the rounding of the sum is the seed's.
    return (w * data.movedim(0, -1)).sum(dim=-1) / w.sum()


def if_backward(
    x: Tensor, grad_y: Tensor, v_threshold: Tensor, grad_scaling: float
) -> Tuple[Tensor, Tensor]:
    """The seed's DSR-IF gradients: ``(grad_x, grad_vth)``; ``grad_vth`` is not reduced across ranks."""
    T = x.shape[0]
    rate = x.mean(0)
    g = grad_y.mean(0) * T
    gx = torch.where((rate < 0) | (rate > v_threshold), torch.zeros_like(g), g)
    grad_x = gx.unsqueeze(0).expand(x.shape) / T
    gv = torch.where(rate <= v_threshold, torch.zeros_like(g), g)
    return grad_x, gv.sum() * grad_scaling


def lif_backward(
    x: Tensor, grad_y: Tensor, v_threshold: Tensor, tau: float, delta_t: float, grad_scaling: float
) -> Tuple[Tensor, Tensor]:
    """The seed's DSR-LIF gradients: ``(grad_x, grad_vth)``; ``grad_vth`` is not reduced across ranks."""
    T = x.shape[0]
    rate = lif_weighted_rate(x, tau, delta_t)
    g = lif_weighted_rate(grad_y, tau, delta_t) * T
    bound = v_threshold / delta_t * tau
    gx = torch.where((rate > 0) & (rate < bound), g / tau, torch.zeros_like(g))
    grad_x = gx.unsqueeze(0).expand(x.shape) / T
    gv = torch.where(rate <= bound, torch.zeros_like(g), g)
    return grad_x, gv.sum() * delta_t * grad_scaling
