"""The MODEL argument: ``zoo:NAME``, ``package.module:factory`` or ``path/to/file.py:factory``, plus checkpoints.

Every failure a user can cause is a one-line :class:`~dsr_deploy.errors.UserError`: unknown or malformed spec,
a module or file that does not import, a factory that is missing or raises (its message is shown), a factory
that returns no ``nn.Module``; a checkpoint that is missing, corrupt or truncated, holds a pickled object
without ``trust_pickle``, or whose keys do not match the model (missing / unexpected keys listed).

Checkpoints load with ``torch.load(weights_only=True)``. A state dict may sit under ``"state_dict"``,
``"model"`` or ``"model_state_dict"``; a ``"module."`` prefix (DistributedDataParallel) is stripped when every
key has it and the model's keys do not. A whole pickled ``nn.Module`` is accepted only with ``trust_pickle``
(it executes code from the file) and then replaces the factory's model.
"""

from __future__ import annotations

import importlib
import importlib.util
import pickle
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Tuple

import torch
from torch import nn

from .errors import UserError
from .guard import first_line as _first_line, user_code

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_MODULE_RE = re.compile(rf"^{_IDENT}(\.{_IDENT})*$")
_STATE_KEYS = ("state_dict", "model_state_dict", "model", "net")


@dataclass
class LoadedModel:
    model: nn.Module
    spec: str  # normalised (absolute file path for file specs)
    default_input_shape: Optional[Tuple[int, ...]] = None
    checkpoint: Optional[str] = None


def _call_factory(factory, what: str) -> nn.Module:
    with user_code(lambda err: f"model factory {what} raised {err}"):
        model = factory()
    if not isinstance(model, nn.Module):
        raise UserError(f"model factory {what} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _split(spec: str) -> Tuple[str, str]:
    if ":" not in spec:
        raise UserError(f"malformed MODEL {spec!r}; expected zoo:NAME, package.module:factory or path/to/file.py:factory")
    where, _, attr = spec.rpartition(":")
    if not where or not attr:
        raise UserError(f"malformed MODEL {spec!r}; expected zoo:NAME, package.module:factory or path/to/file.py:factory")
    if not re.fullmatch(rf"{_IDENT}(\.{_IDENT})*", attr):
        raise UserError(f"malformed MODEL {spec!r}: {attr!r} is not a Python name")
    return where, attr


def _from_zoo(name: str) -> LoadedModel:
    from dsr_deploy import models

    if name not in models.names():
        avail = ", ".join(models.names()) or "none registered"
        raise UserError(f"unknown zoo model {name!r}; available: {avail}")
    model = _call_factory(lambda: models.build(name), f"zoo:{name}")
    try:
        shape = tuple(models.input_shape(name))
    except Exception:
        shape = None
    return LoadedModel(model, f"zoo:{name}", shape)


def _resolve(obj: Any, attr: str, where: str):
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"{where} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"{where}:{attr} is not callable")
    return obj


def _from_file(path_text: str, attr: str) -> LoadedModel:
    path = Path(path_text).expanduser().resolve()
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
    return LoadedModel(_call_factory(factory, f"{path_text}:{attr}"), f"{path}:{attr}")


def _from_module(mod: str, attr: str) -> LoadedModel:
    if not _MODULE_RE.match(mod):
        raise UserError(f"malformed MODEL {mod}:{attr}; expected package.module:factory or path/to/file.py:factory")
    try:
        module = importlib.import_module(mod)
    except ModuleNotFoundError as exc:
        raise UserError(f"cannot import module {mod!r}: {_first_line(exc)}") from exc
    except (UserError, KeyboardInterrupt, GeneratorExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - SystemExit at import time too
        raise UserError(f"importing {mod} failed: {_first_line(exc)}") from exc
    factory = _resolve(module, attr, mod)
    return LoadedModel(_call_factory(factory, f"{mod}:{attr}"), f"{mod}:{attr}")


def build_model(spec: str) -> LoadedModel:
    """Build the (untrained-weights) model a MODEL spec names."""
    spec = (spec or "").strip()
    if not spec:
        raise UserError("empty MODEL; expected zoo:NAME, package.module:factory or path/to/file.py:factory")
    if spec.startswith("zoo:"):
        name = spec[4:]
        if not name:
            raise UserError("malformed MODEL 'zoo:'; expected zoo:NAME")
        return _from_zoo(name)
    where, attr = _split(spec)
    if where.endswith(".py") or "/" in where or "\\" in where:
        return _from_file(where, attr)
    return _from_module(where, attr)


def _is_safetensors(path: Path) -> bool:
    """A ``.safetensors`` name, or the format's start: an 8-byte little-endian header length, then ``{``."""
    if path.suffix == ".safetensors":
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < (1 << 30)


def _read_safetensors(path: Path) -> dict:
    try:
        from safetensors.torch import load_file
    except ImportError as exc:
        raise UserError(f"checkpoint {path} is a safetensors file; install safetensors (pip install safetensors) "
                        "to read it") from exc
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # noqa: BLE001 - a damaged header fails in several ways
        raise UserError(f"checkpoint {path} is not a valid safetensors file ({type(exc).__name__})") from exc


def read_checkpoint(path: str | Path, trust_pickle: bool = False) -> Any:
    """``torch.load`` a checkpoint safely (``.safetensors`` with safetensors); a UserError for every way it can
    be unreadable. Torch's own message is never repeated: it advises ``weights_only=False``, which runs the
    file's code; the only switch for that is the user's ``--trust-pickle``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found")
    if _is_safetensors(path):
        return _read_safetensors(path)
    unsafe = (f"checkpoint {path} is not a state dict we can load safely ({{why}}); if you trust it, pass "
              "--trust-pickle")
    try:
        with warnings.catch_warnings():  # torch's remarks on a foreign file's pickle protocol are not the user's
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        # "Unsupported global": the file pickles classes (a whole model, or code); any other unpickling failure
        # (an unknown opcode, say) means the bytes are not a valid pickle at all.
        if "Unsupported global" in text or "GLOBAL " in text:
            if not trust_pickle:
                raise UserError(unsafe.format(why="it holds pickled Python objects, a whole model or code")) from exc
        elif not trust_pickle:
            raise UserError(unsafe.format(why="corrupt, or not a PyTorch file")) from exc
    except Exception as exc:  # noqa: BLE001 - garbage bytes fail anywhere in the unpickler (IndexError, ...)
        raise UserError(f"checkpoint {path} is corrupt or truncated ({type(exc).__name__})") from exc
    # trust_pickle: the user vouched for the file.
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"checkpoint {path} could not be unpickled ({_first_line(exc)})") from exc


def _state_dict_of(obj: Any, path: Path) -> dict:
    if isinstance(obj, dict):
        for key in _STATE_KEYS:
            if key in obj and isinstance(obj[key], dict):
                return obj[key]
        if all(isinstance(k, str) for k in obj) and any(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise UserError(f"checkpoint {path} holds {type(obj).__name__}, not a state dict "
                    f"(nor one under {', '.join(repr(k) for k in _STATE_KEYS)})")


def _list(keys, limit: int = 8) -> str:
    keys = list(keys)
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def apply_checkpoint(model: nn.Module, checkpoint: str | Path, trust_pickle: bool = False,
                     remap: bool = False) -> nn.Module:
    """Load ``checkpoint`` into ``model`` strictly (or return the pickled model with ``trust_pickle``).

    With ``remap`` (zoo models), a state dict whose keys do not match is mapped with the zoo's SpikingJelly /
    authors' key mapping (by name, else by layer order and shape) before giving up.
    """
    try:
        return _apply_checkpoint(model, checkpoint, trust_pickle)
    except UserError as exc:
        if not remap or "does not match the model" not in str(exc):
            raise
        from .models.interop import load_spikingjelly

        try:
            return load_spikingjelly(model, _state_dict_of(read_checkpoint(Path(checkpoint), trust_pickle),
                                                           Path(checkpoint)))
        except UserError as mapping_error:
            raise UserError(f"{exc}; nor does it map as a SpikingJelly checkpoint: {mapping_error}") from exc


def _apply_checkpoint(model: nn.Module, checkpoint: str | Path, trust_pickle: bool = False) -> nn.Module:
    path = Path(checkpoint)
    obj = read_checkpoint(path, trust_pickle)
    if isinstance(obj, nn.Module):
        return obj  # only reachable with trust_pickle
    state = _state_dict_of(obj, path)
    own = set(model.state_dict())
    if state and all(k.startswith("module.") for k in state) and not any(k.startswith("module.") for k in own):
        state = {k[len("module."):]: v for k, v in state.items()}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        lines = [l.strip() for l in str(exc).splitlines() if l.strip().startswith("size mismatch")]
        detail = "; ".join(lines[:3]) + (f" (+{len(lines) - 3} more)" if len(lines) > 3 else "") if lines else _first_line(exc)
        raise UserError(f"checkpoint {path} does not fit the model: {detail}") from exc
    problems = []
    if result.missing_keys:
        problems.append(f"missing keys: {_list(result.missing_keys)}")
    if result.unexpected_keys:
        problems.append(f"unexpected keys: {_list(result.unexpected_keys)}")
    if problems:
        raise UserError(f"checkpoint {path} does not match the model; " + "; ".join(problems))
    return model


def load_model(spec: str, checkpoint: Optional[str | Path] = None, trust_pickle: bool = False) -> LoadedModel:
    """Build the model of ``spec`` and load ``checkpoint`` into it (when given)."""
    loaded = build_model(spec)
    if checkpoint is not None:
        loaded.model = apply_checkpoint(loaded.model, checkpoint, trust_pickle, remap=spec.strip().startswith("zoo:"))
        loaded.checkpoint = str(Path(checkpoint).expanduser().resolve())
    loaded.model.eval()
    return loaded


def weights_digest(model: nn.Module) -> str:
    """SHA-256 over the model's state dict (names, dtypes, shapes, bytes): tells whether a MODEL spec rebuilt
    later (by verify) holds the weights that were exported, e.g. not a fresh random initialisation."""
    import hashlib

    import torch

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
    return load_model(spec, ckpt, trust_pickle)


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
