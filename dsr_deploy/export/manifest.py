"""``DIR/manifest.json``: what an export folder holds and how it was made (the shared contract).

Keys: ``dsr_deploy_version``, ``created``, ``mode``, ``model`` (``spec``, ``checkpoint``, ``trust_pickle``, and
for a MODEL spec ``settings`` (the factory's keyword arguments from ``--set`` and the checkpoint) and
``assumed_defaults`` (neuron settings neither gave; see :func:`dsr_deploy.model_spec.rebuild_model`)),
``input_shape``, ``T``, ``layout``, ``dtype``, ``dynamic_batch``, ``lowering``, ``neurons`` (one dict per layer:
:meth:`dsr_deploy.convert.NeuronInfo.to_dict`), ``artifacts`` (``[{format, path, ...}]``, paths relative to DIR),
``inputs`` / ``outputs`` (names); ``io`` when the artifact does not take ``[T, B, ...]`` and return the spike
train (``input_layout``, ``output``, ``T``, ``encode``, ``readout``, ``source``: :mod:`dsr_deploy.io_adapter`).
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any, Dict, List

from .. import __version__
from ..errors import UserError

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1


def build_manifest(ctx, artifacts: List[Dict[str, Any]], mode: str = "multistep",
                   inputs: List[str] = None, outputs: List[str] = None) -> Dict[str, Any]:
    from .base import INPUT_NAME, LAYOUT, OUTPUT_NAME

    io = getattr(ctx, "io", None)
    layout = {"BT": "BT...", "static": "B..."}.get((io or {}).get("input_layout"), LAYOUT)
    manifest = {
        "schema": SCHEMA_VERSION,
        "dsr_deploy_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "mode": mode,
        "model": {"spec": ctx.spec, "checkpoint": ctx.checkpoint,
                  "trust_pickle": bool(ctx.options.get("trust_pickle", False)), **(ctx.model_info or {})},
        "input_shape": list(ctx.input_shape),
        "T": ctx.T,
        "layout": layout,
        "dtype": str(ctx.dtype).replace("torch.", ""),
        "dynamic_batch": ctx.dynamic_batch,
        "lowering": ctx.options.get("lowering") or "function",
        "neurons": [n.to_dict() for n in ctx.neurons],
        "artifacts": artifacts,
        "inputs": inputs or [INPUT_NAME],
        "outputs": outputs or [OUTPUT_NAME],
    }
    if io:
        manifest["io"] = dict(io)
    return manifest


def read_manifest(folder: Path | str) -> Dict[str, Any]:
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise UserError(f"{folder} is not an export folder (not a directory)")
    if not path.is_file():
        raise UserError(f"{folder} has no {MANIFEST}; is it a folder written by `dsr-deploy export`?")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict) or "artifacts" not in data or "neurons" not in data:
        raise UserError(f"{path} is not a dsr-deploy manifest")
    return data
