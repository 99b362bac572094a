"""verify's inputs: generated (shaped by the artifact's recorded I/O: static images, direct-encoded images, DVS-style
event counts or noise; seeded), ``--input`` and ``--labels``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from ..errors import UserError
from ..manifest import as_manifest

ENCODINGS = ("direct", "noise", "events", "static")
EVENT_RATE = 0.3  # generated event inputs: Poisson counts with this mean per pixel and step (DVS-style, >= 0)
CHUNK = 8  # generated samples per batch fed at once (memory: every neuron call's input is recorded)


def input_encoding(manifest: dict) -> str:
    """How generated inputs look, from the artifact's recorded I/O and model: ``"static"`` for an artifact fed a
    static ``[B, ...]`` image (``--encode direct`` or the model's own repeat), ``"events"`` for event data (a zoo DVS
    network, or a time-major input with 2 polarity channels), ``"direct"`` for a zoo network fed static images (a
    static image repeated over T), else ``"noise"``."""
    manifest = as_manifest(manifest)
    spec = str(manifest.model.get("spec") or "")
    io = (manifest.io or {})
    if io.get("input_layout") == "static":
        return "static"
    if spec.startswith("zoo:"):
        try:
            from .. import models

            enc = models.describe(spec[4:]).get("encoding")
            return enc if enc in ("direct", "events") else "noise"
        except Exception:  # an unknown zoo name: the model rebuild reports it
            return "noise"
    shape = list(manifest.input_shape or [])
    return "events" if len(shape) >= 3 and shape[2] == 2 else "noise"


def default_samples(manifest: dict) -> int:
    """At least 16 generated samples; more for a small model (cheap, and top-1 agreement then means more). The size
    of one sample counts its T steps (what the reference records per sample grows with it)."""
    manifest = as_manifest(manifest)
    shape = [int(d) for d in manifest.input_shape]
    layout = (manifest.io or {}).get("input_layout")
    per_sample = int(np.prod(shape)) // max(1, shape[0 if layout in ("static", "BT") else 1])
    if layout == "static":
        per_sample *= int(((manifest.io or {})).get("T") or 1)
    return 64 if per_sample <= 4096 else 32 if per_sample <= 32768 else 16


def _sample_batch(g, shape: tuple, t_axis: Optional[int], b_axis: int, n: int, encoding: str) -> np.ndarray:
    shape = tuple(n if i == b_axis else d for i, d in enumerate(shape))
    if encoding == "events":
        return g.poisson(EVENT_RATE, shape).astype(np.float32)
    if encoding == "direct" and t_axis is not None:
        one = g.standard_normal(shape[:t_axis] + (1,) + shape[t_axis + 1:]).astype(np.float32)
        return np.ascontiguousarray(np.repeat(one, shape[t_axis], axis=t_axis))
    return g.standard_normal(shape).astype(np.float32)


def generated_inputs(manifest: dict, samples: int, seed: int, encoding: str,
                     static_batch: bool) -> List[Tuple[str, np.ndarray]]:
    """``samples`` generated samples (one seeded generator), in batches of :data:`CHUNK` (the export's batch when
    it is static)."""
    manifest = as_manifest(manifest)
    shape = tuple(manifest.input_shape)
    io = (manifest.io or {})
    layout = io.get("input_layout")
    t_axis, b_axis = (None, 0) if layout == "static" else ((1, 0) if layout == "BT" else (0, 1))
    chunk = shape[b_axis] if static_batch else CHUNK
    g = np.random.default_rng(seed)
    out = []
    for start in range(0, samples, chunk):
        n = chunk if static_batch else min(chunk, samples - start)
        out.append((f"{encoding}(seed={seed})[{start}:{start + n}]",
                    _sample_batch(g, shape, t_axis, b_axis, n, encoding)))
    return out


def load_inputs(manifest: dict, input_file: Optional[str], samples: int = 0, encoding: Optional[str] = None,
                seed: int = 0, static_batch: bool = False) -> List[Tuple[str, np.ndarray]]:
    manifest = as_manifest(manifest)
    shape = tuple(manifest.input_shape)
    io = (manifest.io or {})
    inputs = generated_inputs(manifest, samples, seed, encoding or input_encoding(manifest), static_batch) \
        if samples else []
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
    manifest = as_manifest(manifest)
    shape = list(manifest.input_shape)
    io = (manifest.io or {})
    if io.get("input_layout") == "static":
        t_axis, b_axis = None, 0
    else:
        t_axis, b_axis = (1, 0) if io.get("input_layout") == "BT" else (0, 1)
    if t_axis is not None and x.shape[t_axis] != shape[t_axis] and not art.get("dynamic_T", False):
        return f"static T={shape[t_axis]}"
    if x.shape[b_axis] != shape[b_axis] and not art.get("dynamic_batch", manifest.dynamic_batch):
        return f"static batch={shape[b_axis]}"
    return None


