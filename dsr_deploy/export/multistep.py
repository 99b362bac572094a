"""The multi-step export mode (``--mode multistep``, the default): whole-sequence artifacts, ``[T, B, ...]`` in.

:func:`prepare` runs the user's network once (:func:`probe_model`: its own checks apply; its ``io`` when its
neurons take the authors' flat layout), wraps it for the I/O options (:mod:`dsr_deploy.io_adapter`) and checks the
int8 calibration data against the artifact's input; the writers are TorchScript, ONNX and pt2 (+ AOTInductor).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..convert import NO_NEURON_HINT, NeuronInfo, find_neurons, inference_copy, inference_modules
from ..errors import UserError, first_line
from .base import ExportContext
from .formats import Job, register_format, register_mode
from .options import ExportOptions

MODE = "multistep"


def model_neurons(model: nn.Module) -> List[NeuronInfo]:
    """The model's DSR neurons; a one-line UserError when it has none or they cannot be read."""
    try:
        neurons = find_neurons(model)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    if not neurons:
        raise UserError(NO_NEURON_HINT)
    return neurons


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
        text = first_line(exc) if isinstance(exc, Exception) and str(exc).strip() else err
        from ..input_hint import expected_input

        return (f"the model rejects input shape {list(shape)}: {text}" + (f" (model {spec})" if spec else "")
                + f"; it takes {expected_input(model, neurons)}")

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


def prepare(model: nn.Module, shape: tuple, opts: ExportOptions, spec: Optional[str] = None) -> ExportContext:
    """The export context of a multi-step export: the (wrapped) model, its neurons, the artifact's input shape
    and ``io`` record, the int8 calibration checked against that shape."""
    network_shape = shape
    neurons = model_neurons(model)
    _, own_io = probe_model(model, shape, neurons=neurons, spec=spec)
    io = opts.io.record(shape[0])
    if io and own_io:
        raise UserError("--layout, --encode and --readout apply to networks that take [T, B, ...]; this model has "
                        "its own I/O (its neurons take [T*B, ...]) and is exported with it")
    if io:
        from ..io_adapter import adapter, artifact_shape, check_output

        model = adapter(model, io, neurons)
        shape = artifact_shape(shape, io)
        with torch.no_grad():
            problem = check_output(inference_copy(model, "op")(torch.zeros(shape)), shape, io)
        if problem:
            raise UserError(problem)
        neurons = find_neurons(model)
    else:
        io = own_io
    ctx = ExportContext(model=model, neurons=neurons, input_shape=shape, dynamic_batch=not opts.static_batch,
                        dtype=opts.dtype, options=opts, spec=spec, io=dict(io) if io else None)
    if opts.int8 is not None:
        from dataclasses import replace

        ctx.options = replace(opts, int8=opts.int8.with_calibration(
            shape, ctx.batch_dim, network_shape=network_shape, spec=spec, layout=opts.io.layout, encode=opts.io.encode))
    return ctx


def extra_jobs(ctx: ExportContext) -> List[Job]:
    """``--aot``: the AOTInductor package after the pt2 program."""
    if not (ctx.options.aot and "pt2" in ctx.options.formats):
        return []
    from .pt2_writer import AOT_FILENAME, write_pt2_aot

    return [("aoti", AOT_FILENAME, write_pt2_aot, f"compiling {AOT_FILENAME} (AOTInductor)")]


# The writers, imported when they run (importing dsr_deploy.export stays cheap).
def write_torchscript(ctx: ExportContext, path: Path) -> Dict[str, Any]:
    from .torchscript_writer import write_torchscript as write

    return write(ctx, path)


def write_onnx(ctx: ExportContext, path: Path) -> Dict[str, Any]:
    from .onnx_writer import write_onnx as write

    return write(ctx, path)


def write_pt2(ctx: ExportContext, path: Path) -> Dict[str, Any]:
    from .pt2_writer import write_pt2 as write

    return write(ctx, path)


def register() -> None:
    register_mode(MODE, prepare, extra_jobs=extra_jobs)
    register_format("torchscript", "model.ts", write_torchscript, description="TorchScript (torch.jit.load)")
    register_format("onnx", "model.onnx", write_onnx, description="ONNX: dsr nodes + function fallback, or portable")
    register_format("pt2", "model.pt2", write_pt2, description="torch.export program (torch.export.load)")
