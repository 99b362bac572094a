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
The mode (``export_model(..., mode="streaming")``, ``dsr-deploy export --mode streaming``) records in the manifest
``mode: "streaming"``, the streaming I/O names as ``inputs`` / ``outputs``, ``step_shape`` and ``states`` (per
membrane its input / output names and per-sample shape): at the top level only.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torch import Tensor, nn

from ..contract import DOMAIN as ONNX_DOMAIN
from ..contract import DOMAIN_VERSION as ONNX_DOMAIN_VERSION
from ..contract import STEP_OP_TYPES, state_input_name, state_output_name
from ..contract import STREAM_INPUT as INPUT_NAME
from ..contract import STREAM_OUTPUT as OUTPUT_NAME
from ..onnx_graph import dsr_nodes
from .base import ExportContext
from .formats import register_format, register_mode
from .options import ExportOptions
from .stream_module import (
    ALL_STEP_OPS,
    StreamingModule,
    build_streaming_module,
    initial_membrane,
    step_functions,
    streamable_neurons,
)

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "MODE",
    "state_input_name",
    "state_output_name",
    "StreamingModule",
    "build_streaming_module",
    "export_torchscript",
    "export_onnx",
    "add_step_functions",
    "step_functions",
]

IF_STEP_OP = STEP_OP_TYPES["if"]
LIF_STEP_OP = STEP_OP_TYPES["lif"]
MODE = "streaming"


def io_names(n: int) -> tuple[list[str], list[str]]:
    """The step model's input and output names for ``n`` neuron layers (the wire contract's)."""
    return ([INPUT_NAME] + [state_input_name(i) for i in range(n)],
            [OUTPUT_NAME] + [state_output_name(i) for i in range(n)])


def export_torchscript(sm: StreamingModule, example_step: Tensor, path: Path | str) -> Path:
    """Trace ``sm`` around its scripted neuron steps and save it (loads with plain ``torch.jit.load``)."""
    import warnings

    from ..io import atomic_path, write_through_memory

    states = sm.zero_states(example_step.shape[0])
    with torch.no_grad(), warnings.catch_warnings():
        # the readout's weights over the fixed T become constants of the trace, as they should
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(sm, (example_step, *states), check_trace=False, strict=False)
    # The contract's names on the forward arguments (the code shows them; callers pass them by position).
    for value, name in zip(list(traced.graph.inputs())[1:], io_names(len(states))[0]):
        value.setDebugName(name)
    path = Path(path)
    with atomic_path(path) as tmp:
        write_through_memory(tmp, lambda f: torch.jit.save(traced, f))
    return path


def add_step_functions(model_proto, elem: int = 1) -> None:
    """Append the DSRIFStep / DSRLIFStep function bodies the graph uses (torch.onnx.export inlines functions,
    so they are added after export)."""
    from .onnx_functions import scope_prefix, step_function_proto

    used = {n.op_type for n in dsr_nodes(model_proto, subgraphs=False)}
    have = {(f.domain, f.name) for f in model_proto.functions}
    opset = next((o.version for o in model_proto.opset_import if o.domain in ("", "ai.onnx")), 18)
    prefix = scope_prefix(model_proto.graph)  # formals never collide with x_t / v_in_i (onnx-tensorrt < 10.8)
    for kind, op in ALL_STEP_OPS.items():
        if op in used and (ONNX_DOMAIN, op) not in have:
            model_proto.functions.append(step_function_proto(kind, op, opset, elem=elem, prefix=prefix))
    if not any(o.domain == ONNX_DOMAIN for o in model_proto.opset_import):
        from onnx import helper

        model_proto.opset_import.append(helper.make_opsetid(ONNX_DOMAIN, ONNX_DOMAIN_VERSION))


def export_onnx(sm: StreamingModule, example_step: Tensor, path: Path | str, dynamic_batch: bool = True) -> Path:
    """Export ``sm`` as ONNX with dsr step nodes and their function fallbacks; batch dimension symbolic."""
    import onnx

    from ..io import atomic_path

    if dynamic_batch and example_step.shape[0] < 2:  # torch.export specialises a dimension of size 1: trace 2
        example_step = torch.cat([example_step] * 2)
    states = sm.zero_states(example_step.shape[0])
    in_names, out_names = io_names(len(states))
    dyn = None
    if dynamic_batch:
        b = torch.export.Dim("batch")
        dyn = ({0: b}, tuple({0: b} for _ in states))  # forward(x_t, *v_in)
    from .onnx_writer import bfloat16_export_settings, quiet_export

    opset, optimize = bfloat16_export_settings(sm, example_step.dtype)  # bfloat16: opset 22, no BatchNorm folding
    with torch.no_grad(), quiet_export():  # the exporter's warnings and log lines are not the user's business
        prog = torch.onnx.export(sm, (example_step, *states), None, dynamo=True, input_names=in_names,
                                 output_names=out_names, dynamic_shapes=dyn, verbose=False, optimize=optimize,
                                 **({} if optimize else {"opset_version": opset}))
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


def stream_io(opts: ExportOptions, T: int) -> Optional[Dict[str, Any]]:
    """The manifest's ``io`` record of a streaming export (``--layout`` / ``--encode`` / ``--readout``), as a
    multi-step export records it. The step itself takes ``x_t [B, ...]`` whatever the layout: the record says how
    a whole sequence is held (``StreamSession.run``, verify) and, with ``--encode direct``, that every step is fed
    the same static image; with a readout the step returns the readout of its window (:class:`StreamingModule`)."""
    return opts.io.record(T)  # (--per-step-readout is refused by ExportOptions.validate)


def prepare(model: nn.Module, shape: tuple, opts: ExportOptions, spec: Optional[str] = None) -> ExportContext:
    """The export context of a streaming export; builds the step module (which validates the model) before
    anything is written. int8 calibration data is ``[T, N, ...]``, fed one step at a time."""
    neurons = streamable_neurons(model, opts.lowering)
    io = stream_io(opts, shape[0])
    ctx = ExportContext(model=model, neurons=neurons, input_shape=shape, dynamic_batch=not opts.static_batch,
                        dtype=opts.dtype, options=opts, spec=spec, io=io)
    if opts.int8 is not None:
        from dataclasses import replace

        ctx.options = replace(opts, int8=opts.int8.with_calibration(shape, 1, spec=spec))
    step_module(ctx)
    return ctx


def step_module(ctx: ExportContext) -> tuple:
    """The streaming module of an export context (built once per export) and its example step."""
    if "step_module" not in ctx.cache:
        step = ctx.example_input(shape=(1, *ctx.input_shape[1:]))[0]
        model = ctx.model
        if ctx.dtype != torch.float32:  # --precision: weights and activations in that dtype, membranes float32
            model = copy.deepcopy(model).to(ctx.dtype)
        readout = (ctx.io or {}).get("readout", "none")
        sm = build_streaming_module(model, step, ctx.options.lowering or "functional", readout, ctx.input_shape[0])
        ctx.cache["step_module"] = (sm, step)
    return ctx.cache["step_module"]


def states(sm: StreamingModule) -> list[dict]:
    """The manifest's ``states``: one record per membrane, then the readout's window (``readout``: its kind)."""
    records = [{"input": state_input_name(i), "output": state_output_name(i), "shape": list(s), "dtype": "float32",
                "initial": "zeros" if initial_membrane(n) == 0.0 else "fill", "initial_value": initial_membrane(n),
                "neuron": i, "layer": n.name}
               for i, (n, s) in enumerate(zip(sm.neurons, sm.state_shapes))]
    if sm.readout_shape is not None:
        i = len(records)
        records.append({"input": state_input_name(i), "output": state_output_name(i), "shape": list(sm.readout_shape),
                        "dtype": "float32", "initial": "zeros", "initial_value": 0.0, "readout": sm.readout_kind})
    return records


def manifest_fields(ctx: ExportContext) -> Dict[str, Any]:
    """What a streaming export adds to the manifest (the one place ``states`` live)."""
    from ..io_adapter import artifact_shape

    sm, _ = step_module(ctx)
    ins, outs = io_names(len(sm.all_state_shapes))
    # input_shape: the whole sequence as the client holds it (the multi-step export's input with the same flags)
    return {"lowering": f"streaming-{sm.lowering}", "inputs": ins, "outputs": outs,
            "input_shape": list(artifact_shape(ctx.input_shape, ctx.io)),
            "step_shape": list(ctx.input_shape[1:]), "states": states(sm)}


def write_streaming_torchscript(ctx: ExportContext, path: Path) -> dict:
    sm, step = step_module(ctx)
    export_torchscript(sm, step, path)
    return {"format": "torchscript", "path": path.name, "mode": MODE, "lowering": sm.lowering,
            "neuron_math": "scripted dsr_deploy.functional.if_step/lif_step" if sm.lowering == "functional"
            else "torch.ops.dsr.if_spike/lif_spike (load libdsr_torch_ops.so)"}


def write_streaming_onnx(ctx: ExportContext, path: Path) -> dict:
    sm, step = step_module(ctx)
    export_onnx(sm, step, path, dynamic_batch=ctx.dynamic_batch)
    extra: Dict[str, Any] = {}
    if ctx.options.precision == "int8":  # the Q/DQ step model, calibrated one step at a time
        from .int8.rewrite import quantize_file

        extra = quantize_file(path, ctx, states=[(s["input"], s["output"], s["shape"]) for s in states(sm)])
    return {**extra, "format": "onnx", "path": path.name, "mode": MODE, "custom_domain": ONNX_DOMAIN,
            "custom_ops": sorted({ALL_STEP_OPS[n.kind] for n in sm.neurons}),
            "fallback": "model-local functions of standard ops"}


def register() -> None:
    """Register the streaming mode and its writers (``dsr-deploy export --mode streaming``)."""
    register_mode(MODE, prepare, manifest_fields=manifest_fields)
    register_format("torchscript", "model.ts", write_streaming_torchscript, mode=MODE,
                    description="TorchScript single step (x_t, v_in_i) -> (y_t, v_out_i)")
    register_format("onnx", "model.onnx", write_streaming_onnx, mode=MODE,
                    description="ONNX single step: DSRIFStep/DSRLIFStep + function fallback")
