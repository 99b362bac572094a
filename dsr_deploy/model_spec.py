"""The MODEL argument: ``zoo:NAME``, ``package.module:factory`` or ``path/to/file.py:factory``, plus checkpoints.

Every failure a user can cause is a one-line :class:`~dsr_deploy.errors.UserError`: unknown or malformed spec,
a module or file that does not import, a factory that is missing or raises (its message is shown), a factory
that returns no ``nn.Module``; a checkpoint that is missing, corrupt or truncated, holds a pickled object
without ``trust_pickle``, or whose keys do not match the model (missing / unexpected keys listed).

Settings (``--set KEY=VALUE``, repeatable): keyword arguments for the factory / constructor, validated against its
signature (for ``zoo:`` also the neuron hyper-parameters its ``**kwargs`` forwards) and parsed by the type of the
parameter's default (int / float / bool / str, a tuple of ints as ``16,32``; never ``eval``). The manifest records
them (``model.settings``) and :func:`load_reference_model` builds the same model again from that record.

A checkpoint in the authors' trainer format (``{'epoch', 'state_dict', 'acc', 'best_acc', 'optimizer'}``) gives
its weights; settings it stores (``settings`` / ``snn_setting`` / ``args`` mappings, the authors' names ``Vth``,
``Vth_bound``, ``timesteps`` mapped) are applied under the user's; the neuron settings neither stores nor gives are
reported as assumed defaults (:attr:`LoadedModel.assumed`, the CLI warns). A checkpoint without neuron thresholds
(the authors' ``--train_Vth 0``) needs ``--set v_threshold=...``: the zoo's default is never assumed for it.

Checkpoints load with ``torch.load(weights_only=True)``. A state dict may sit under ``"state_dict"``,
``"model"`` or ``"model_state_dict"``; a ``"module."`` prefix (DistributedDataParallel) is stripped when every
key has it and the model's keys do not. A whole pickled ``nn.Module`` is accepted only with ``trust_pickle``
(it executes code from the file) and then replaces the factory's model.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from . import sj_factory
from .checkpoint_checks import AUTHOR_ALIASES
from .checkpoints import STATE_KEYS, apply_checkpoint, read_checkpoint, state_dict_of  # noqa: F401  (public API)
from .errors import UserError, first_line
from .guard import user_code
from .model_settings import (  # noqa: F401  (parse_set_options, checkpoint_settings: public API)
    IDENT,
    Factory,
    check_settings,
    checkpoint_settings,
    parse_set_options,
    relevant_settings,
    show,
)

_MODULE_RE = re.compile(rf"^{IDENT}(\.{IDENT})*$")


@dataclass
class LoadedModel:
    model: nn.Module
    spec: str  # normalised (absolute file path for file specs)
    default_input_shape: Optional[Tuple[int, ...]] = None
    checkpoint: Optional[str] = None
    settings: Dict[str, Any] = field(default_factory=dict)  # every setting passed to the factory
    assumed: Dict[str, Any] = field(default_factory=dict)  # neuron settings neither given nor stored (defaults)
    notes: List[str] = field(default_factory=list)  # warnings about the checkpoint versus the model chosen

    def record(self) -> Dict[str, Any]:
        """What the manifest records as ``model`` settings (see :func:`load_reference_model`)."""
        return {"settings": dict(self.settings), "assumed_defaults": dict(self.assumed)}

    def warning(self) -> Optional[str]:
        """One line naming the assumed settings, or None."""
        if not self.assumed:
            return None
        what = "zoo defaults" if self.spec.startswith("zoo:") else "factory defaults"
        return (f"the checkpoint does not store these settings and none were given; assumed {what}: "
                + ", ".join(f"{k}={show(v)}" for k, v in self.assumed.items())
                + " (pass --set KEY=VALUE with the values it was trained with)")


def _call_factory(factory, what: str, settings: Optional[Mapping[str, Any]] = None) -> nn.Module:
    kwargs = sj_factory.resolve(settings or {})
    with user_code(lambda err: f"model factory {what} raised {err}"):
        model = sj_factory.finish(factory(**kwargs), kwargs)
    if not isinstance(model, nn.Module):
        raise UserError(f"model factory {what} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _split(spec: str) -> Tuple[str, str]:
    if ":" not in spec:
        raise UserError(f"malformed MODEL {spec!r}; "
                        "expected zoo:NAME, package.module:factory or path/to/file.py:factory")
    where, _, attr = spec.rpartition(":")
    if not where or not attr:
        raise UserError(f"malformed MODEL {spec!r}; "
                        "expected zoo:NAME, package.module:factory or path/to/file.py:factory")
    if not re.fullmatch(rf"{IDENT}(\.{IDENT})*", attr):
        raise UserError(f"malformed MODEL {spec!r}: {attr!r} is not a Python name")
    return where, attr


def _signature_params(factory) -> Tuple[Dict[str, Any], bool]:
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return {}, True
    params, open_kwargs = {}, False
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            open_kwargs = True
        elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            params[p.name] = p.default
    return params, open_kwargs


def _zoo_factory(name: str, settings: Mapping[str, Any]) -> Factory:
    from dsr_deploy import models
    from dsr_deploy.models.common import NEURON_DEFAULTS, NEURON_PARAMS

    if name not in models.names():
        avail = ", ".join(models.names()) or "none registered"
        raise UserError(f"unknown zoo model {name!r}; available: {avail}")
    entry = models._entry(name)
    params, open_kwargs = _signature_params(entry.factory)
    params.update(entry.defaults)
    kind = str(settings.get("neuron", params.get("neuron", ""))).lower()
    if open_kwargs and kind in NEURON_PARAMS:  # the zoo forwards **kwargs to its neurons
        neuron_params, _ = _signature_params(_neuron_class(kind))
        for key in NEURON_PARAMS[kind]:
            params.setdefault(key, NEURON_DEFAULTS[kind].get(key, neuron_params.get(key, inspect.Parameter.empty)))
    if entry.checkpoint:
        params["pretrained"] = True
    try:
        shape = tuple(models.input_shape(name))
    except Exception:
        shape = None
    return Factory(lambda **kw: models.build(name, **kw), f"zoo:{name}", f"zoo:{name}", params, False, shape,
                    kind if kind in NEURON_PARAMS else None,
                    {"readout": "the artifact's readout is an export option: use --readout none|mean|lif-rate"})


def _neuron_class(kind: str):
    from .neuron import DSRIFNode, DSRLIFNode

    return DSRIFNode if kind == "if" else DSRLIFNode


def _resolve(obj: Any, attr: str, where: str):
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"{where} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"{where}:{attr} is not callable")
    return obj


def _file_factory(path_text: str, attr: str) -> Factory:
    from .input_files import refuse_special

    path = Path(path_text).expanduser().resolve()
    refuse_special(path, "model file")
    if not path.is_file():
        raise UserError(f"model file {path_text} not found")
    mod_name = f"_dsr_user_model_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise UserError(f"cannot import {path_text} (not a Python file?)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module  # dataclasses / pickling look modules up by name
    if str(path.parent) not in sys.path:  # the file may import its neighbours, as when run as a script
        sys.path.append(str(path.parent))
    try:
        with user_code(lambda err: f"importing {path_text} failed: {err}"):
            spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(mod_name, None)
        raise
    factory = _resolve(module, attr, path_text)
    params, open_kwargs = _signature_params(factory)
    return Factory(factory, f"{path}:{attr}", f"{path_text}:{attr}", params, open_kwargs)


def _module_factory(mod: str, attr: str) -> Factory:
    if not _MODULE_RE.match(mod):
        raise UserError(f"malformed MODEL {mod}:{attr}; expected package.module:factory or path/to/file.py:factory")
    try:
        module = importlib.import_module(mod)
    except ModuleNotFoundError as exc:
        raise UserError(f"cannot import module {mod!r}: {first_line(exc, with_type=True)}") from exc
    except (UserError, KeyboardInterrupt, GeneratorExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - SystemExit at import time too
        raise UserError(f"importing {mod} failed: {first_line(exc, with_type=True)}") from exc
    factory = _resolve(module, attr, mod)
    params, open_kwargs = _signature_params(factory)
    return Factory(factory, f"{mod}:{attr}", f"{mod}:{attr}", params, open_kwargs)


def resolve_factory(spec: str, settings: Optional[Mapping[str, Any]] = None) -> Factory:
    """The factory a MODEL spec names, not yet called (``settings`` may pick the zoo's neuron kind)."""
    spec = (spec or "").strip()
    if not spec:
        raise UserError("empty MODEL; expected zoo:NAME, package.module:factory or path/to/file.py:factory")
    if spec.startswith("zoo:"):
        name = spec[4:]
        if not name:
            raise UserError("malformed MODEL 'zoo:'; expected zoo:NAME")
        return _zoo_factory(name, settings or {})
    where, attr = _split(spec)
    if where.endswith(".py") or "/" in where or "\\" in where:
        return _file_factory(where, attr)
    return _module_factory(where, attr)


def build_model(spec: str, settings: Optional[Mapping[str, Any]] = None) -> LoadedModel:
    """Build the (untrained-weights) model a MODEL spec names, with ``settings`` (``--set``) for its factory."""
    f = resolve_factory(spec, settings)
    typed = check_settings(f, settings or {})
    return LoadedModel(_call_factory(f.call, f.what, typed), f.spec, _default_shape(f, typed), settings=typed)


def _default_shape(f: Factory, settings: Mapping[str, Any]) -> Optional[Tuple[int, ...]]:
    """The zoo's default input shape, with T from the settings."""
    shape = f.default_input_shape
    if shape is not None and isinstance(settings.get("T"), int) and not isinstance(settings.get("T"), bool):
        shape = (settings["T"],) + tuple(shape[1:])
    return shape


def load_model(spec: str, checkpoint: Optional[str | Path] = None, trust_pickle: bool = False,
               settings: Optional[Mapping[str, Any]] = None) -> LoadedModel:
    """Build the model of ``spec`` with ``settings`` (``--set``; strings are parsed) and load ``checkpoint``.

    With a checkpoint, the settings it stores are applied under ``settings``; neuron settings neither gives are
    listed in ``LoadedModel.assumed`` (the caller warns). The key mapping (authors' ``Vth``, ``module.``
    prefixes, SpikingJelly containers) is tried for every spec when the keys do not match as they are.
    """
    from .checkpoint_checks import canonical_settings, disagreeing_settings, family_warnings

    user = dict(settings or {})
    f = resolve_factory(spec, user)
    if any(k in AUTHOR_ALIASES and k not in f.params for k in user):  # the authors' names: ours from here on
        user = canonical_settings(user, f.params)
        f = resolve_factory(spec, user)
    typed = check_settings(f, user)
    assumed: Dict[str, Any] = {}
    notes: List[str] = []
    missing_thresholds = False
    if checkpoint is not None:
        obj = read_checkpoint(Path(checkpoint), trust_pickle)
        stored, has_thresholds = checkpoint_settings(obj)
        notes += disagreeing_settings(stored, typed, checkpoint)
        if not isinstance(obj, nn.Module):
            notes += family_warnings(obj, state_dict_of(obj, Path(checkpoint)), f.neuron_kind, checkpoint)
        stored = {k: v for k, v in stored.items() if k in f.params and k not in typed}
        typed = {**check_settings(f, stored, where=f"checkpoint {checkpoint} setting"), **typed}
        relevant = relevant_settings(f)
        if not isinstance(obj, nn.Module):
            missing_thresholds = ("v_threshold" in relevant and "v_threshold" not in typed and not has_thresholds
                                  and spec.strip().startswith("zoo:"))
            if "v_threshold" in relevant and has_thresholds:
                relevant = tuple(r for r in relevant if r != "v_threshold")
            assumed = {k: f.params[k] for k in relevant if k not in typed
                       and f.params[k] is not inspect.Parameter.empty}
    loaded = LoadedModel(_call_factory(f.call, f.what, typed), f.spec, _default_shape(f, typed), settings=typed,
                         assumed=assumed, notes=notes)
    if checkpoint is not None:
        loaded.model = _apply(loaded.model, checkpoint, trust_pickle, f.params)
        loaded.checkpoint = str(Path(checkpoint).expanduser().resolve())
        if missing_thresholds:  # after the architecture check, whose error says more
            raise UserError(f"checkpoint {checkpoint} stores no neuron thresholds (trained with fixed "
                            "thresholds, e.g. the authors' --train_Vth 0): give the threshold it was trained "
                            "with, --set v_threshold=VALUE (their --Vth); the zoo default is not assumed")
    loaded.model.eval()
    return loaded


def _apply(model: nn.Module, checkpoint, trust_pickle: bool, params) -> nn.Module:
    """:func:`apply_checkpoint`; a classifier of another size names the ``--set`` that fits."""
    from .checkpoint_checks import classifier_hint

    try:
        return apply_checkpoint(model, checkpoint, trust_pickle, remap=True)
    except UserError as exc:
        obj = read_checkpoint(Path(checkpoint), trust_pickle)
        hint = None if isinstance(obj, nn.Module) else classifier_hint(model, state_dict_of(obj, Path(checkpoint)),
                                                                         params)
        if hint is None:
            raise
        raise UserError(f"{first_line(exc, with_type=True)}; {hint}") from exc


def weights_digest(model: nn.Module) -> str:
    """SHA-256 over the model's state dict (names, dtypes, shapes, bytes): tells whether a MODEL spec rebuilt
    later (by verify) holds the weights that were exported, e.g. not a fresh random initialisation."""
    import hashlib


    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}:".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def check_manifest_spec(spec: str, where: str, *, trust_model_code: bool = False,
                        hint: str = "pass --model SPEC to give the model yourself, or --trust-model-code if you "
                                    "trust the folder") -> None:
    """A MODEL spec read from a file someone else wrote (an export folder's manifest) is built only when it
    names the zoo (our own code) or with ``trust_model_code``: any other spec imports and runs Python code the
    folder chose. A one-line UserError otherwise."""
    spec = (spec or "").strip()
    if spec.startswith("zoo:") or trust_model_code:
        return
    raise UserError(f"{where} names the model {spec!r}, which is code outside the zoo; building it would import "
                    f"and run that code, so it is not built from an export folder; {hint}")


def load_reference_model(manifest, *, model: Optional[str] = None, checkpoint: Optional[str] = None,
                         trust_pickle: bool = False, trust_model_code: bool = False) -> LoadedModel:
    """The model an export folder was made from, for verify. Trust comes from the caller's arguments (the
    command line), never from the manifest: ``model`` (a MODEL spec given by the user) replaces the manifest's
    spec; otherwise the manifest's spec is built only under :func:`check_manifest_spec`. ``checkpoint``
    replaces the manifest's; either is read with ``weights_only=True`` unless ``trust_pickle``."""
    spec = model or manifest.model_spec
    if not spec:
        raise UserError(f"{manifest.where} records no MODEL spec to compare against; pass --model SPEC")
    if model is None:
        check_manifest_spec(spec, manifest.where, trust_model_code=trust_model_code)
    ckpt = checkpoint if checkpoint is not None else manifest.checkpoint
    # The export's settings (--set and the checkpoint's) rebuild the same network; checked against the factory
    # like --set (the manifest module checked their form).
    settings = manifest.model_settings if spec == manifest.model_spec else None
    return load_model(spec, ckpt, trust_pickle, settings=settings or None)


def parse_shape(text: str) -> Tuple[int, ...]:
    """``"4,2,3,32,32"`` -> (4, 2, 3, 32, 32); a UserError for anything else (rank and T are checked later)."""
    parts = [p.strip() for p in str(text).replace("x", ",").split(",")]
    try:
        shape = tuple(int(p) for p in parts if p != "")
    except ValueError as exc:
        raise UserError(f"malformed --input-shape {text!r}; expected comma-separated integers T,B,C,H,W") from exc
    if not shape:
        raise UserError("empty --input-shape; expected T,B,... (for example 4,1,3,32,32)")
    return shape
