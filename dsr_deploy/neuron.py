"""DSR-IF and DSR-LIF training modules: the seed's forward and custom backward, with the seed's defects fixed.

Differences from the seed (SpikingJelly's ``neuron/dsr.py``), each deliberate:

* T is the input's first dimension. The ``T`` argument is a check: an input whose first dimension differs raises
  ``ValueError`` at forward (the seed built a wrong-shaped gradient). ``T=None`` skips the check.
* A non-trained threshold is a registered buffer (in ``state_dict``, moved by ``.to()``). A SpikingJelly
  state dict without it still loads strictly (the constructor's value is kept).
* The threshold-gradient all-reduce runs only when ``torch.distributed`` is initialised with world size > 1
  (the seed's sum over ranks; ``v_threshold_grad_sync=False`` turns it off). No crash without a process group.
* Bad arguments raise ``ValueError`` (the seed asserted, which ``python -O`` removes).
* The effective threshold is ``max(v_threshold, v_threshold_lower_bound)``. In training mode a trained threshold
  below its bound is clamped in place, as the seed does (so the optimiser sees it and the gradient reaches the
  parameter unchanged, the seed's semantics); the seed's ``relu(v - lb) + lb`` rewrote every threshold with a
  rounding error each step, ``clamp_`` writes only those below the bound. In eval mode, under ``no_grad`` and in
  export, parameters are never written: the clamp is out of place.
* dtypes: float32 / float64 exact (the threshold is used in the input's compute dtype, see
  :mod:`dsr_deploy.functional`). Float16 / bfloat16 inputs (also under ``torch.autocast``) give an output of the
  input's dtype, computed with a float32 membrane; the backward computes in float32 and returns gradients in the
  input's and the threshold's dtypes.
"""

from __future__ import annotations

import numbers
from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

from . import functional as F
from . import ops

__all__ = ["DSRIFNode", "DSRLIFNode"]

_BACKENDS = ("auto", "native", "torch")


def _real(name: str, value, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if positive and not value > 0.0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def _reduce_threshold_grad(grad: Tensor, enabled: bool) -> Tensor:
    # The seed sums the threshold gradient over ranks before DDP averages it (net effect: sum). Only with a
    # real process group of several ranks: a host with several GPUs and no process group is not distributed.
    if enabled and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
    return grad


def _as_compute(t: Tensor) -> Tensor:
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


class _DSRIFFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, v_threshold: Tensor, alpha: float, grad_scaling: float, sync: bool, native: bool):
        y = ops.if_spike_vth(x, v_threshold.detach(), alpha, native)  # no float(): see ops.if_spike_vth
        ctx.save_for_backward(x, v_threshold)
        ctx.grad_scaling, ctx.sync = grad_scaling, sync
        return y

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        x, vth = ctx.saved_tensors
        with torch.no_grad():
            gx, gv = F.if_backward(_as_compute(x), _as_compute(grad_y), vth, ctx.grad_scaling)
            gv = _reduce_threshold_grad(gv.to(vth.dtype), ctx.sync)
        return gx.to(x.dtype), gv, None, None, None, None


class _DSRLIFFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, v_threshold: Tensor, alpha: float, tau: float, delta_t: float, lif_rule: str,
                grad_scaling: float, sync: bool, native: bool):
        decay, gain = F.lif_coefficients(tau, delta_t, lif_rule)
        y = ops.lif_spike_vth(x, v_threshold.detach(), alpha, tau, delta_t, native, decay, gain)
        ctx.save_for_backward(x, v_threshold)
        ctx.tau, ctx.delta_t, ctx.grad_scaling, ctx.sync = tau, delta_t, grad_scaling, sync
        return y

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        x, vth = ctx.saved_tensors
        with torch.no_grad():
            gx, gv = F.lif_backward(_as_compute(x), _as_compute(grad_y), vth, ctx.tau, ctx.delta_t, ctx.grad_scaling)
            gv = _reduce_threshold_grad(gv.to(vth.dtype), ctx.sync)
        return gx.to(x.dtype), gv, None, None, None, None, None, None, None


class _DSRNode(nn.Module):
    """What the two neurons share: threshold storage, validation, the step-mode and T checks."""

    def __init__(self, T, v_threshold, alpha, v_threshold_training, v_threshold_grad_scaling,
                 v_threshold_lower_bound, step_mode, backend, v_threshold_grad_sync):
        if T is not None and (isinstance(T, bool) or not isinstance(T, int) or T <= 0):
            raise ValueError(f"T must be a positive int (or None to take it from the input), got {T!r}")
        v_threshold = _real("v_threshold", v_threshold)
        alpha = _real("alpha", alpha)
        lower = _real("v_threshold_lower_bound", v_threshold_lower_bound, positive=True)
        scaling = _real("v_threshold_grad_scaling", v_threshold_grad_scaling)
        if v_threshold < lower:
            raise ValueError(f"v_threshold ({v_threshold}) must be >= v_threshold_lower_bound ({lower})")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        if step_mode != "m":
            raise ValueError(f"DSR neurons support step_mode='m' (multi-step) only, got {step_mode!r}")
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
        super().__init__()
        self.step_mode = step_mode
        self.backend = backend
        self.T = T
        self.alpha = alpha
        self.v_threshold_training = bool(v_threshold_training)
        self.v_threshold_lower_bound = lower
        self.v_threshold_grad_scaling = scaling
        self.v_threshold_grad_sync = bool(v_threshold_grad_sync)
        if self.v_threshold_training:
            self.v_threshold = nn.Parameter(torch.tensor(v_threshold))
        else:
            self.register_buffer("v_threshold", torch.tensor(v_threshold))

    @property
    def supported_backends(self):
        return _BACKENDS

    def reset(self):
        """The neurons keep no state between calls; this exists for ``functional.reset_net``."""

    def effective_threshold(self) -> Tensor:
        """``max(v_threshold, v_threshold_lower_bound)``, never written to the module."""
        return self.v_threshold.detach().clamp(min=self.v_threshold_lower_bound)

    def _threshold_for_forward(self) -> Tensor:
        vth = self.v_threshold
        if self.training and torch.is_grad_enabled() and isinstance(vth, nn.Parameter):
            with torch.no_grad():
                if torch.compiler.is_compiling():
                    # no data-dependent branch (a graph break); clamp_ leaves a value >= the bound unchanged
                    vth.clamp_(min=self.v_threshold_lower_bound)
                elif bool(vth < self.v_threshold_lower_bound):
                    vth.clamp_(min=self.v_threshold_lower_bound)
            return vth
        return vth.clamp(min=self.v_threshold_lower_bound)

    def _check_input(self, x: Tensor) -> None:
        if self.step_mode != "m":
            raise ValueError(
                f"{type(self).__name__} supports step_mode='m' only, but step_mode is {self.step_mode!r} "
                "(was it set by functional.set_step_mode?)"
            )
        if not isinstance(x, Tensor) or x.dim() < 2:
            raise ValueError(f"{type(self).__name__} expects a tensor [T, B, ...] of at least 2 dims")
        if self.T is not None and x.shape[0] != self.T:
            raise ValueError(
                f"{type(self).__name__} was built with T={self.T} but the input has {x.shape[0]} time steps "
                "(first dimension); pass T matching the input or T=None"
            )
        if not x.is_floating_point():
            raise ValueError(f"{type(self).__name__} expects a floating-point input, got {x.dtype}")

    def _use_native(self) -> bool:
        return self.backend != "torch"

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # SpikingJelly keeps a non-trained threshold as a plain attribute, so its state dicts lack the key:
        # keep the constructor's value instead of failing a strict load.
        before = len(missing_keys)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        key = prefix + "v_threshold"
        if not self.v_threshold_training and key in missing_keys[before:]:
            missing_keys.remove(key)


class DSRIFNode(_DSRNode):
    """DSR integrate-and-fire neuron (multi-step, input ``[T, B, ...]``), Meng et al., CVPR 2022."""

    def __init__(
        self,
        T: Optional[int] = 20,
        v_threshold: float = 6.0,
        alpha: float = 0.5,
        v_threshold_training: bool = True,
        v_threshold_grad_scaling: float = 1.0,
        v_threshold_lower_bound: float = 0.01,
        step_mode: str = "m",
        backend: str = "auto",
        v_threshold_grad_sync: bool = True,
        **kwargs,
    ):
        super().__init__(T, v_threshold, alpha, v_threshold_training, v_threshold_grad_scaling,
                         v_threshold_lower_bound, step_mode, backend, v_threshold_grad_sync)

    def extra_repr(self):
        with torch.no_grad():
            return (
                f", T={self.T}"
                + f", init_vth={self.v_threshold}"
                + f", alpha={self.alpha}"
                + f", vth_bound={self.v_threshold_lower_bound}"
                + f", vth_g_scale={self.v_threshold_grad_scaling}"
            )

    def forward(self, x_seq: Tensor) -> Tensor:
        self._check_input(x_seq)
        vth = self._threshold_for_forward()
        return _DSRIFFunction.apply(x_seq, vth, self.alpha, self.v_threshold_grad_scaling,
                                    self.v_threshold_grad_sync, self._use_native())

    multi_step_forward = forward


class DSRLIFNode(_DSRNode):
    """DSR leaky integrate-and-fire neuron (multi-step, input ``[T, B, ...]``), Meng et al., CVPR 2022."""

    def __init__(
        self,
        T: Optional[int] = 20,
        v_threshold: float = 1.0,
        tau: float = 2.0,
        delta_t: float = 0.05,
        alpha: float = 0.3,
        v_threshold_training: bool = True,
        v_threshold_grad_scaling: float = 1.0,
        v_threshold_lower_bound: float = 0.1,
        step_mode: str = "m",
        backend: str = "auto",
        v_threshold_grad_sync: bool = True,
        lif_rule: str = "double",
        **kwargs,
    ):
        self_tau = _real("tau", tau, positive=True)
        self_dt = _real("delta_t", delta_t, positive=True)
        if lif_rule not in F.LIF_RULES:
            raise ValueError(f"lif_rule must be one of {', '.join(F.LIF_RULES)}, got {lif_rule!r}")
        super().__init__(T, v_threshold, alpha, v_threshold_training, v_threshold_grad_scaling,
                         v_threshold_lower_bound, step_mode, backend, v_threshold_grad_sync)
        self.tau = self_tau
        self.delta_t = self_dt
        # How beta = exp(-dt/tau) and 1 - beta are computed (dsr_deploy.functional.lif_coefficients): "double"
        # (SpikingJelly, the seed) or "float32" (the authors' code, whose tau is a float32 tensor).
        self.lif_rule = lif_rule

    def extra_repr(self):
        with torch.no_grad():
            return (
                f", T={self.T}"
                + f", init_vth={self.v_threshold}"
                + f", tau={self.tau}"
                + f", dt={self.delta_t}"
                + (f", lif_rule={self.lif_rule}" if self.lif_rule != "double" else "")  # the seed's text by default
                + f", alpha={self.alpha}"
                + f", vth_bound={self.v_threshold_lower_bound}"
                + f", vth_g_scale={self.v_threshold_grad_scaling}"
            )

    @classmethod
    def weight_rate_spikes(cls, data: Tensor, tau: float, delta_t: float) -> Tensor:
        """The seed's weighted firing rate (kept for code that calls it on the class)."""
        return F.lif_weighted_rate(data, tau, delta_t)

    def forward(self, x_seq: Tensor) -> Tensor:
        self._check_input(x_seq)
        vth = self._threshold_for_forward()
        return _DSRLIFFunction.apply(x_seq, vth, self.alpha, self.tau, self.delta_t, self.lif_rule,
                                     self.v_threshold_grad_scaling, self.v_threshold_grad_sync,
                                     self._use_native())

    multi_step_forward = forward
