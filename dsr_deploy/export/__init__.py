"""Export writers: TorchScript, ONNX, pt2 (+ AOTInductor), and the export folder with its manifest.

:func:`export_model` is the one entry point (the CLI calls it, with the same :class:`ExportOptions`): it validates
the options and the input shape, lets the mode (``options.mode``: :mod:`.multistep` or :mod:`.streaming`) build
the export context, runs each requested format's writer into a temporary folder and renames it onto the output
folder only when every artifact and the manifest are written (never a half-written export).

Modes and formats are registered (:func:`register_mode`, :func:`register_format`); the built-in ones register
here, when the package is imported.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from torch import nn

from ..errors import UserError
from . import multistep, streaming
from .base import INPUT_NAME, LAYOUT, OUTPUT_NAME, PROBE_PREFIX, ExportContext
from .formats import Format, Job, formats, get_mode, modes, register_format, register_mode
from .int8 import CALIBRATION_HINT, Int8Options
from .manifest import MANIFEST, Manifest, build_manifest, read_manifest, write_manifest
from .multistep import model_io, probe_model
from .options import HALF_FORMATS, PRECISIONS, ExportOptions, IOOptions

__all__ = [
    "ExportContext", "ExportOptions", "IOOptions", "Int8Options", "Format", "register_format", "register_mode",
    "formats", "modes", "export_model", "check_input_shape", "read_manifest", "MANIFEST", "INPUT_NAME",
    "OUTPUT_NAME", "PROBE_PREFIX", "LAYOUT", "model_io", "probe_model", "CALIBRATION_HINT", "PRECISIONS",
    "HALF_FORMATS",
]

multistep.register()
streaming.register()


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


def run_writer(name: str, writer, ctx: ExportContext, path: Path) -> Dict[str, Any]:
    """Run one writer; an unexpected failure becomes a one-line UserError naming the format (set
    DSR_DEPLOY_DEBUG=1 to get the original exception and its traceback instead)."""
    import os

    from ..errors import first_line

    try:
        return writer(ctx, path)
    except (UserError, KeyboardInterrupt, GeneratorExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - tracing runs the user's forward: SystemExit is a failure too
        if os.environ.get("DSR_DEPLOY_DEBUG"):
            raise
        model = f" of {ctx.spec}" if ctx.spec else ""
        raise UserError(f"{name} export{model} failed: {first_line(exc, with_type=True)} (DSR_DEPLOY_DEBUG=1 shows the "
                        "traceback)") from exc


def write_folder(out_dir: Path, ctx: ExportContext, jobs: Sequence[Job], *, mode: str, force: bool,
                 progress=None, weights_of: Optional[nn.Module] = None,
                 fields: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The one way an export folder is written, for every mode: each job ``(format, file name, writer, progress
    message)`` runs into a temporary folder (:func:`run_writer`); then the manifest (with the mode's own
    ``fields`` and the weights digest of ``weights_of``) is validated and written, and the folder moves into
    place: all or nothing."""
    from ..io import atomic_dir
    from ..model_spec import weights_digest

    artifacts: List[Dict[str, Any]] = []
    with atomic_dir(out_dir, force=force) as tmp:
        for name, filename, writer, message in jobs:
            if progress:
                progress(message)
            artifacts.append(run_writer(name, writer, ctx, tmp / filename))
        # verify rebuilds the model from its spec: the digest says whether it got these weights back
        digest = weights_digest(weights_of) if weights_of is not None else None
        manifest = build_manifest(ctx, artifacts, mode=mode, weights_sha256=digest, fields=fields)
        checked = write_manifest(tmp, manifest)  # validated: never a manifest its readers refuse
        # mkdtemp/mkstemp create private files; an export folder is ordinary output.
        tmp.chmod(0o755)
        for f in tmp.rglob("*"):
            f.chmod(0o755 if f.is_dir() else 0o644)
    return Manifest(checked, out_dir / MANIFEST, out_dir)


def export_model(model: nn.Module, input_shape: Sequence[int], out_dir: Path | str,
                 options: Optional[ExportOptions] = None, *, spec: Optional[str] = None,
                 checkpoint: Optional[str] = None, force: bool = False, trust_pickle: bool = False,
                 model_info: Optional[Dict[str, Any]] = None, progress=None, **fields: Any) -> Dict[str, Any]:
    """Write the requested artifacts and ``manifest.json`` into ``out_dir``; returns the manifest.

    ``options`` (:class:`ExportOptions`; keyword ``fields`` replace some of them, e.g. ``formats=("onnx",)``,
    ``precision="int8", int8=Int8Options(calibration=x)``) are validated as the CLI's are. ``spec``,
    ``checkpoint``, ``model_info`` and ``trust_pickle`` are what the manifest records of the model's origin.
    """
    try:
        opts = replace(options or ExportOptions(), **fields).validate()
    except TypeError as exc:  # an unknown keyword: name it as the CLI would
        raise UserError(f"export_model: {exc}") from None
    shape = check_input_shape(input_shape)
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise UserError(f"{out_dir} exists; pass --force to overwrite it")
    mode = get_mode(opts.mode)
    ctx = mode.prepare(model, shape, opts, spec)
    ctx.checkpoint, ctx.model_info, ctx.trust_pickle = checkpoint, dict(model_info or {}), bool(trust_pickle)
    available = formats(opts.mode)
    jobs: List[Job] = [(name, available[name].filename, available[name].writer,
                        f"writing {available[name].filename} ({'' if opts.mode == 'multistep' else opts.mode + ' '}"
                        f"{name})") for name in opts.formats]
    jobs += mode.extra_jobs(ctx) if mode.extra_jobs else []
    fields_ = mode.manifest_fields(ctx) if mode.manifest_fields else {}
    return write_folder(out_dir, ctx, jobs, mode=opts.mode, force=force, progress=progress, weights_of=model,
                        fields=fields_)
