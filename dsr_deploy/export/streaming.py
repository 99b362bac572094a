"""Streaming (single-step) export: one time step per call, each neuron layer's membrane as explicit I/O.

An event camera or a controller feeds a spiking network one time step at a time. The streaming model is the
network run for one step, with every DSR neuron's membrane carried in and out:

    inputs   x_t [B, ...]   v_in_0 [B, ...]  ...  v_in_{n-1}
    outputs  y_t [B, ...]   v_out_0 [B, ...] ...  v_out_{n-1}

``v_in_i`` / ``v_out_i`` are float32 membranes of the i-th neuron layer in ``named_modules()`` order (the
manifest names the module of each). Zero membranes start a stream. Feeding the T steps of an input one by one,
each call's ``v_out_i`` fed back as the next call's ``v_in_i``, gives bit-exactly the multi-step output
``net(x)[t]`` (the network must keep the time dimension in its output: a network that averages over T is
streamed up to that reduction, which the caller then applies).

Lowerings:

* TorchScript: the network traced around the neurons, each neuron a call of the scripted reference step
  (:func:`dsr_deploy.functional.if_step` / ``lif_step``, the same code as the multi-step reference), or with
  ``lowering="ops"`` of ``torch.ops.dsr.if_spike`` / ``lif_spike`` with ``v_init`` and ``return_state``
  (the native kernels' membrane path; the consumer then loads ``libdsr_torch_ops.so``).
* ONNX: one custom node per neuron, ``dsr::DSRIFStep`` / ``dsr::DSRLIFStep`` (inputs ``(x_t, v)``, outputs
  ``(y_t, v_new)``, attributes as the multi-step nodes), and a model-local function of the same domain and name
  built from standard ops, so stock ONNX Runtime runs the model and the dsr custom-op library, when registered,
  replaces the function body.

The I/O names are the wire contract's (:mod:`dsr_deploy.contract`); :class:`dsr_deploy.runtime.stream.StreamSession`
runs such a model.

One idea, over 400 lines: the streaming exporter (the step module, its two lowerings, the writers and
:func:`export_streaming`), all of it about the one single-step model.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import functional as F
from ..contract import DOMAIN as ONNX_DOMAIN
from ..contract import DOMAIN_VERSION as ONNX_DOMAIN_VERSION
from ..contract import STEP_OP_TYPES, state_input_name, state_output_name
from ..contract import STREAM_INPUT as INPUT_NAME
from ..contract import STREAM_OUTPUT as OUTPUT_NAME
from ..convert import set_child
from ..errors import UserError
from ..onnx_graph import dsr_nodes
from .formats import register_format

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "state_input_name",
    "state_output_name",
    "StreamingModule",
    "build_streaming_module",
    "export_torchscript",
    "export_onnx",
    "step_functions",
    "export_streaming",
]

IF_STEP_OP = STEP_OP_TYPES["if"]
LIF_STEP_OP = STEP_OP_TYPES["lif"]


def _find_neurons(model: nn.Module) -> list:
    from ..convert import find_neurons

    try:
        return find_neurons(model)
    except ValueError as exc:
        raise UserError(str(exc)) from exc


# ---------------------------------------------------------------------------------------------------------
# The single-step module.

_scripted: dict[str, Any] = {}


def step_functions() -> tuple:
    """The scripted reference steps ``(if_step, lif_step)`` (scripted once per process)."""
    if not _scripted:
        _scripted["if"] = torch.jit.script(F.if_step)
        _scripted["lif"] = torch.jit.script(F.lif_step)
    return _scripted["if"], _scripted["lif"]


class _StateIO:
    """The membranes of the call in progress: a side channel between StreamingModule and its neurons."""

    def __init__(self, n: int):
        self.v_in: Sequence[Tensor] = ()
        self.v_out: list[Tensor | None] = [None] * n


class _StepNeuron(nn.Module):
    """Stands in for a DSR neuron: one step of the layer, membrane read from and written to the side channel."""

    def __init__(self, info, index: int, io: _StateIO, lowering: str):
        from ..convert import onnx_attributes

        super().__init__()
        self.info, self.index, self.lowering = info, index, lowering
        self.onnx_attrs = onnx_attributes(info)
        object.__setattr__(self, "_io", io)  # not a submodule, not a buffer

    def forward(self, x_seq: Tensor) -> Tensor:
        if not torch.jit.is_tracing() and (x_seq.dim() < 2 or x_seq.shape[0] != 1):
            raise RuntimeError(f"{self.info.name}: a streaming step expects [1, B, ...], got {list(x_seq.shape)}")
        io, i, n = self._io, self.index, self.info
        if io.v_out[i] is not None:
            raise RuntimeError(f"neuron {n.name} is called twice in one step; streaming needs one call per step")
        x_t, v = x_seq[0], io.v_in[i]
        if torch.onnx.is_in_onnx_export():
            op = IF_STEP_OP if n.kind == "if" else LIF_STEP_OP
            y_t, v_new = torch.onnx.ops.symbolic_multi_out(
                f"{ONNX_DOMAIN}::{op}", (x_t, v), self.onnx_attrs,
                dtypes=(x_t.dtype, torch.float32), shapes=(x_t.shape, v.shape), version=ONNX_DOMAIN_VERSION,
            )
        elif self.lowering == "ops":
            from .. import ops

            ops.load_native()
            if n.kind == "if":
                y, v_new = torch.ops.dsr.if_spike(x_seq, n.v_threshold, n.alpha, v, True)
            else:
                y, v_new = torch.ops.dsr.lif_spike(x_seq, n.v_threshold, n.alpha, n.tau, n.delta_t, v, True,
                                                   n.decay, n.gain)
            y_t = y[0]
        else:
            if_step, lif_step = step_functions()
            if n.kind == "if":
                y_t, v_new = if_step(x_t, v, n.v_threshold, n.alpha)
            else:
                y_t, v_new = lif_step(x_t, v, n.v_threshold, n.alpha, n.tau, n.delta_t, n.decay, n.gain)
        io.v_out[i] = v_new
        return y_t.unsqueeze(0)


class StreamingModule(nn.Module):
    """``forward(x_t, v_in_0, ..., v_in_{n-1}) -> (y_t, v_out_0, ..., v_out_{n-1})`` around a multi-step net."""

    def __init__(self, net: nn.Module, neurons: list, state_shapes: list[tuple[int, ...]],
                 lowering: str = "functional"):
        super().__init__()
        self.net = net
        self.neurons = neurons
        self.state_shapes = state_shapes  # per-sample shapes (no batch dim)
        self.lowering = lowering
        object.__setattr__(self, "_io", None)

    def forward(self, x_t: Tensor, *v_in: Tensor):
        io = self._io
        if len(v_in) != len(self.neurons):
            raise RuntimeError(f"expected {len(self.neurons)} membranes, got {len(v_in)}")
        io.v_in, io.v_out = v_in, [None] * len(self.neurons)
        y = self.net(x_t.unsqueeze(0))
        missing = [self.neurons[i].name for i, v in enumerate(io.v_out) if v is None]
        if missing:
            raise RuntimeError(f"neurons not called in this step: {missing}")
        v_out = list(io.v_out)
        io.v_in, io.v_out = (), [None] * len(self.neurons)
        return (y[0], *v_out)

    def zero_states(self, batch: int, device=None) -> list[Tensor]:
        return [torch.zeros((batch, *s), dtype=torch.float32, device=device) for s in self.state_shapes]


def _replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    if name == "":
        raise UserError("the model is a bare neuron; wrap it in a network (nn.Sequential) to stream it")
    set_child(root, name, new)


def _streamable_neurons(model: nn.Module, lowering: str) -> list:
    """The model's neurons, after checking that it can be streamed with ``lowering`` (one-line errors)."""
    if lowering not in ("functional", "ops"):
        raise UserError(f"unknown streaming lowering {lowering!r}; use 'functional' or 'ops'")
    neurons = _find_neurons(model)
    if not neurons:
        raise UserError("the model has no DSR neuron (DSRIFNode / DSRLIFNode); nothing to stream")
    flat = [n.name for n in neurons if n.layout == "flat"]
    if flat:
        raise UserError(f"neuron {flat[0]} takes [T*B, ...] with T fixed inside the model (the authors' layout); "
                        "it cannot be streamed one step at a time: export it in multi-step mode")
    return neurons


def build_streaming_module(model: nn.Module, example_step: Tensor, lowering: str = "functional") -> StreamingModule:
    """Wrap ``model`` (multi-step, [T, B, ...]) as a single-step :class:`StreamingModule`.

    ``example_step`` is one time step ``[B, ...]``; it fixes each membrane's per-sample shape. ``model`` itself
    is not modified (a copy is wrapped) and must be in eval mode semantics (it is put in eval mode).
    """
    from ..convert import find_neuron_modules

    neurons = _streamable_neurons(model, lowering)
    net = copy.deepcopy(model).eval()
    from ..neuron import DSRIFNode, DSRLIFNode

    for m in net.modules():  # a network built for a fixed T (every zoo model) streams one step at a time
        if isinstance(m, (DSRIFNode, DSRLIFNode)):
            m.T = None
    if example_step.dim() < 1:
        raise UserError("the example step must be [B, ...]")
    # Membrane shapes: the input shape each neuron sees in one step.
    seen: dict[str, tuple] = {}
    hooks = []
    modules = find_neuron_modules(net)
    for n in neurons:
        m = modules[n.name]

        def hook(mod, args, name=n.name):
            if name in seen:
                raise UserError(f"neuron {name} is called more than once per forward; it cannot be streamed")
            seen[name] = tuple(args[0].shape)
        hooks.append(m.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            out = net(example_step.unsqueeze(0))
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"the model failed on one time step {list(example_step.unsqueeze(0).shape)}: {exc}") from exc
    finally:
        for h in hooks:
            h.remove()
    unused = [n.name for n in neurons if n.name not in seen]
    if unused:
        raise UserError(f"neurons never called in a forward pass: {', '.join(unused)}")
    if not isinstance(out, Tensor) or out.dim() < 1 or out.shape[0] != 1:
        shape = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise UserError(
            f"the network's output for one time step is {shape}: streaming needs an output that keeps the "
            "time dimension first ([T, B, ...]); export the network without its reduction over T"
        )
    batch = example_step.shape[0]
    shapes = []
    for n in neurons:
        s = seen[n.name]
        if len(s) < 2 or s[0] != 1 or s[1] != batch:
            raise UserError(f"neuron {n.name} sees {list(s)}: expected [1, B, ...] (time, then batch)")
        shapes.append(tuple(int(d) for d in s[2:]))
    io = _StateIO(len(neurons))
    steps = {id(modules[n.name]): _StepNeuron(n, i, io, lowering) for i, n in enumerate(neurons)}
    # Every place a neuron sits (a shared neuron sits in several: it then fails loudly at its second call).
    places = [(name, m) for name, m in net.named_modules(remove_duplicate=False) if id(m) in steps]
    for name, m in places:
        _replace_module(net, name, steps[id(m)])
    for p in net.parameters():
        p.requires_grad_(False)
    sm = StreamingModule(net, neurons, shapes, lowering)
    object.__setattr__(sm, "_io", io)
    return sm.eval()


# ---------------------------------------------------------------------------------------------------------
# Exporters.


def _io_names(n: int) -> tuple[list[str], list[str]]:
    return ([INPUT_NAME] + [state_input_name(i) for i in range(n)],
            [OUTPUT_NAME] + [state_output_name(i) for i in range(n)])


def export_torchscript(sm: StreamingModule, example_step: Tensor, path: Path | str) -> Path:
    """Trace ``sm`` around its scripted neuron steps and save it (loads with plain ``torch.jit.load``)."""
    from ..io import atomic_path

    states = sm.zero_states(example_step.shape[0])
    with torch.no_grad():
        traced = torch.jit.trace(sm, (example_step, *states), check_trace=False, strict=False)
    # The contract's names on the forward arguments (the code shows them; callers pass them by position).
    for value, name in zip(list(traced.graph.inputs())[1:], _io_names(len(sm.neurons))[0]):
        value.setDebugName(name)
    path = Path(path)
    with atomic_path(path) as tmp:
        traced.save(str(tmp))
    return path


def add_step_functions(model_proto, elem: int = 1) -> None:
    """Append the DSRIFStep / DSRLIFStep function bodies the graph uses (torch.onnx.export inlines functions,
    so they are added after export)."""
    from .onnx_functions import scope_prefix, step_function_proto

    used = {n.op_type for n in dsr_nodes(model_proto, subgraphs=False)}
    have = {(f.domain, f.name) for f in model_proto.functions}
    opset = next((o.version for o in model_proto.opset_import if o.domain in ("", "ai.onnx")), 18)
    prefix = scope_prefix(model_proto.graph)  # formals never collide with x_t / v_in_i (onnx-tensorrt < 10.8)
    for kind, op in (("if", IF_STEP_OP), ("lif", LIF_STEP_OP)):
        if op in used and (ONNX_DOMAIN, op) not in have:
            model_proto.functions.append(step_function_proto(kind, op, opset, elem=elem, prefix=prefix))
    if not any(o.domain == ONNX_DOMAIN for o in model_proto.opset_import):
        from onnx import helper

        model_proto.opset_import.append(helper.make_opsetid(ONNX_DOMAIN, ONNX_DOMAIN_VERSION))


def export_onnx(sm: StreamingModule, example_step: Tensor, path: Path | str, dynamic_batch: bool = True) -> Path:
    """Export ``sm`` as ONNX with dsr step nodes and their function fallbacks; batch dimension symbolic."""
    import onnx

    from ..io import atomic_path

    n = len(sm.neurons)
    states = sm.zero_states(example_step.shape[0])
    in_names, out_names = _io_names(n)
    dyn = None
    if dynamic_batch:
        b = torch.export.Dim("batch")
        dyn = ({0: b}, tuple({0: b} for _ in states))  # forward(x_t, *v_in)
    from .onnx_writer import quiet_export

    with torch.no_grad(), quiet_export():  # the exporter's warnings and log lines are not the user's business
        prog = torch.onnx.export(sm, (example_step, *states), None, dynamo=True, input_names=in_names,
                                 output_names=out_names, dynamic_shapes=dyn, verbose=False, optimize=True)
    proto = prog.model_proto
    from .onnx_functions import onnx_elem_type

    add_step_functions(proto, onnx_elem_type(example_step.dtype))
    if dynamic_batch:  # one name for the batch dimension everywhere (the exporter may name each differently)
        for vi in list(proto.graph.input) + list(proto.graph.output):
            d = vi.type.tensor_type.shape.dim
            if len(d):
                d[0].ClearField("dim_value")
                d[0].dim_param = "batch"
    onnx.checker.check_model(proto, full_check=True)
    path = Path(path)
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
    return path


MODE = "streaming"


def _context_module(ctx) -> tuple:
    """The streaming module of an export context (built once per export) and its example step."""
    key = "_streaming_module"
    if key not in ctx.options:
        step = ctx.example_input(shape=(1, *ctx.input_shape[1:]))[0]
        model = ctx.model
        if ctx.dtype != torch.float32:  # --precision: weights and activations in that dtype, membranes float32
            import copy

            model = copy.deepcopy(model).to(ctx.dtype)
        ctx.options[key] = (build_streaming_module(model, step, ctx.options.get("streaming_lowering",
                                                                                "functional")), step)
    return ctx.options[key]


def _states(sm: StreamingModule) -> list[dict]:
    return [{"input": state_input_name(i), "output": state_output_name(i), "shape": list(s), "dtype": "float32",
             "initial": "zeros", "neuron": i, "layer": n.name}
            for i, (n, s) in enumerate(zip(sm.neurons, sm.state_shapes))]


def _io_record(sm: StreamingModule) -> dict:
    # The export package's manifest takes inputs/outputs from the artifact records (export_model(mode=...)).
    ins, outs = _io_names(len(sm.neurons))
    return {"inputs": ins, "outputs": outs, "states": _states(sm)}


def write_streaming_torchscript(ctx, path: Path) -> dict:
    sm, step = _context_module(ctx)
    export_torchscript(sm, step, path)
    return {"format": "torchscript", "path": path.name, "mode": MODE, "lowering": sm.lowering, **_io_record(sm),
            "neuron_math": "scripted dsr_deploy.functional.if_step/lif_step" if sm.lowering == "functional"
            else "torch.ops.dsr.if_spike/lif_spike (load libdsr_torch_ops.so)"}


def write_streaming_onnx(ctx, path: Path) -> dict:
    sm, step = _context_module(ctx)
    export_onnx(sm, step, path, dynamic_batch=ctx.dynamic_batch)
    extra = {}
    if ctx.options.get("precision") == "int8":  # the Q/DQ step model, calibrated one step at a time
        from .int8.rewrite import quantize_file

        extra = quantize_file(path, ctx, states=[(s["input"], s["output"], s["shape"]) for s in _states(sm)])
    return {**extra, "format": "onnx", "path": path.name, "mode": MODE, "custom_domain": ONNX_DOMAIN,
            "custom_ops": sorted({IF_STEP_OP if n.kind == "if" else LIF_STEP_OP for n in sm.neurons}),
            "fallback": "model-local functions of standard ops", **_io_record(sm)}


def register_formats() -> None:
    """Register the streaming mode's writers with the export package (``dsr-deploy export --mode streaming``);
    importing this module does it."""
    register_format("torchscript", "model.ts", write_streaming_torchscript, mode=MODE,
                    description="TorchScript single step (x_t, v_in_i) -> (y_t, v_out_i)")
    register_format("onnx", "model.onnx", write_streaming_onnx, mode=MODE,
                    description="ONNX single step: DSRIFStep/DSRLIFStep + function fallback")


def export_streaming(model: nn.Module, input_shape: Sequence[int], out_dir: Path | str, *,
                     formats_: Sequence[str] = ("torchscript", "onnx"), lowering: str = "functional",
                     spec: str | None = None, checkpoint: str | None = None, static_batch: bool = False,
                     force: bool = False, progress=None, model_info: dict | None = None,
                     precision: str = "float32", extra_options: dict | None = None) -> dict:
    """Write the streaming model(s) and ``manifest.json`` into ``out_dir`` (all or nothing); returns the manifest.

    ``precision`` (ONNX only): ``x_t`` / ``y_t`` and the weights in float16 / bfloat16, membranes float32;
    ``int8``: the quantised Q/DQ step model (``extra_options["calibration"]``: ``[T, N, ...]`` inputs, fed one
    step at a time; :mod:`dsr_deploy.export.int8`).
    ``input_shape`` is the multi-step ``[T, B, ...]`` shape (as for ``dsr-deploy export``); one step is
    ``[B, ...]``. The manifest is the export package's, with ``mode: "streaming"``, the streaming I/O names and
    ``states``: per membrane its input/output names and per-sample shape.
    """
    from . import check_input_shape, check_precision, write_folder
    from .base import ExportContext
    from .formats import formats

    register_formats()
    shape = check_input_shape(input_shape)
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise UserError(f"{out_dir} exists; pass --force to overwrite it")
    available = formats(MODE)
    wanted = list(dict.fromkeys(formats_))
    for f in wanted:
        if f not in available:
            raise UserError(f"streaming export supports {' and '.join(available)}, not {f!r}")
    neurons = _streamable_neurons(model, lowering)
    dtype = check_precision(precision, wanted)
    options = {"lowering": f"streaming-{lowering}", "streaming_lowering": lowering, "precision": precision}
    if precision == "int8":
        from .int8.rewrite import int8_options

        options.update(int8_options(extra_options, shape, batch_dim=1))
    ctx = ExportContext(model=model, neurons=neurons, input_shape=shape, dynamic_batch=not static_batch, dtype=dtype,
                        options=options,
                        spec=spec, checkpoint=checkpoint, model_info=dict(model_info or {}))
    sm, _ = _context_module(ctx)  # validates the model before anything is written
    jobs = [(name, available[name].filename, available[name].writer,
             f"writing {available[name].filename} (streaming {name})") for name in wanted]

    def finish(manifest: dict) -> None:
        manifest["step_shape"] = list(shape[1:])
        manifest["states"] = _states(sm)

    return write_folder(out_dir, ctx, jobs, mode=MODE, force=force, progress=progress, weights_of=model,
                        names=_io_names(len(neurons)), finish=finish)


register_formats()
