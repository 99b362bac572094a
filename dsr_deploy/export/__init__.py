"""Export writers: TorchScript, ONNX, pt2 (+ AOTInductor), and the export folder with its manifest.

:func:`export_model` is the one entry point (the CLI calls it): it validates the input shape, finds the neurons,
runs each requested format's writer into a temporary folder and renames it onto the output folder only when
every artifact and the manifest are written (never a half-written export).

Formats are registered per *mode* (:func:`register_format`); the streaming single-step mode adds its own
writers without touching these.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..convert import NO_NEURON_HINT, NeuronInfo, find_neurons, inference_copy, inference_modules
from ..errors import UserError
from .base import INPUT_NAME, LAYOUT, OUTPUT_NAME, PROBE_PREFIX, ExportContext, Format
from .formats import formats, modes, register_format
from .manifest import MANIFEST, build_manifest, read_manifest, write_manifest

__all__ = [
    "ExportContext", "Format", "register_format", "formats", "modes", "export_model", "check_input_shape",
    "read_manifest", "MANIFEST", "INPUT_NAME", "OUTPUT_NAME", "PROBE_PREFIX", "LAYOUT", "model_io", "probe_model",
]

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


def model_io(neurons: Sequence[NeuronInfo], shape: tuple, first_neuron_input: Optional[tuple] = None,
             output_shape: Optional[tuple] = None) -> Optional[Dict[str, Any]]:
    """The manifest ``io`` record of a model whose own I/O is not ``[T, B, ...]`` -> spike train: one whose neurons
    take the flat ``[T*B, ...]`` layout (the authors' networks: T fixed by the neurons, the input repeated T times
    inside, logits out). None for ours / SpikingJelly's (``[T, B, ...]`` in, spikes out).

    ``first_neuron_input`` (the first flat neuron's input shape on ``shape``) tells a static ``[B, ...]`` input
    (CIFAR / ImageNet: the model repeats it T times) from a ``[B, T, ...]`` one (DVS: one frame per step).
    """
    flat = [n for n in neurons if n.layout == "flat"]
    if not flat:
        return None
    if len(flat) != len(neurons):
        raise UserError(f"the model mixes [T*B, ...] neurons ({flat[0].name}) with [T, B, ...] ones "
                        f"({next(n.name for n in neurons if n.layout != 'flat')}); one layout per model")
    steps = sorted({int(n.timesteps) for n in flat})
    if len(steps) != 1:
        raise UserError(f"the model's neurons disagree on timesteps: {steps}")
    T = steps[0]
    kinds = {n.kind for n in neurons}
    layout = "static"
    if first_neuron_input is not None and len(shape) == len(first_neuron_input) + 1 and len(shape) >= 2 \
            and shape[1] == T:
        layout = "BT"
    if output_shape is not None and (len(output_shape) < 1 or output_shape[0] != shape[0]):
        raise UserError(f"the model's output has shape {list(output_shape)}; a model with [T*B, ...] neurons must "
                        f"return [B, ...] (logits after its rate readout) with B={shape[0]}")
    return {"input_layout": layout, "output": "logits", "T": T, "encode": "direct" if layout == "static" else "none",
            # the authors' readout: IF networks average the output over T, LIF networks take the weighted rate
            "readout": "lif-rate" if kinds == {"lif"} else "mean", "source": "model"}


def probe_model(model: nn.Module, shape: tuple, dtype: torch.dtype = torch.float32,
                neurons: Optional[Sequence[NeuronInfo]] = None,
                spec: Optional[str] = None) -> Tuple[torch.Tensor, Optional[Dict[str, Any]]]:
    """Run the user's network (an eval-mode copy, so its own checks apply, e.g. our neurons' T) and its
    inference copy once on zeros of ``shape``; a UserError when either rejects it (or exits: SystemExit is
    user code failing too, see :func:`dsr_deploy.guard.user_code`). Returns the inference copy's output and the
    ``io`` record (:func:`model_io`)."""
    import copy

    from ..guard import user_code

    def message(err: str) -> str:
        exc = sys.exc_info()[1]
        text = str(exc).strip().splitlines()[0] if isinstance(exc, Exception) and str(exc).strip() else err
        return f"the model rejects input shape {list(shape)}: {text}" + (f" (model {spec})" if spec else "")

    neurons = list(neurons) if neurons is not None else find_neurons(model)
    flat = any(n.layout == "flat" for n in neurons)
    seen: List[tuple] = []
    with user_code(message), torch.no_grad():
        copy.deepcopy(model).eval()(torch.zeros(shape, dtype=dtype))
        inf = inference_copy(model, "op")
        # The input shape of the first neuron call (not the first module by name).
        hooks = [m.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape)))
                 for m in inference_modules(inf)] if flat else []
        try:
            out = inf(torch.zeros(shape, dtype=dtype))
        finally:
            for h in hooks:
                h.remove()
    if not isinstance(out, torch.Tensor):
        raise UserError(f"the model must return one tensor, it returned {type(out).__name__}")
    if flat:
        return out, model_io(neurons, shape, seen[0] if seen else None, tuple(out.shape))
    if out.dim() < 2 or out.shape[0] != shape[0] or out.shape[1] != shape[1]:
        raise UserError(f"the model's output has shape {list(out.shape)}; expected [T, B, ...] with T={shape[0]}, "
                        f"B={shape[1]} (multi-step layout)")
    return out, None


def _run_writer(name: str, writer, ctx: ExportContext, path: Path) -> Dict[str, Any]:
    """Run one writer; an unexpected failure becomes a one-line UserError naming the format (set
    DSR_DEPLOY_DEBUG=1 to get the original exception and its traceback instead)."""
    import os

    from ..guard import first_line

    try:
        return writer(ctx, path)
    except (UserError, KeyboardInterrupt, GeneratorExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - tracing runs the user's forward: SystemExit is a failure too
        if os.environ.get("DSR_DEPLOY_DEBUG"):
            raise
        model = f" of {ctx.spec}" if ctx.spec else ""
        raise UserError(f"{name} export{model} failed: {first_line(exc)} (DSR_DEPLOY_DEBUG=1 shows the "
                        "traceback)") from exc


def write_folder(out_dir: Path, ctx: ExportContext, jobs: Sequence[Tuple[str, str, Any, str]], *, mode: str,
                 force: bool, progress=None, weights_of: Optional[nn.Module] = None,
                 names: Optional[Tuple[List[str], List[str]]] = None, finish=None) -> Dict[str, Any]:
    """The one way an export folder is written, for every mode: each job ``(format, file name, writer, progress
    message)`` runs into a temporary folder (:func:`_run_writer`); then the manifest (I/O ``names`` or those the
    writers recorded; ``finish(manifest)`` adds a mode's own fields; the weights digest of ``weights_of``) is
    validated and written, and the folder moves into place: all or nothing."""
    from ..io import atomic_dir
    from ..model_spec import weights_digest

    artifacts: List[Dict[str, Any]] = []
    with atomic_dir(out_dir, force=force) as tmp:
        for name, filename, writer, message in jobs:
            if progress:
                progress(message)
            artifacts.append(_run_writer(name, writer, ctx, tmp / filename))
        if names is None:
            names = next(((a["inputs"], a["outputs"]) for a in artifacts if a.get("inputs") and a.get("outputs")),
                         (None, None))
        manifest = build_manifest(ctx, artifacts, mode=mode, inputs=names[0], outputs=names[1])
        if weights_of is not None:  # verify rebuilds the model from its spec: this says whether it got these back
            manifest["model"]["weights_sha256"] = weights_digest(weights_of)
        if finish is not None:
            finish(manifest)
        write_manifest(tmp, manifest)  # validated: never a manifest its readers refuse
        # mkdtemp/mkstemp create private files; an export folder is ordinary output.
        tmp.chmod(0o755)
        for f in tmp.rglob("*"):
            f.chmod(0o755 if f.is_dir() else 0o644)
    return manifest


#: ``export --precision``: the dtype of the exported activations; ``int8``: a quantised Q/DQ graph with float32
#: input and output (:mod:`dsr_deploy.export.int8`).
PRECISIONS = ("float32", "float16", "bfloat16", "int8")
#: The formats that honour a precision other than float32.
HALF_FORMATS = ("onnx",)


def check_precision(precision: str, formats_: Sequence[str]) -> torch.dtype:
    """``--precision`` -> torch dtype; one-line errors for an unknown value or a format that cannot do it."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown --precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    other = [f for f in formats_ if f not in HALF_FORMATS]
    if precision != "float32" and other:
        raise UserError(f"--precision {precision} is written for {', '.join(HALF_FORMATS)} only (not "
                        f"{', '.join(other)}); pass --format onnx")
    return torch.float32 if precision == "int8" else getattr(torch, precision)


from .int8.rewrite import CALIBRATION_HINT  # noqa: E402,F401  (public: the one-line error when calibration is missing)


def export_model(model: nn.Module, input_shape: Sequence[int], out_dir: Path | str, *,
                 formats_: Iterable[str] = ("torchscript", "onnx", "pt2"), spec: Optional[str] = None,
                 checkpoint: Optional[str] = None, lowering: str = "function", opset: Optional[int] = None,
                 function_body: Optional[str] = None, static_batch: bool = False, aot: bool = False,
                 force: bool = False, trust_pickle: bool = False, mode: str = "multistep",
                 extra_options: Optional[Dict[str, Any]] = None, model_info: Optional[Dict[str, Any]] = None,
                 io: Optional[Dict[str, Any]] = None, progress=None,
                 precision: Optional[str] = None) -> Dict[str, Any]:
    """Write the requested artifacts and ``manifest.json`` into ``out_dir``; returns the manifest.

    ``mode`` picks the writer family (:func:`register_format`); a writer may return ``inputs`` / ``outputs``
    (lists of names) in its artifact record, and the manifest then records those instead of the multi-step
    ``input`` / ``output``. ``extra_options`` reach the writers through ``ExportContext.options``.
    ``precision`` (float32 / float16 / bfloat16; also ``extra_options["precision"]``): the activations' dtype of
    the ONNX model; membranes stay float32 (see :mod:`dsr_deploy.export.onnx_functions`). ``int8``: the quantised
    Q/DQ model of :mod:`dsr_deploy.export.int8`; needs ``extra_options["calibration"]`` (an array of inputs
    as the artifact takes them) and honours ``extra_options["int8_all_layers"]``.
    """
    shape = check_input_shape(input_shape)
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise UserError(f"{out_dir} exists; pass --force to overwrite it")
    try:
        neurons = find_neurons(model)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    if not neurons:
        raise UserError(NO_NEURON_HINT)
    _, own_io = probe_model(model, shape, neurons=neurons, spec=spec)
    exported = model  # the user's network (its weights digest is recorded below)
    if io and own_io:
        raise UserError("--layout, --encode and --readout apply to networks that take [T, B, ...]; this model has "
                        "its own I/O (its neurons take [T*B, ...]) and is exported with it")
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
    else:
        io = own_io
    available = formats(mode)
    if not available:
        raise UserError(f"unknown export mode {mode!r}; known: {', '.join(modes())}")
    wanted = list(dict.fromkeys(formats_))
    for f in wanted:
        if f not in available:
            raise UserError(f"unknown format {f!r}; choose from {', '.join(available)} or all")
    precision = precision or (extra_options or {}).get("precision") or "float32"
    dtype = check_precision(precision, wanted)
    extra_options = dict(extra_options or {}, precision=precision)
    if precision == "int8":
        from .int8.rewrite import int8_options

        extra_options.update(int8_options(extra_options, shape,
                                          batch_dim=1 if (io or {}).get("input_layout", "TB") == "TB" else 0))
    ctx = ExportContext(
        model=model, neurons=neurons, input_shape=shape, dynamic_batch=not static_batch, dtype=dtype,
        options={"lowering": lowering, "opset": opset, "function_body": function_body, "aot": aot,
                 "trust_pickle": trust_pickle, **(extra_options or {})},
        spec=spec, checkpoint=checkpoint, model_info=dict(model_info or {}), io=dict(io) if io else None,
    )
    jobs = []
    for name in wanted:
        fmt = available[name]
        jobs.append((name, fmt.filename, fmt.writer, f"writing {fmt.filename} ({name})"))
        if name == "pt2" and aot and mode == "multistep":
            from .pt2_writer import AOT_FILENAME, write_pt2_aot

            jobs.append(("aoti", AOT_FILENAME, write_pt2_aot, f"compiling {AOT_FILENAME} (AOTInductor)"))
    manifest = write_folder(out_dir, ctx, jobs, mode=mode, force=force, progress=progress, weights_of=exported)
    return manifest
