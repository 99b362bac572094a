"""What a checkpoint says about the model it was trained in, checked against the model the user chose: the
authors' setting names as ``--set`` aliases, IF versus LIF, explicit settings that disagree with the stored ones,
and the ``--set`` that fits a classifier of another size.

IF and LIF networks of the zoo have identical state dicts, so the family can only be told from what a trainer
stored besides the weights: a settings dict naming the neuron (or holding LIF-only settings), or thresholds typical
of one family (the authors train IF from ``Vth`` 6 and LIF from 0.3). Where a checkpoint holds neither (fixed
thresholds, bare state dict) nothing can tell, and no warning is given (docs/models.md says so)."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

import torch
from torch import nn

from .errors import UserError

#: The authors' names (their ``snn_setting`` keys and argparse flags) for our settings; ``alpha``, ``tau`` and
#: ``delta_t`` are the same names. ``--set`` accepts them; the manifest records ours.
AUTHOR_ALIASES = {"Vth": "v_threshold", "Vth_bound": "v_threshold_lower_bound", "timesteps": "T", "dt": "delta_t"}
IF_TYPICAL_VTH = 2.0  # a stored threshold median at or above this: trained as IF (from Vth 6)
LIF_TYPICAL_VTH = 1.0  # at or below this: trained as LIF (from Vth 0.3)
_FAMILY_KEYS = ("neuron", "neuron_type", "node", "snn_type", "spiking_neuron", "mode")


def canonical_settings(settings: Mapping[str, Any], params: Mapping[str, Any]) -> Dict[str, Any]:
    """``settings`` with the authors' names replaced by ours (unless the factory itself takes that name)."""
    out: Dict[str, Any] = {}
    given: Dict[str, str] = {}
    for key, value in settings.items():
        name = key if key in params else AUTHOR_ALIASES.get(key, key)
        if name in out:
            alias = key if key != name else given[name]
            raise UserError(f"--set {alias} and --set {name} give the same setting ({alias} is the authors' name "
                            f"for {name}); give one")
        out[name], given[name] = value, key
    return out


def _containers(obj: Any) -> List[Mapping]:
    from .model_settings import CHECKPOINT_SETTING_KEYS

    return [obj[k] for k in CHECKPOINT_SETTING_KEYS if isinstance(obj, Mapping) and isinstance(obj.get(k), Mapping)]


def _stored_family(obj: Any) -> Optional[str]:
    """``"if"`` / ``"lif"`` when a stored settings dict names the neuron family."""
    for inner in _containers(obj):
        for k in _FAMILY_KEYS:
            v = str(inner.get(k, "")).lower()
            if "lif" in v:
                return "lif"
            if v.endswith("if") or v == "if":
                return "if"
    return None


def _threshold_family(state: Mapping) -> Optional[str]:
    values = [float(v.float().mean()) for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)
              and k.rsplit(".", 1)[-1] in ("Vth", "v_threshold") and v.numel() >= 1]
    if not values:
        return None
    median = sorted(values)[len(values) // 2]
    return "if" if median >= IF_TYPICAL_VTH else "lif" if median <= LIF_TYPICAL_VTH else None


def family_warnings(obj: Any, state: Mapping, kind: Optional[str], checkpoint: str) -> List[str]:
    """A warning when the checkpoint's neuron family (stored settings, else typical thresholds) is not ``kind``."""
    if kind not in ("if", "lif"):
        return []
    stored, why = _stored_family(obj), "its stored settings name"
    if stored is None:
        stored, why = _threshold_family(state), "its thresholds are typical of"
    if stored is None or stored == kind:
        return []
    return [f"checkpoint {checkpoint}: {why} {stored.upper()} neurons, but the model chosen has {kind.upper()} "
            f"neurons (their state dicts are identical, so it loads; choose the {stored.upper()} model, e.g. "
            f"zoo:...-{stored})"]


def disagreeing_settings(stored: Mapping[str, Any], given: Mapping[str, Any], checkpoint: str) -> List[str]:
    """A warning per explicit ``--set`` that differs from the value the checkpoint stores (the user's wins)."""
    out = []
    for k, v in given.items():
        if k in stored and str(stored[k]) != str(v):
            origin = " (trained with the authors' code)" if k == "lif_rule" else ""
            out.append(f"--set {k}={v} disagrees with checkpoint {checkpoint}, which stores {k}={stored[k]}{origin}; "
                       "using the --set value")
    return out


def classifier_hint(model: nn.Module, state: Mapping, params: Mapping[str, Any]) -> Optional[str]:
    """``--set num_classes=N`` when the checkpoint's last Linear layer has N outputs and the model's another."""
    if "num_classes" not in params:
        return None
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        return None
    own = model.get_submodule(names[-1]).weight.shape
    w = state.get(f"{names[-1]}.weight", state.get(f"module.{names[-1]}.weight"))
    if isinstance(w, torch.Tensor) and w.ndim == 2 and w.shape[1] == own[1] and w.shape[0] != own[0]:
        return f"the checkpoint's classifier ({names[-1]}) has {w.shape[0]} classes: --set num_classes={w.shape[0]}"
    return None
