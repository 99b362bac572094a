"""Export writers: TorchScript, ONNX, pt2 (+ AOTInductor), and the export folder with its manifest.

:func:`export_model` is the one entry point (the CLI calls it): it validates the input shape, finds the neurons,
runs each requested format's writer into a temporary folder and renames it onto the output folder only when
every artifact and the manifest are written (never a half-written export).

Formats are registered per *mode* (:func:`register_format`); the streaming single-step mode adds its own
writers without touching these.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

import torch
from torch import nn

from ..convert import find_neurons, inference_copy
from ..errors import UserError
from .base import (INPUT_NAME, LAYOUT, OUTPUT_NAME, PROBE_PREFIX, ExportContext, Format, formats, modes,
                   register_format)
from .manifest import MANIFEST, build_manifest, read_manifest

__all__ = [
    "ExportContext", "Format", "register_format", "formats", "modes", "export_model", "check_input_shape",
    "read_manifest", "MANIFEST", "INPUT_NAME", "OUTPUT_NAME", "PROBE_PREFIX", "LAYOUT",
]

_registered = False


def _ensure_registered() -> None:
    global _registered
    if _registered:
        return
    _registered = True
    from .onnx_writer import write_onnx
    from .pt2_writer import write_pt2
    from .torchscript_writer import write_torchscript

    register_format("torchscript", "model.ts", write_torchscript, description="TorchScript (torch.jit.load)")
    register_format("onnx", "model.onnx", write_onnx, description="ONNX: dsr nodes + function fallback, or portable")
    register_format("pt2", "model.pt2", write_pt2, description="torch.export program (torch.export.load)")


def check_input_shape(shape: Sequence[int]) -> tuple:
    """Validate a ``[T, B, ...]`` shape: at least 2 dims, all positive. One-line UserError otherwise."""
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise UserError(f"input shape {list(shape)} has rank {len(shape)}; expected [T, B, ...] (rank >= 2)")
    if shape[0] <= 0:
        raise UserError(f"T must be > 0, got T={shape[0]} in input shape {list(shape)}")
    if any(s <= 0 for s in shape[1:]):
        raise UserError(f"every dimension of the input shape must be > 0, got {list(shape)}")
    return shape


def probe_model(model: nn.Module, shape: tuple, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Run the user's network (an eval-mode copy, so its own checks apply, e.g. our neurons' T) and its
    inference copy once on zeros of ``shape``; a UserError when either rejects it."""
    import copy

    try:
        with torch.no_grad():
            copy.deepcopy(model).eval()(torch.zeros(shape, dtype=dtype))
            out = inference_copy(model, "op")(torch.zeros(shape, dtype=dtype))
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"the model rejects input shape {list(shape)}: {msg}") from exc
    if not isinstance(out, torch.Tensor):
        raise UserError(f"the model must return one tensor, it returned {type(out).__name__}")
    if out.dim() < 2 or out.shape[0] != shape[0] or out.shape[1] != shape[1]:
        raise UserError(f"the model's output has shape {list(out.shape)}; expected [T, B, ...] with T={shape[0]}, "
                        f"B={shape[1]} (multi-step layout)")
    return out


def _run_writer(name: str, writer, ctx: ExportContext, path: Path) -> Dict[str, Any]:
    """Run one writer; an unexpected failure becomes a one-line UserError naming the format (set
    DSR_DEPLOY_DEBUG=1 to get the original exception and its traceback instead)."""
    import os

    try:
        return writer(ctx, path)
    except UserError:
        raise
    except Exception as exc:
        if os.environ.get("DSR_DEPLOY_DEBUG"):
            raise
        text = str(exc).strip()
        first = text.splitlines()[0] if text else ""
        raise UserError(f"{name} export failed: {type(exc).__name__}: {first} (DSR_DEPLOY_DEBUG=1 shows the "
                        "traceback)") from exc


def export_model(model: nn.Module, input_shape: Sequence[int], out_dir: Path | str, *,
                 formats_: Iterable[str] = ("torchscript", "onnx", "pt2"), spec: Optional[str] = None,
                 checkpoint: Optional[str] = None, lowering: str = "function", opset: Optional[int] = None,
                 function_body: Optional[str] = None, static_batch: bool = False, aot: bool = False,
                 force: bool = False, trust_pickle: bool = False, mode: str = "multistep",
                 extra_options: Optional[Dict[str, Any]] = None, model_info: Optional[Dict[str, Any]] = None,
                 io: Optional[Dict[str, Any]] = None, progress=None) -> Dict[str, Any]:
    """Write the requested artifacts and ``manifest.json`` into ``out_dir``; returns the manifest.

    ``mode`` picks the writer family (:func:`register_format`); a writer may return ``inputs`` / ``outputs``
    (lists of names) in its artifact record, and the manifest then records those instead of the multi-step
    ``input`` / ``output``. ``extra_options`` reach the writers through ``ExportContext.options``.
    """
    from ..io import atomic_dir

    shape = check_input_shape(input_shape)
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise UserError(f"{out_dir} exists; pass --force to overwrite it")
    try:
        neurons = find_neurons(model)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    if not neurons:
        raise UserError("the model holds no DSR neuron (DSRIFNode / DSRLIFNode, ours or SpikingJelly's); "
                        "nothing to export")
    probe_model(model, shape)
    if io:
        from ..io_adapter import IOAdapter, artifact_shape, check_output

        if mode != "multistep":
            raise UserError("--layout, --encode and --readout apply to multi-step exports, not to --mode streaming")
        model = IOAdapter(model, io, neurons)
        shape = artifact_shape(shape, io)
        with torch.no_grad():
            problem = check_output(inference_copy(model, "op")(torch.zeros(shape)), shape, io)
        if problem:
            raise UserError(problem)
        neurons = find_neurons(model)
    available = formats(mode)
    if not available:
        raise UserError(f"unknown export mode {mode!r}; known: {', '.join(modes())}")
    wanted = list(dict.fromkeys(formats_))
    for f in wanted:
        if f not in available:
            raise UserError(f"unknown format {f!r}; choose from {', '.join(available)} or all")
    ctx = ExportContext(
        model=model, neurons=neurons, input_shape=shape, dynamic_batch=not static_batch,
        options={"lowering": lowering, "opset": opset, "function_body": function_body, "aot": aot,
                 "trust_pickle": trust_pickle, **(extra_options or {})},
        spec=spec, checkpoint=checkpoint, model_info=dict(model_info or {}), io=dict(io) if io else None,
    )
    artifacts: List[Dict[str, Any]] = []
    with atomic_dir(out_dir, force=force) as tmp:
        for name in wanted:
            fmt = available[name]
            if progress:
                progress(f"writing {fmt.filename} ({name})")
            artifacts.append(_run_writer(name, fmt.writer, ctx, tmp / fmt.filename))
            if name == "pt2" and aot and mode == "multistep":
                from .pt2_writer import AOT_FILENAME, write_pt2_aot

                if progress:
                    progress(f"compiling {AOT_FILENAME} (AOTInductor)")
                artifacts.append(_run_writer("aoti", write_pt2_aot, ctx, tmp / AOT_FILENAME))
        io_names = next(((a["inputs"], a["outputs"]) for a in artifacts if a.get("inputs") and a.get("outputs")),
                        (None, None))
        manifest = build_manifest(ctx, artifacts, mode=mode, inputs=io_names[0], outputs=io_names[1])
        import json

        from ..io import atomic_write_text

        atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        # mkdtemp/mkstemp create private files; an export folder is ordinary output.
        tmp.chmod(0o755)
        for f in tmp.rglob("*"):
            f.chmod(0o755 if f.is_dir() else 0o644)
    return manifest
