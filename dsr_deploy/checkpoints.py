"""Checkpoints: read safely (``torch.load(weights_only=True)``; ``.safetensors`` with safetensors) and applied to a
model strictly, with the ``module.`` prefix of DistributedDataParallel stripped and, for zoo models, the
SpikingJelly / authors' key mapping tried. Torch's own advice to pass ``weights_only=False`` is never repeated: only
the user's ``--trust-pickle`` allows a pickled object, and then it replaces the factory's model."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import UserError, first_line

# Where a trainer's checkpoint keeps the state dict.
STATE_KEYS = ("state_dict", "model_state_dict", "model", "net")


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
    from .input_files import refuse_special

    path = Path(path)
    refuse_special(path, "checkpoint")
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
        raise UserError(unsafe.format(why=f"corrupt, truncated or not a PyTorch file: {type(exc).__name__}")) from exc
    # trust_pickle: the user vouched for the file.
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"checkpoint {path} could not be unpickled ({first_line(exc, with_type=True)})") from exc


def state_dict_of(obj: Any, path: Path) -> dict:
    if isinstance(obj, dict):
        for key in STATE_KEYS:
            if key in obj and isinstance(obj[key], dict):
                return obj[key]
        if all(isinstance(k, str) for k in obj) and any(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise UserError(f"checkpoint {path} holds {type(obj).__name__}, not a state dict "
                    f"(nor one under {', '.join(repr(k) for k in STATE_KEYS)})")


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
            return load_spikingjelly(model, state_dict_of(read_checkpoint(Path(checkpoint), trust_pickle),
                                                           Path(checkpoint)))
        except UserError as mapping_error:
            raise UserError(f"{exc}; nor does it map as a SpikingJelly checkpoint: {mapping_error}") from exc


def _apply_checkpoint(model: nn.Module, checkpoint: str | Path, trust_pickle: bool = False) -> nn.Module:
    path = Path(checkpoint)
    obj = read_checkpoint(path, trust_pickle)
    if isinstance(obj, nn.Module):
        return obj  # only reachable with trust_pickle
    state = state_dict_of(obj, path)
    own = set(model.state_dict())
    if state and all(k.startswith("module.") for k in state) and not any(k.startswith("module.") for k in own):
        state = {k[len("module."):]: v for k, v in state.items()}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        lines = [line.strip() for line in str(exc).splitlines() if line.strip().startswith("size mismatch")]
        detail = ("; ".join(lines[:3]) + (f" (+{len(lines) - 3} more)" if len(lines) > 3 else "")
                  if lines else first_line(exc, with_type=True))
        raise UserError(f"checkpoint {path} does not fit the model: {detail}") from exc
    problems = []
    if result.missing_keys:
        problems.append(f"missing keys: {_list(result.missing_keys)}")
    if result.unexpected_keys:
        problems.append(f"unexpected keys: {_list(result.unexpected_keys)}")
    if problems:
        raise UserError(f"checkpoint {path} does not match the model; " + "; ".join(problems))
    return model
