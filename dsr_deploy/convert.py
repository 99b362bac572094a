"""Find the DSR neurons of a network and build its inference copy.

A network may hold our :class:`dsr_deploy.neuron.DSRIFNode` / ``DSRLIFNode`` or SpikingJelly's
(``spikingjelly.activation_based.neuron.dsr``). SpikingJelly's are recognised by class name, module path and
attributes, so a model object that holds them is handled without this module importing spikingjelly.

Every neuron's parameters are read as the effective ones: ``threshold = max(v_threshold, lower bound)``
(SpikingJelly 2.0 clamps out of place, so a saved threshold can sit below its bound; the clamp is what the
training forward used).

:func:`inference_copy` deep-copies the network (the user's model is never mutated), puts it in eval mode and
replaces each neuron by an inference module. Two inference targets exist:

* ``"op"`` (default; ONNX, torch.export, eager): :class:`IFSpike` / :class:`LIFSpike` call the one custom op
  ``torch.ops.dsr.if_spike`` / ``lif_spike`` (a fake kernel makes it a single node for torch.export and
  dynamo). Under ``torch.onnx.export`` they emit one ``dsr::DSRIFSpike`` / ``dsr::DSRLIFSpike`` node instead,
  with the attributes of the shared contract.
* ``"script"`` (TorchScript): :class:`IFSpikeScript` / :class:`LIFSpikeScript` call the reference recurrences of
  :mod:`dsr_deploy.functional` themselves, so ``torch.jit.script`` compiles that very code into the artifact:
  a real loop, no dependency on the dsr op library when the file is loaded.

Every inference module can record its output into a ``probe`` list: the per-layer comparison of ``verify``
uses it (see :mod:`dsr_deploy.verify`).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional

import numpy as np
import torch
from torch import Tensor, nn

from . import functional as F
from . import ops  # noqa: F401  (registers torch.ops.dsr.*)

__all__ = [
    "NeuronInfo",
    "find_neurons",
    "neuron_kind",
    "inference_copy",
    "inference_modules",
    "IFSpike",
    "LIFSpike",
    "IFSpikeScript",
    "LIFSpikeScript",
    "ONNX_DOMAIN",
    "ONNX_OP_TYPES",
    "onnx_attributes",
]

ONNX_DOMAIN = "dsr"
ONNX_OP_TYPES = {"if": "DSRIFSpike", "lif": "DSRLIFSpike"}
PLUGIN_NAMESPACE = "dsr"
PLUGIN_VERSION = "1"

# Where a DSR neuron class may come from: our package and SpikingJelly (its module path is
# spikingjelly.activation_based.neuron.dsr in 2.0; older trees keep the same class names under neuron).
_NEURON_MODULE_PREFIXES = ("dsr_deploy.", "spikingjelly.")
_NEURON_CLASSES = {"DSRIFNode": "if", "DSRLIFNode": "lif"}
_REQUIRED_ATTRS = {
    "if": ("v_threshold", "alpha", "v_threshold_lower_bound"),
    "lif": ("v_threshold", "alpha", "v_threshold_lower_bound", "tau", "delta_t"),
}


def f32(value: float) -> float:
    """``value`` rounded to float32 (returned as a Python float holding that exact value)."""
    return float(np.float32(value))


def neuron_kind(module: nn.Module) -> Optional[str]:
    """``"if"`` / ``"lif"`` when ``module`` is a DSR training neuron (ours or SpikingJelly's), else None.

    Matched on the class name along the MRO (a user's subclass counts), the defining module's path and the
    attributes the parameters are read from; spikingjelly is never imported here.
    """
    for cls in type(module).__mro__:
        kind = _NEURON_CLASSES.get(cls.__name__)
        if kind is None or not cls.__module__.startswith(_NEURON_MODULE_PREFIXES):
            continue
        if all(hasattr(module, a) for a in _REQUIRED_ATTRS[kind]):
            return kind
    return None


@dataclass
class NeuronInfo:
    """One neuron layer's effective inference parameters (float32 values, as the training forward used them)."""

    index: int
    name: str  # qualified module name in the network ("" for the root)
    kind: str  # "if" | "lif"
    source: str  # "dsr_deploy" | "spikingjelly" | module path of the class
    v_threshold: float  # effective: max(stored, lower bound), in float32
    v_threshold_stored: float
    v_threshold_lower_bound: float
    clamped: bool  # the stored threshold was below its bound
    alpha: float
    tau: Optional[float] = None
    delta_t: Optional[float] = None
    decay: Optional[float] = None  # fl32(exp(-dt/tau)) from the double
    gain: Optional[float] = None  # fl32(1 - exp(-dt/tau)) from the double
    T: Optional[int] = None  # the T the module was built with (informative; inference takes T from the input)

    @property
    def op_type(self) -> str:
        return ONNX_OP_TYPES[self.kind]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["op_type"] = self.op_type
        return d


def _read_neuron(index: int, name: str, module: nn.Module, kind: str) -> NeuronInfo:
    vth = module.v_threshold
    lower = float(module.v_threshold_lower_bound)
    if isinstance(vth, Tensor):
        vth = vth.detach()
        if vth.numel() != 1:
            raise ValueError(f"neuron {name or '<root>'}: v_threshold must be a scalar, has shape {list(vth.shape)}")
        if not vth.is_floating_point():
            vth = vth.float()
        # The clamp the training forward does (out of place), in the threshold's own dtype.
        eff = vth.clamp(min=lower).float().item()
        stored = vth.float().item()
    else:
        stored = f32(float(vth))
        eff = f32(max(float(vth), lower))
    cls = type(module)
    source = "dsr_deploy" if cls.__module__.startswith("dsr_deploy.") else (
        "spikingjelly" if cls.__module__.startswith("spikingjelly.") else cls.__module__)
    for c in cls.__mro__:
        if c.__name__ in _NEURON_CLASSES and c.__module__.startswith(_NEURON_MODULE_PREFIXES):
            source = c.__module__.split(".")[0]
            break
    T = getattr(module, "T", None)
    info = NeuronInfo(
        index=index, name=name, kind=kind, source=source, v_threshold=float(eff), v_threshold_stored=float(stored),
        v_threshold_lower_bound=lower, clamped=bool(stored < eff), alpha=float(module.alpha),
        T=int(T) if isinstance(T, int) and not isinstance(T, bool) else None,
    )
    if kind == "lif":
        tau, dt = float(module.tau), float(module.delta_t)
        if not (tau > 0 and dt > 0):
            raise ValueError(f"neuron {name or '<root>'}: tau and delta_t must be > 0, got tau={tau} delta_t={dt}")
        beta, gain = F.lif_coefficients(tau, dt)
        info.tau, info.delta_t, info.decay, info.gain = tau, dt, f32(beta), f32(gain)
    return info


def find_neurons(model: nn.Module) -> List[NeuronInfo]:
    """Every distinct DSR neuron module of ``model`` in ``named_modules`` order, with effective parameters."""
    found: List[NeuronInfo] = []
    seen = set()
    for name, m in model.named_modules():
        kind = neuron_kind(m)
        if kind is None or id(m) in seen:
            continue
        seen.add(id(m))
        found.append(_read_neuron(len(found), name, m, kind))
    return found


def onnx_attributes(info: NeuronInfo) -> Dict[str, object]:
    """The attributes of the ``dsr`` ONNX node for one neuron layer (the shared contract)."""
    attrs: Dict[str, object] = {"v_threshold": f32(info.v_threshold), "alpha": f32(info.alpha)}
    if info.kind == "lif":
        attrs.update(tau=f32(info.tau), delta_t=f32(info.delta_t), decay=info.decay, gain=info.gain)
    attrs.update(plugin_namespace=PLUGIN_NAMESPACE, plugin_version=PLUGIN_VERSION)
    return attrs


# ---------------------------------------------------------------------------------------------------------
# Inference modules.


class _SpikeBase(nn.Module):
    """What the inference neurons share: the parameters as plain floats and an optional probe list."""

    def __init__(self, info: NeuronInfo):
        super().__init__()
        self.index = info.index
        self.layer_name = info.name
        self.v_threshold = float(info.v_threshold)
        self.alpha = float(info.alpha)
        # verify sets this to a list to collect each call's (layer, input, spikes) (dsr_deploy.verify); else None.
        self.probe: Optional[list] = None
        # metadata_props of the emitted ONNX node (the ONNX writer sets the layer index here).
        self.onnx_meta: Optional[Dict[str, str]] = None

    def _record(self, x: Tensor, y: Tensor) -> Tensor:
        if self.probe is not None:
            self.probe.append((self.index, x, y))
        return y


class IFSpike(_SpikeBase):
    """DSR-IF inference: one ``dsr::if_spike`` op (one ``dsr::DSRIFSpike`` node under ONNX export)."""

    def __init__(self, info: NeuronInfo):
        super().__init__(info)
        self.onnx_attrs = onnx_attributes(info)

    def forward(self, x: Tensor) -> Tensor:
        if torch.onnx.is_in_onnx_export():
            y = torch.onnx.ops.symbolic(f"{ONNX_DOMAIN}::{ONNX_OP_TYPES['if']}", [x], attrs=self.onnx_attrs,
                                        dtype=x.dtype, shape=x.shape, version=1, metadata_props=self.onnx_meta)
        else:
            y = torch.ops.dsr.if_spike(x, self.v_threshold, self.alpha)[0]
        return self._record(x, y)

    def extra_repr(self) -> str:
        return f"v_threshold={self.v_threshold}, alpha={self.alpha}"


class LIFSpike(_SpikeBase):
    """DSR-LIF inference: one ``dsr::lif_spike`` op (one ``dsr::DSRLIFSpike`` node under ONNX export)."""

    def __init__(self, info: NeuronInfo):
        super().__init__(info)
        self.tau = float(info.tau)
        self.delta_t = float(info.delta_t)
        self.onnx_attrs = onnx_attributes(info)

    def forward(self, x: Tensor) -> Tensor:
        if torch.onnx.is_in_onnx_export():
            y = torch.onnx.ops.symbolic(f"{ONNX_DOMAIN}::{ONNX_OP_TYPES['lif']}", [x], attrs=self.onnx_attrs,
                                        dtype=x.dtype, shape=x.shape, version=1, metadata_props=self.onnx_meta)
        else:
            y = torch.ops.dsr.lif_spike(x, self.v_threshold, self.alpha, self.tau, self.delta_t)[0]
        return self._record(x, y)

    def extra_repr(self) -> str:
        return f"v_threshold={self.v_threshold}, alpha={self.alpha}, tau={self.tau}, delta_t={self.delta_t}"


class IFSpikeScript(nn.Module):
    """DSR-IF for TorchScript: scripts :func:`dsr_deploy.functional.if_forward` itself (a real loop)."""

    __constants__ = ["v_threshold", "alpha"]

    def __init__(self, info: NeuronInfo):
        super().__init__()
        self.index = info.index
        self.v_threshold = float(info.v_threshold)
        self.alpha = float(info.alpha)

    def forward(self, x: Tensor) -> Tensor:
        return F.if_forward(x, self.v_threshold, self.alpha, None, False)[0]


class LIFSpikeScript(nn.Module):
    """DSR-LIF for TorchScript: scripts :func:`dsr_deploy.functional.lif_forward` itself (a real loop)."""

    __constants__ = ["v_threshold", "alpha", "tau", "delta_t"]

    def __init__(self, info: NeuronInfo):
        super().__init__()
        self.index = info.index
        self.v_threshold = float(info.v_threshold)
        self.alpha = float(info.alpha)
        self.tau = float(info.tau)
        self.delta_t = float(info.delta_t)

    def forward(self, x: Tensor) -> Tensor:
        return F.lif_forward(x, self.v_threshold, self.alpha, self.tau, self.delta_t, None, False)[0]


_TARGETS = {
    "op": {"if": IFSpike, "lif": LIFSpike},
    "script": {"if": IFSpikeScript, "lif": LIFSpikeScript},
}


def register_target(name: str, if_cls, lif_cls) -> None:
    """Add an inference target (e.g. the streaming single-step modules): classes built from a NeuronInfo."""
    _TARGETS[name] = {"if": if_cls, "lif": lif_cls}


def _set_child(root: nn.Module, qualified: str, new: nn.Module) -> None:
    parent_name, _, attr = qualified.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, new)  # nn.Sequential / ModuleList / ModuleDict children are attributes too


def inference_copy(model: nn.Module, target: str = "op") -> nn.Module:
    """A deep copy of ``model`` in eval mode, every DSR neuron replaced by a ``target`` inference module.

    ``model`` itself is never modified (not even its training flag). A neuron shared by several parents is
    replaced by one shared inference module. Raises ValueError when ``model`` holds no DSR neuron.
    """
    if target not in _TARGETS:
        raise ValueError(f"unknown inference target {target!r}; known: {sorted(_TARGETS)}")
    infos = find_neurons(model)
    if not infos:
        raise ValueError("the model holds no DSR neuron (DSRIFNode / DSRLIFNode, ours or SpikingJelly's)")
    copied = copy.deepcopy(model)
    copied.eval()
    classes = _TARGETS[target]
    by_id: Dict[int, nn.Module] = {}
    for name, m in find_neuron_modules(copied).items():
        info = infos[len(by_id)]
        assert info.name == name, (info.name, name)
        by_id[id(m)] = classes[info.kind](info).eval()
    if id(copied) in by_id:  # the network is a single neuron
        return by_id[id(copied)]
    # Every place a neuron sits (a shared one may sit in several), replaced.
    places = [(n, m) for n, m in copied.named_modules(remove_duplicate=False) if id(m) in by_id and n]
    for name, m in places:
        _set_child(copied, name, by_id[id(m)])
    for p in copied.parameters():
        p.requires_grad_(False)
    return copied


def find_neuron_modules(model: nn.Module) -> Dict[str, nn.Module]:
    """The distinct DSR neuron modules of ``model`` by qualified name, in :func:`find_neurons` order."""
    out: Dict[str, nn.Module] = {}
    seen = set()
    for name, m in model.named_modules():
        if neuron_kind(m) is not None and id(m) not in seen:
            seen.add(id(m))
            out[name] = m
    return out


def inference_modules(model: nn.Module) -> List[nn.Module]:
    """The inference neuron modules of an inference copy, by layer index."""
    mods = {}
    for m in model.modules():
        if isinstance(m, (_SpikeBase, IFSpikeScript, LIFSpikeScript)) and m.index not in mods:
            mods[m.index] = m
    return [mods[i] for i in sorted(mods)]
