"""SpikingJelly's own neurons (``IFNode``, ``LIFNode``, ``ParametricLIFNode``): recognition, parameters, inference
modules.

The contract is SpikingJelly 2.0's torch reference arithmetic (:func:`dsr_deploy.functional.sj_forward`), whatever
``backend`` a node was built with: SpikingJelly picks its CPU / CUDA / Triton kernels at run time, and docs/fidelity.md
says where those differ from the reference. Recognised by class name and module path (``spikingjelly.``), never by
importing SpikingJelly. Supported: multi-step nodes (``step_mode='m'``) without ``store_v_seq`` and without an explicit
neuron precision; the threshold, reset value and tau as plain numbers, PLIF's ``w`` as a one-element parameter
(``k = sigmoid(w)`` is computed here once, in float32, as SpikingJelly's reference does). Anything else SpikingJelly
offers as a neuron is a one-line error naming the module and what is supported.
"""

from __future__ import annotations

import math
import numbers
from typing import Dict, Optional

import torch
from torch import Tensor, nn

from . import functional as F
from . import ops  # noqa: F401  (registers torch.ops.dsr.sj_spike)
from .contract import DOMAIN, PLUGIN_NAMESPACE, PLUGIN_VERSION, SJ_SPIKE_OP_TYPES
from .neuron_spec import SJ_CHARGE
from .spike_base import SpikeBase

__all__ = ["SJ_CLASSES", "SUPPORTED_SJ", "sj_kind", "check_unsupported", "read_sj_neuron", "sj_onnx_attributes",
           "SJSpike", "SJSpikeScript"]

SJ_CLASSES = {"IFNode": "sj_if", "LIFNode": "sj_lif", "ParametricLIFNode": "sj_plif"}
SUPPORTED_SJ = "SpikingJelly's IFNode / LIFNode / ParametricLIFNode with step_mode='m'"
_SJ_NEURON_PREFIX = "spikingjelly.activation_based.neuron"


def _sj_class(cls: type) -> bool:
    return cls.__module__.startswith(_SJ_NEURON_PREFIX)


def sj_kind(module: nn.Module) -> Optional[str]:
    """``"sj_if"`` / ``"sj_lif"`` / ``"sj_plif"`` when ``module`` is exactly one of SpikingJelly's supported nodes."""
    cls = type(module)
    kind = SJ_CLASSES.get(cls.__name__)
    return kind if kind is not None and _sj_class(cls) else None


def check_unsupported(name: str, module: nn.Module) -> None:
    """Raise a one-line ValueError when ``module`` is a SpikingJelly neuron dsr-deploy cannot deploy exactly: another
    neuron class, a subclass of a supported one (its arithmetic may differ), or a supported one in a setting whose
    inference differs (single-step, ``store_v_seq``, an explicit neuron precision)."""
    where = f"neuron {name or '<root>'} ({type(module).__module__}.{type(module).__name__})"
    kind = sj_kind(module)
    if kind is None:
        mro = type(module).__mro__
        sj = [c for c in mro if _sj_class(c)]
        if sj and type(module).__name__ not in ("DSRIFNode", "DSRLIFNode") and any(
                c.__name__ in ("BaseNode", "SimpleBaseNode") or c.__name__.endswith("Node") for c in sj):
            if not any(c.__name__ in ("DSRIFNode", "DSRLIFNode") for c in mro):
                raise ValueError(f"{where} is not supported; supported: {SUPPORTED_SJ} (and the DSR neurons)")
        return
    if getattr(module, "step_mode", None) != "m":
        raise ValueError(f"{where} has step_mode={getattr(module, 'step_mode', None)!r}; supported: {SUPPORTED_SJ} "
                         "(functional.set_step_mode(net, 'm'))")
    if getattr(module, "store_v_seq", False):
        raise ValueError(f"{where} has store_v_seq=True, which is not supported; supported: {SUPPORTED_SJ} without "
                         "store_v_seq")
    if getattr(module, "_neuron_precision", None) is not None:
        raise ValueError(f"{where} has an explicit neuron precision, which is not supported; supported: "
                         f"{SUPPORTED_SJ} in its default precision")


def _number(module: nn.Module, attr: str, name: str, allow_none: bool = False) -> Optional[float]:
    value = getattr(module, attr, None)
    if value is None and allow_none:
        return None
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.detach().reshape(()).item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"neuron {name or '<root>'}: {attr} must be a finite number, got {value!r}")
    return float(value)


def read_sj_neuron(name: str, module: nn.Module, kind: str) -> Dict[str, object]:
    """The NeuronInfo fields of a supported SpikingJelly node (checked by :func:`check_unsupported` first)."""
    check_unsupported(name, module)
    vth = _number(module, "v_threshold", name)
    fields: Dict[str, object] = dict(
        kind=kind, source="spikingjelly", v_threshold=vth, v_threshold_stored=vth, v_threshold_lower_bound=vth,
        clamped=False, alpha=1.0, v_reset=_number(module, "v_reset", name, allow_none=True))
    if kind != "sj_if":
        decay_input = getattr(module, "decay_input", None)
        if not isinstance(decay_input, bool):
            raise ValueError(f"neuron {name or '<root>'}: decay_input must be a bool, got {decay_input!r}")
        fields["decay_input"] = decay_input
    if kind == "sj_lif":
        tau = _number(module, "tau", name)
        if not tau > 0:
            raise ValueError(f"neuron {name or '<root>'}: tau must be > 0, got {tau}")
        fields["tau"] = fields["leak"] = tau
    elif kind == "sj_plif":
        w = getattr(module, "w", None)
        if not isinstance(w, Tensor) or w.numel() != 1 or not w.is_floating_point():
            raise ValueError(f"neuron {name or '<root>'}: w must be a one-element float parameter")
        # as SpikingJelly's reference: q = w.float().sigmoid(), once, in float32
        fields["leak"] = float(w.detach().reshape(()).float().sigmoid())
        fields["tau"] = 1.0 / fields["leak"] if fields["leak"] > 0 else None  # informative only; leak is used
    return fields


def sj_onnx_attributes(info) -> Dict[str, object]:
    """The attributes of the ``dsr`` ONNX node of one SpikingJelly layer (the wire format of docs/onnx-ops.md)."""
    f32 = lambda v: float(torch.tensor(v, dtype=torch.float32))  # noqa: E731
    attrs: Dict[str, object] = {
        "v_threshold": f32(info.v_threshold),
        "v_reset": f32(0.0 if info.v_reset is None else info.v_reset),
        "hard_reset": int(info.v_reset is not None),
    }
    if info.kind != "sj_if":
        attrs.update(leak=f32(info.leak), decay_input=int(bool(info.decay_input)))
    attrs.update(plugin_namespace=PLUGIN_NAMESPACE, plugin_version=PLUGIN_VERSION)
    return attrs


class SJSpike(SpikeBase):
    """A SpikingJelly layer's inference: one ``dsr::sj_spike`` op (one ``dsr::SJ*Spike`` node under ONNX export)."""

    def __init__(self, info):
        super().__init__(info)
        self.kind = info.kind
        self.charge = SJ_CHARGE[info.kind]
        self.v_reset: Optional[float] = info.v_reset
        self.leak = float(info.leak or 0.0)
        self.decay_input = bool(info.decay_input) if info.decay_input is not None else True
        self.onnx_attrs = sj_onnx_attributes(info)

    def _spikes(self, x: Tensor) -> Tensor:
        if torch.onnx.is_in_onnx_export():
            return torch.onnx.ops.symbolic(f"{DOMAIN}::{SJ_SPIKE_OP_TYPES[self.kind]}", [x], attrs=self.onnx_attrs,
                                           dtype=x.dtype, shape=x.shape, version=1, metadata_props=self.onnx_meta)
        return torch.ops.dsr.sj_spike(x, self.charge, self.v_threshold, self.v_reset, self.leak,
                                      self.decay_input)[0]

    def extra_repr(self) -> str:
        return (f"{self.charge}, v_threshold={self.v_threshold}, v_reset={self.v_reset}, leak={self.leak}, "
                f"decay_input={self.decay_input}")


class SJSpikeScript(nn.Module):
    """A SpikingJelly layer for TorchScript: scripts :func:`dsr_deploy.functional.sj_forward` itself (a real loop)."""

    __constants__ = ["charge", "v_threshold", "v_reset", "leak", "decay_input"]

    def __init__(self, info):
        super().__init__()
        self.index = info.index
        self.charge = SJ_CHARGE[info.kind]
        self.v_threshold = float(info.v_threshold)
        self.v_reset: Optional[float] = info.v_reset
        self.leak = float(info.leak or 0.0)
        self.decay_input = bool(info.decay_input) if info.decay_input is not None else True

    def forward(self, x: Tensor) -> Tensor:
        return F.sj_forward(x, self.charge, self.v_threshold, self.v_reset, self.leak, self.decay_input, None,
                            False)[0]
