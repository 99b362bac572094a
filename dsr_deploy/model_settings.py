"""Model settings: ``--set KEY=VALUE`` parsed and checked against a factory's signature, the settings a checkpoint
stores (the authors' names mapped), and which neuron settings change what a trained network computes (a default
assumed for one of those is warned about)."""

from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

import torch
from torch import nn

from .checkpoints import STATE_KEYS
from .errors import UserError

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


@dataclass
class Factory:
    """A MODEL spec resolved to its factory, before it is called (so settings can be checked first)."""

    call: Any
    spec: str
    what: str
    params: Dict[str, Any]  # accepted keyword -> default (inspect.Parameter.empty: none)
    open_kwargs: bool = False  # also accepts keywords it does not name (**kwargs)
    default_input_shape: Optional[Tuple[int, ...]] = None
    neuron_kind: Optional[str] = None  # zoo: 'if' | 'lif' (after the settings)
    refused: Dict[str, str] = field(default_factory=dict)  # keyword -> why --set may not give it



# ---------------------------------------------------------------------------------------------------------
# Settings: --set KEY=VALUE, checkpoint-stored settings, the assumed-defaults warning.

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
# Neuron settings that change what a trained network computes: a checkpoint that does not store them and a user
# who does not give them means a default is assumed (warned). LIF adds tau and delta_t.
_NEURON_SETTINGS = ("T", "v_threshold", "alpha", "v_threshold_lower_bound")
_LIF_SETTINGS = ("tau", "delta_t", "lif_rule")
# Names the authors' code (and its argparse) uses for our settings.
_CHECKPOINT_NAMES = {"T": "T", "timesteps": "T", "timestep": "T", "Vth": "v_threshold", "v_threshold": "v_threshold",
                     "alpha": "alpha", "Vth_bound": "v_threshold_lower_bound",
                     "v_threshold_lower_bound": "v_threshold_lower_bound", "tau": "tau", "delta_t": "delta_t",
                     "dt": "delta_t"}
CHECKPOINT_SETTING_KEYS = ("settings", "snn_setting", "args", "hparams", "config")


def show(value: Any) -> str:
    return ",".join(map(show, value)) if isinstance(value, (tuple, list)) else str(value)


def parse_set_options(items: Optional[Iterable[str]]) -> Dict[str, str]:
    """``["T=5", "v_threshold=0.6"]`` -> ``{"T": "5", "v_threshold": "0.6"}``; one-line UserError otherwise."""
    out: Dict[str, str] = {}
    for item in items or ():
        key, sep, value = str(item).partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(IDENT, key):
            raise UserError(f"malformed --set {item!r}; expected KEY=VALUE with KEY a Python name (e.g. --set T=5)")
        if key in out:
            raise UserError(f"--set {key} given twice ({key}={out[key]} and {item})")
        out[key] = value.strip()
    return out


def _infer(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            value = conv(text)
        except ValueError:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            break
        return value
    return text


def _coerce(key: str, value: Any, default: Any, where: str) -> Any:
    """``value`` (a --set string, or a JSON / checkpoint value) as the type of ``default``."""
    def bad(expected: str):
        return UserError(f"{where} {key}={show(value)}: expected {expected}"
                         + (f" (default {show(default)})" if default is not inspect.Parameter.empty
                            and default is not None else ""))

    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise bad("a number")
        value = value.item()
    text = value.strip() if isinstance(value, str) else None
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if text is not None and text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise bad("true or false")
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if text is not None and re.fullmatch(r"[+-]?\d+", text):
            return int(text)
        raise bad("an integer")
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out = float(value)
        elif text is not None:
            try:
                out = float(text)
            except ValueError:
                raise bad("a number") from None
        else:
            raise bad("a number")
        if not math.isfinite(out):
            raise bad("a finite number")
        return out
    if isinstance(default, (tuple, list)):
        items = value if isinstance(value, (tuple, list)) else (
            [p for p in text.strip("()[]").split(",") if p.strip()] if text is not None else None)
        if items is None:
            raise bad("a comma-separated list")
        inner = default[0] if len(default) else inspect.Parameter.empty
        return tuple(_coerce(key, v, inner, where) if isinstance(v, str) or inner is not inspect.Parameter.empty
                     else v for v in items)
    if isinstance(default, str):
        if text is None:
            raise bad("a string")
        return text
    # No usable default (None, required, **kwargs): int, float, true/false, else the text.
    if text is not None:
        return _infer(text)
    if isinstance(value, (bool, int, float)) and not (isinstance(value, float) and not math.isfinite(value)):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, (bool, int, float, str)) for v in value):
        return tuple(value)
    raise bad("a number, true/false or a string")


def check_settings(factory: Factory, settings: Mapping[str, Any], where: str = "--set") -> Dict[str, Any]:
    """``settings`` checked against the factory's signature and parsed to its parameters' types."""
    out: Dict[str, Any] = {}
    for key, value in settings.items():
        if key in factory.refused:
            raise UserError(f"{where} {key}: {factory.refused[key]}")
        if key not in factory.params and not factory.open_kwargs:
            accepted = ", ".join(k for k in factory.params if k not in factory.refused) or "none"
            raise UserError(f"{where} {key}: {factory.what} has no setting {key!r}; accepted: {accepted}")
        out[key] = _coerce(key, value, factory.params.get(key, inspect.Parameter.empty), where)
    return out


def relevant_settings(factory: Factory) -> Tuple[str, ...]:
    """The neuron settings of this factory whose defaults would change what a trained network computes."""
    names = _NEURON_SETTINGS + (_LIF_SETTINGS if factory.neuron_kind in (None, "lif") else ())
    return tuple(n for n in names if n in factory.params)


def checkpoint_settings(obj: Any) -> Tuple[Dict[str, Any], bool]:
    """``(settings the checkpoint stores, with our names; whether it stores neuron thresholds)``.

    Settings come from a ``settings`` / ``snn_setting`` / ``args`` / ``hparams`` / ``config`` mapping (authors'
    names mapped: ``Vth``, ``Vth_bound``, ``timesteps``, ``dt``); only the neuron settings and T are taken, as
    plain scalars. Thresholds are stored when the state dict holds a ``Vth`` / ``v_threshold`` tensor."""
    found: Dict[str, Any] = {}
    thresholds = False
    if isinstance(obj, Mapping):
        for container in CHECKPOINT_SETTING_KEYS:
            inner = obj.get(container)
            if not isinstance(inner, Mapping):
                continue
            for k, v in inner.items():
                name = _CHECKPOINT_NAMES.get(str(k))
                if name is None or name in found:
                    continue
                if isinstance(v, torch.Tensor) and v.numel() == 1:
                    v = v.item()
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    found[name] = v
        state = None
        for key in STATE_KEYS:
            if isinstance(obj.get(key), Mapping):
                state = obj[key]
                break
        state = obj if state is None else state
        thresholds = any(isinstance(k, str) and k.rsplit(".", 1)[-1] in ("Vth", "v_threshold")
                         and isinstance(v, torch.Tensor) for k, v in state.items())
        # Trained with the authors' code (their threshold name, or their settings dict): their LIF arithmetic,
        # beta and 1 - beta in float32 (a LIF factory takes it; an IF one ignores it).
        if isinstance(obj.get("snn_setting"), Mapping) or any(
                isinstance(k, str) and k.rsplit(".", 1)[-1] == "Vth" for k in state):
            found.setdefault("lif_rule", "float32")
    elif isinstance(obj, nn.Module):
        thresholds = True  # a whole pickled model carries its own settings
    return found, thresholds


