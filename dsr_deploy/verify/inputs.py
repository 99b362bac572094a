"""verify's inputs: generated (direct-encoded for zoo image models, else noise), ``--input`` and ``--labels``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from ..errors import UserError


def input_encoding(manifest: dict) -> str:
    """``"direct"`` when the manifest's model is a zoo network fed static images (generated inputs are then a
    static image repeated over T), else ``"noise"``."""
    spec = str((manifest.get("model") or {}).get("spec") or "")
    io = manifest.get("io") or {}
    if io.get("input_layout") == "static":
        return "static"
    if spec.startswith("zoo:"):
        try:
            from .. import models

            return "direct" if models.describe(spec[4:]).get("encoding") == "direct" else "noise"
        except Exception:  # an unknown zoo name: the model rebuild reports it
            return "noise"
    return "noise"


def load_inputs(manifest: dict, input_file: Optional[str], n_random: int = 1,
                encoding: Optional[str] = None) -> List[Tuple[str, np.ndarray]]:
    shape = tuple(manifest["input_shape"])
    io = manifest.get("io") or {}
    encoding = encoding or input_encoding(manifest)
    inputs = []
    for seed in range(n_random):
        g = np.random.default_rng(seed)
        if encoding == "direct":
            t_axis = 1 if io.get("input_layout") == "BT" else 0
            one = g.standard_normal(shape[:t_axis] + (1,) + shape[t_axis + 1:]).astype(np.float32)
            inputs.append((f"direct(seed={seed})", np.ascontiguousarray(np.repeat(one, shape[t_axis], axis=t_axis))))
        else:
            name = "static" if encoding == "static" else "random"
            inputs.append((f"{name}(seed={seed})", g.standard_normal(shape).astype(np.float32)))
    if input_file:
        inputs.append((Path(input_file).name, _read_input(input_file, shape, io)))
    return inputs


def _load_npy(option: str, path: str) -> np.ndarray:
    """A user's .npy file (never unpickled); one-line errors."""
    from ..input_files import load_npy

    return load_npy(path, option)


def _read_input(input_file: str, shape: tuple, io: dict) -> np.ndarray:
    x = _load_npy("--input", input_file)
    if not isinstance(x, np.ndarray) or not np.issubdtype(x.dtype, np.floating):
        raise UserError(f"--input {input_file} must hold a floating-point array, got {getattr(x, 'dtype', type(x))}")
    static = io.get("input_layout") == "static"
    lead = 1 if static else 2
    if x.ndim != len(shape) or tuple(x.shape[lead:]) != shape[lead:]:
        dims = "B" if static else ("B, T" if io.get("input_layout") == "BT" else "T, B")
        raise UserError(f"--input {input_file} has shape {list(x.shape)}; expected [{dims}, "
                        f"{', '.join(map(str, shape[lead:]))}] like the export's {list(shape)}")
    if any(d < 1 for d in x.shape[:lead]):
        raise UserError(f"--input {input_file} has an empty T or batch dimension: {list(x.shape)}")
    return np.ascontiguousarray(x.astype(np.float32))


def read_labels(labels_file: str, n: int) -> np.ndarray:
    y = _load_npy("--labels", labels_file)
    if not isinstance(y, np.ndarray) or y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise UserError(f"--labels {labels_file} must hold a 1-D integer array (one class per batch item)")
    if len(y) != n:
        raise UserError(f"--labels {labels_file} has {len(y)} labels; --input has {n} batch items")
    return y.astype(np.int64)


def fits(art: dict, manifest: dict, x: np.ndarray) -> Optional[str]:
    shape = manifest["input_shape"]
    io = manifest.get("io") or {}
    if io.get("input_layout") == "static":
        t_axis, b_axis = None, 0
    else:
        t_axis, b_axis = (1, 0) if io.get("input_layout") == "BT" else (0, 1)
    if t_axis is not None and x.shape[t_axis] != shape[t_axis] and not art.get("dynamic_T", False):
        return f"static T={shape[t_axis]}"
    if x.shape[b_axis] != shape[b_axis] and not art.get("dynamic_batch", manifest.get("dynamic_batch", True)):
        return f"static batch={shape[b_axis]}"
    return None


