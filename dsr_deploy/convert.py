"""Find the DSR neurons of a network and build its inference copy.

One idea, over 400 lines: the convert stage of the data flow (model -> convert -> export), from a training
neuron of any family to its inference module; the neuron record (:class:`NeuronInfo`) and the inference modules
that read it change together.

A network may hold our :class:`dsr_deploy.neuron.DSRIFNode` / ``DSRLIFNode``, SpikingJelly's
(``spikingjelly.activation_based.neuron.dsr``) or the authors' (github qymeng94/DSR: ``IFNeuron`` /
``LIFNeuron``). They are recognised by structure (class name along the MRO, module path for ours and
SpikingJelly's, the attributes the parameters are read from), so no package of theirs is ever imported.

Layouts (:attr:`NeuronInfo.layout`): ours and SpikingJelly's take ``[T, B, ...]`` (``"TB"``); the authors' take and
return ``[T*B, ...]``, time-major flattened, with T in the module's ``timesteps`` (``"flat"``). Their inference
modules unflatten to ``[T, B, ...]`` around the one op and flatten back, so the network around them is unchanged.
LIF coefficient rule (:attr:`NeuronInfo.lif_rule`, see :func:`dsr_deploy.functional.lif_coefficients`): the
authors' ``tau`` is a float32 tensor, so their neurons get the ``"float32"`` rule; SpikingJelly's the
``"double"`` rule; ours the rule they were built with (``DSRLIFNode(lif_rule=...)``, default ``"double"``).

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
from .contract import DOMAIN, PLUGIN_NAMESPACE, PLUGIN_VERSION, SJ_SPIKE_OP_TYPES, SPIKE_OP_TYPES
from .convert_sj import SJSpike, SJSpikeScript, check_unsupported, read_sj_neuron, sj_kind
from .neuron_spec import spec_of
from .spike_base import SpikeBase

__all__ = [
    "NeuronInfo",
    "find_neurons",
    "neuron_kind",
    "neuron_family",
    "SUPPORTED_NEURONS",
    "NO_NEURON_HINT",
    "inference_copy",
    "inference_modules",
    "IFSpike",
    "LIFSpike",
    "IFSpikeScript",
    "LIFSpikeScript",
    "SJSpike",
    "SJSpikeScript",
    "SpikeBase",
    "ONNX_DOMAIN",
    "ONNX_OP_TYPES",
    "onnx_attributes",
]

ONNX_DOMAIN = DOMAIN  # the names the exporters import from here (one definition: dsr_deploy.contract)
ONNX_OP_TYPES = SPIKE_OP_TYPES
ALL_OP_TYPES = {**SPIKE_OP_TYPES, **SJ_SPIKE_OP_TYPES}  # NeuronInfo.kind -> the op type of its ONNX node

# Where a DSR neuron class may come from: our package and SpikingJelly (its module path is
# spikingjelly.activation_based.neuron.dsr in 2.0; older trees keep the same class names under neuron).
_NEURON_MODULE_PREFIXES = ("dsr_deploy.", "spikingjelly.")
_NEURON_CLASSES = {"DSRIFNode": "if", "DSRLIFNode": "lif"}
_REQUIRED_ATTRS = {
    "if": ("v_threshold", "alpha", "v_threshold_lower_bound"),
    "lif": ("v_threshold", "alpha", "v_threshold_lower_bound", "tau", "delta_t"),
}
# The authors' training code (github qymeng94/DSR): any module path (their files are the user's), matched on the
# class name and the attributes their forward reads. Their attribute names -> ours.
_AUTHORS_CLASSES = {"IFNeuron": "if", "LIFNeuron": "lif"}
_AUTHORS_ATTRS = {"v_threshold": "Vth", "v_threshold_lower_bound": "Vth_bound", "alpha": "alpha", "tau": "tau",
                  "delta_t": "delta_t", "timesteps": "timesteps"}
_AUTHORS_REQUIRED = {
    "if": ("timesteps", "Vth", "alpha", "Vth_bound"),
    "lif": ("timesteps", "Vth", "alpha", "Vth_bound", "tau", "delta_t"),
}
SUPPORTED_NEURONS = ("dsr_deploy's DSRIFNode / DSRLIFNode, SpikingJelly's DSRIFNode / DSRLIFNode and IFNode / "
                     "LIFNode / ParametricLIFNode (step_mode='m'), the authors' (qymeng94/DSR) IFNeuron / LIFNeuron")
NO_NEURON_HINT = "the model holds no supported neuron (supported: " + SUPPORTED_NEURONS + ")"
LAYOUTS = ("TB", "flat")


def f32(value: float) -> float:
    """``value`` rounded to float32 (returned as a Python float holding that exact value)."""
    return float(np.float32(value))


def neuron_family(module: nn.Module) -> Optional[tuple]:
    """``(kind, family)`` when ``module`` is a supported training neuron, else None. kind: ``"if"`` / ``"lif"`` (DSR),
    ``"sj_if"`` / ``"sj_lif"`` / ``"sj_plif"`` (SpikingJelly's IFNode / LIFNode / ParametricLIFNode);
    family: ``"dsr_deploy"`` / ``"spikingjelly"`` / ``"authors"``.

    Matched on the class name along the MRO (a user's subclass counts), the defining module's path (ours and
    SpikingJelly's) and the attributes the parameters are read from; no neuron package is ever imported here.
    """
    kind = sj_kind(module)
    if kind is not None:
        return kind, "spikingjelly"
    for cls in type(module).__mro__:
        kind = _NEURON_CLASSES.get(cls.__name__)
        if kind is not None and cls.__module__.startswith(_NEURON_MODULE_PREFIXES):
            if all(hasattr(module, a) for a in _REQUIRED_ATTRS[kind]):
                return kind, cls.__module__.split(".")[0]
        kind = _AUTHORS_CLASSES.get(cls.__name__)
        if kind is not None and all(hasattr(module, a) for a in _AUTHORS_REQUIRED[kind]):
            return kind, "authors"
    return None


def neuron_kind(module: nn.Module) -> Optional[str]:
    """``"if"`` / ``"lif"`` when ``module`` is a DSR training neuron (see :func:`neuron_family`), else None."""
    found = neuron_family(module)
    return found[0] if found else None


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
    decay: Optional[float] = None  # beta by lif_rule, rounded to float32
    gain: Optional[float] = None  # 1 - beta by lif_rule, rounded to float32
    T: Optional[int] = None  # the T the module was built with (informative for "TB"; the T of a "flat" layer)
    layout: str = "TB"  # "TB": input [T, B, ...]; "flat": [T*B, ...] time-major, T = timesteps (the authors')
    timesteps: Optional[int] = None  # T of a "flat" layer (None for "TB": T is the input's first dimension)
    lif_rule: Optional[str] = None  # LIF: "double" | "float32" (functional.lif_coefficients); None for IF
    # SpikingJelly's nodes (kind sj_*): hard reset value (None: soft), LIF tau / PLIF sigmoid(w), decay_input
    v_reset: Optional[float] = None
    leak: Optional[float] = None
    decay_input: Optional[bool] = None

    @property
    def op_type(self) -> str:
        return ALL_OP_TYPES[self.kind]

    @property
    def spec(self):
        """The layer's :class:`dsr_deploy.neuron_spec.NeuronSpec`."""
        return spec_of(self)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["op_type"] = self.op_type
        d["spec"] = self.spec.to_dict()
        return d


def _scalar(value, what: str, name: str) -> float:
    """A Python float from a number or a one-element tensor (a float32 tensor gives its exact value)."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"neuron {name or '<root>'}: {what} must be a scalar, has shape {list(value.shape)}")
        return float(value.detach().reshape(()).item())
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"neuron {name or '<root>'}: {what} must be a number, got {type(value).__name__}")
    return float(value)


def _read_neuron(index: int, name: str, module: nn.Module, kind: str, family: str) -> NeuronInfo:
    if kind.startswith("sj_"):
        return NeuronInfo(index=index, name=name, **read_sj_neuron(name, module, kind))
    attr = _AUTHORS_ATTRS if family == "authors" else {k: k for k in _AUTHORS_ATTRS}
    vth = getattr(module, attr["v_threshold"])
    lower = _scalar(getattr(module, attr["v_threshold_lower_bound"]), "the threshold's lower bound", name)
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
    if family == "authors":
        T = module.timesteps
        if isinstance(T, bool) or not isinstance(T, int) or T < 1:
            raise ValueError(f"neuron {name or '<root>'}: timesteps must be an int >= 1, got {T!r}")
        layout, timesteps, rule = "flat", int(T), "float32"  # their tau is a float32 tensor
    else:
        T = getattr(module, "T", None)
        T = int(T) if isinstance(T, int) and not isinstance(T, bool) else None
        layout, timesteps, rule = "TB", None, getattr(module, "lif_rule", "double")
    info = NeuronInfo(
        index=index, name=name, kind=kind, source=family, v_threshold=float(eff), v_threshold_stored=float(stored),
        v_threshold_lower_bound=lower, clamped=bool(stored < eff),
        alpha=_scalar(getattr(module, attr["alpha"]), "alpha", name), T=T, layout=layout, timesteps=timesteps,
    )
    if kind == "lif":
        tau = _scalar(getattr(module, attr["tau"]), "tau", name)
        dt = _scalar(getattr(module, attr["delta_t"]), "delta_t", name)
        if not (tau > 0 and dt > 0):
            raise ValueError(f"neuron {name or '<root>'}: tau and delta_t must be > 0, got tau={tau} delta_t={dt}")
        if rule not in F.LIF_RULES:
            raise ValueError(f"neuron {name or '<root>'}: unknown lif_rule {rule!r}; known: {', '.join(F.LIF_RULES)}")
        beta, gain = F.lif_coefficients(tau, dt, rule)
        info.tau, info.delta_t, info.decay, info.gain, info.lif_rule = tau, dt, f32(beta), f32(gain), rule
    return info


def find_neurons(model: nn.Module) -> List[NeuronInfo]:
    """Every distinct DSR neuron module of ``model`` in ``named_modules`` order, with effective parameters."""
    found: List[NeuronInfo] = []
    seen = set()
    for name, m in model.named_modules():
        fam = neuron_family(m)
        if fam is None:
            check_unsupported(name, m)  # a SpikingJelly neuron that is not supported: one line, not a silent skip
        if fam is None or id(m) in seen:
            continue
        seen.add(id(m))
        found.append(_read_neuron(len(found), name, m, *fam))
    return found


def onnx_attributes(info: NeuronInfo) -> Dict[str, object]:
    """The attributes of the ``dsr`` ONNX node for one neuron layer (the shared contract)."""
    attrs: Dict[str, object] = {"v_threshold": f32(info.v_threshold), "alpha": f32(info.alpha)}
    if info.kind == "lif":
        # decay / gain by the layer's rule, computed once here: every backend takes them as given (a file without
        # them, written before they were always set, gets the double rule from tau / delta_t).
        attrs.update(tau=f32(info.tau), delta_t=f32(info.delta_t), decay=info.decay, gain=info.gain)
    attrs.update(plugin_namespace=PLUGIN_NAMESPACE, plugin_version=PLUGIN_VERSION)
    return attrs


# ---------------------------------------------------------------------------------------------------------
# Inference modules.


class IFSpike(SpikeBase):
    """DSR-IF inference: one ``dsr::if_spike`` op (one ``dsr::DSRIFSpike`` node under ONNX export)."""

    def __init__(self, info: NeuronInfo):
        super().__init__(info)
        self.onnx_attrs = onnx_attributes(info)

    def _spikes(self, x: Tensor) -> Tensor:
        if torch.onnx.is_in_onnx_export():
            return torch.onnx.ops.symbolic(f"{ONNX_DOMAIN}::{ONNX_OP_TYPES['if']}", [x], attrs=self.onnx_attrs,
                                           dtype=x.dtype, shape=x.shape, version=1, metadata_props=self.onnx_meta)
        return torch.ops.dsr.if_spike(x, self.v_threshold, self.alpha)[0]

    def extra_repr(self) -> str:
        return f"v_threshold={self.v_threshold}, alpha={self.alpha}"


class LIFSpike(SpikeBase):
    """DSR-LIF inference: one ``dsr::lif_spike`` op (one ``dsr::DSRLIFSpike`` node under ONNX export)."""

    def __init__(self, info: NeuronInfo):
        super().__init__(info)
        self.tau = float(info.tau)
        self.delta_t = float(info.delta_t)
        self.decay = float(info.decay)
        self.gain = float(info.gain)
        self.lif_rule = info.lif_rule
        self.onnx_attrs = onnx_attributes(info)

    def _spikes(self, x: Tensor) -> Tensor:
        if torch.onnx.is_in_onnx_export():
            return torch.onnx.ops.symbolic(f"{ONNX_DOMAIN}::{ONNX_OP_TYPES['lif']}", [x], attrs=self.onnx_attrs,
                                           dtype=x.dtype, shape=x.shape, version=1, metadata_props=self.onnx_meta)
        return torch.ops.dsr.lif_spike(x, self.v_threshold, self.alpha, self.tau, self.delta_t, None, False,
                                       self.decay, self.gain)[0]

    def extra_repr(self) -> str:
        return (f"v_threshold={self.v_threshold}, alpha={self.alpha}, tau={self.tau}, delta_t={self.delta_t}, "
                f"lif_rule={self.lif_rule}")


class IFSpikeScript(nn.Module):
    """DSR-IF for TorchScript: scripts :func:`dsr_deploy.functional.if_forward` itself (a real loop).
    A flat layer (``timesteps`` > 0) unflattens its ``[T*B, ...]`` input around it."""

    __constants__ = ["v_threshold", "alpha", "timesteps"]

    def __init__(self, info: NeuronInfo):
        super().__init__()
        self.index = info.index
        self.v_threshold = float(info.v_threshold)
        self.alpha = float(info.alpha)
        self.timesteps = int(info.timesteps or 0) if info.layout == "flat" else 0

    def forward(self, x: Tensor) -> Tensor:
        if self.timesteps > 0:
            y = F.if_forward(x.unflatten(0, [self.timesteps, -1]), self.v_threshold, self.alpha, None, False)[0]
            return y.flatten(0, 1)
        return F.if_forward(x, self.v_threshold, self.alpha, None, False)[0]


class LIFSpikeScript(nn.Module):
    """DSR-LIF for TorchScript: scripts :func:`dsr_deploy.functional.lif_forward` itself (a real loop), with the
    layer's coefficients (by its rule) as constants. A flat layer unflattens its input around it."""

    __constants__ = ["v_threshold", "alpha", "tau", "delta_t", "decay", "gain", "timesteps"]

    def __init__(self, info: NeuronInfo):
        super().__init__()
        self.index = info.index
        self.v_threshold = float(info.v_threshold)
        self.alpha = float(info.alpha)
        self.tau = float(info.tau)
        self.delta_t = float(info.delta_t)
        self.decay = float(info.decay)
        self.gain = float(info.gain)
        self.timesteps = int(info.timesteps or 0) if info.layout == "flat" else 0

    def forward(self, x: Tensor) -> Tensor:
        if self.timesteps > 0:
            y = F.lif_forward(x.unflatten(0, [self.timesteps, -1]), self.v_threshold, self.alpha, self.tau,
                              self.delta_t, None, False, self.decay, self.gain)[0]
            return y.flatten(0, 1)
        return F.lif_forward(x, self.v_threshold, self.alpha, self.tau, self.delta_t, None, False, self.decay,
                             self.gain)[0]


_SJ_OP = dict.fromkeys(SJ_SPIKE_OP_TYPES, SJSpike)
_SJ_SCRIPT = dict.fromkeys(SJ_SPIKE_OP_TYPES, SJSpikeScript)
_TARGETS = {
    "op": {"if": IFSpike, "lif": LIFSpike, **_SJ_OP},
    "script": {"if": IFSpikeScript, "lif": LIFSpikeScript, **_SJ_SCRIPT},
}


def register_target(name: str, if_cls, lif_cls, sj_cls=None) -> None:
    """Add an inference target (e.g. the streaming single-step modules): classes built from a NeuronInfo; ``sj_cls``
    serves SpikingJelly's kinds (without it, a network with them is refused for this target in one line)."""
    _TARGETS[name] = {"if": if_cls, "lif": lif_cls, **(dict.fromkeys(SJ_SPIKE_OP_TYPES, sj_cls) if sj_cls else {})}


def set_child(root: nn.Module, qualified: str, new: nn.Module) -> None:
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
        raise ValueError(NO_NEURON_HINT)
    copied = copy.deepcopy(model)
    copied.eval()
    classes = _TARGETS[target]
    by_id: Dict[int, nn.Module] = {}
    missing = sorted({i.kind for i in infos} - set(classes))
    if missing:
        raise ValueError(f"the {target!r} inference target does not support neuron kind(s) {', '.join(missing)}")
    for name, m in find_neuron_modules(copied).items():
        info = infos[len(by_id)]
        assert info.name == name, (info.name, name)
        by_id[id(m)] = classes[info.kind](info).eval()
    if id(copied) in by_id:  # the network is a single neuron
        return by_id[id(copied)]
    # Every place a neuron sits (a shared one may sit in several), replaced.
    places = [(n, m) for n, m in copied.named_modules(remove_duplicate=False) if id(m) in by_id and n]
    for name, m in places:
        set_child(copied, name, by_id[id(m)])
    for p in copied.parameters():
        p.requires_grad_(False)
    return copied


def find_neuron_modules(model: nn.Module) -> Dict[str, nn.Module]:
    """The distinct DSR neuron modules of ``model`` by qualified name, in :func:`find_neurons` order."""
    out: Dict[str, nn.Module] = {}
    seen = set()
    for name, m in model.named_modules():
        if neuron_family(m) is not None and id(m) not in seen:
            seen.add(id(m))
            out[name] = m
    return out


def inference_modules(model: nn.Module) -> List[nn.Module]:
    """The inference neuron modules of an inference copy, by layer index."""
    mods = {}
    for m in model.modules():
        if isinstance(m, (SpikeBase, IFSpikeScript, LIFSpikeScript, SJSpikeScript)) and m.index not in mods:
            mods[m.index] = m
    return [mods[i] for i in sorted(mods)]
