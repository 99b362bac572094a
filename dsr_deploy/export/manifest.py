"""The manifest an export writes (:func:`build_manifest`); reading, validating and writing live in the torch-free
:mod:`dsr_deploy.manifest` (re-exported here).

Keys: ``schema``, ``dsr_deploy_version``, ``created``, ``mode``, ``model`` (``spec``, ``checkpoint``, ``trust_pickle``
as a record only, ``weights_sha256``, and for a MODEL spec ``settings`` (the factory's keyword arguments from
``--set`` and the checkpoint) and ``assumed_defaults`` (neuron settings neither gave; see
:func:`dsr_deploy.model_spec.load_reference_model`)), ``input_shape``, ``T``, ``layout``, ``dtype``, ``dynamic_batch``,
``lowering``, ``neurons`` (one dict per layer: :meth:`dsr_deploy.convert.NeuronInfo.to_dict`, with ``layout``
(``TB`` / ``flat``), ``timesteps`` and LIF ``lif_rule``), ``artifacts`` (``[{format, path, ...}]``, paths relative
to DIR), ``inputs`` / ``outputs`` (names), ``io`` (only when the artifact does not take ``[T, B, ...]`` in and give
the spike train out: ``input_layout``, ``output``, ``T``, ``encode``, ``readout``, ``source``;
:mod:`dsr_deploy.io_adapter`, docs/export.md).
"""

from __future__ import annotations

import datetime as _dt
from typing import Any, Dict, List, Optional

from .. import __version__
from ..manifest import MANIFEST, SCHEMA_VERSION, Manifest, parse_manifest, read_manifest, write_manifest

__all__ = ["MANIFEST", "SCHEMA_VERSION", "Manifest", "build_manifest", "parse_manifest", "read_manifest",
           "write_manifest"]


def build_manifest(ctx, artifacts: List[Dict[str, Any]], mode: str = "multistep", *,
                   weights_sha256: Optional[str] = None, fields: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The manifest of an export (``fields``: what the mode adds or sets, e.g. streaming's ``states``)."""
    from .base import INPUT_NAME, LAYOUT, OUTPUT_NAME

    io = getattr(ctx, "io", None)
    layout = {"BT": "BT...", "static": "B..."}.get((io or {}).get("input_layout"), LAYOUT)
    # trust_pickle records that the export needed --trust-pickle; a reader never takes trust from it.
    model = {"spec": ctx.spec, "checkpoint": ctx.checkpoint, "trust_pickle": bool(ctx.trust_pickle),
             **(ctx.model_info or {})}
    if weights_sha256 is not None:
        model["weights_sha256"] = weights_sha256
    manifest = {
        "schema": SCHEMA_VERSION,
        "dsr_deploy_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "mode": mode,
        "model": model,
        "input_shape": list(ctx.input_shape),
        "T": ctx.T,
        "layout": layout,
        "dtype": str(ctx.dtype).replace("torch.", ""),
        "dynamic_batch": ctx.dynamic_batch,
        "lowering": ctx.options.lowering or "function",
        "target": ctx.options.target,
        "neurons": [n.to_dict() for n in ctx.neurons],
        "artifacts": artifacts,
        "inputs": [INPUT_NAME],
        "outputs": getattr(ctx, "output_names", None) or [OUTPUT_NAME],
        **({"io": dict(ctx.io)} if ctx.io is not None else {}),
        **(fields or {}),
    }
    return manifest
