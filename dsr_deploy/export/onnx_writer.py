"""ONNX writer: one ``dsr`` node per neuron layer plus its function fallback, or standard ops only.

``torch.onnx.export`` (dynamo) of the ``"op"`` inference copy: under export each inference neuron emits one
``dsr::DSRIFSpike`` / ``dsr::DSRLIFSpike`` node (``torch.onnx.ops.symbolic``; symbolic dims kept). The exporter
inlines model-local functions, so the FunctionProtos of :mod:`.onnx_functions` are appended afterwards.

Lowerings:

* ``function`` (default): custom nodes + FunctionProtos. A runtime with the dsr kernels runs them; a stock
  ONNX Runtime inlines the standard-op bodies.
* ``portable``: the bodies inlined into the graph: standard ops only, no ``dsr`` domain.

Function body: ``scan`` (dynamic T) or ``unrolled`` (fixed T). The default is ``scan``, picked by
measurement (benchmarks/results/bench_export.md, ONNX Runtime CPU): on a PreAct-ResNet-18-style net it was the
fastest or within noise of the fastest at T=4 and T=20, batch 1 and 8 (at T=20 about 0.7x the unrolled body's
time and 0.2-0.5x the plain ``torch.onnx.export``'s), its session creation does not grow with T, and only it
keeps T dynamic.
Default opset 18: the opset torch.onnx.export implements natively (17 goes through a version conversion);
``--precision bfloat16`` defaults to opset 22 (Conv has bfloat16 only from 22) and exports without the exporter's
optimiser (its BatchNorm folding writes the folded weights as float32, which a bfloat16 Conv refuses): BatchNorm
stays a bfloat16 BatchNormalization node (:func:`bfloat16_export_settings`).
Dynamic batch by default (``--static-batch`` fixes it), dynamic T with the scan body.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path
from typing import Any, Dict, List

import onnx
import torch
from onnx import helper

from .. import __version__
from ..convert import ALL_OP_TYPES, ONNX_DOMAIN, inference_copy
from ..errors import UserError, first_line
from ..io import atomic_path
from ..onnx_graph import dsr_nodes as find_dsr_nodes
from .base import CURRENT_PREFIX, INPUT_NAME, LAYOUT, PROBE_PREFIX, ExportContext
from .onnx_functions import function_proto, onnx_elem_type, scope_prefix
from .onnx_neurons import META_INDEX as _META_INDEX
from .onnx_neurons import META_LAYER_INPUTS as _META_LAYER_INPUTS
from .onnx_neurons import META_LAYER_OUTPUTS as _META_LAYER_OUTPUTS
from .onnx_neurons import channels_last_map, neuron_sites, probe_nodes

_KIND_OF_OP = {op: kind for kind, op in ALL_OP_TYPES.items()}

DEFAULT_OPSET = 18
BFLOAT16_OPSET = 22  # the first opset whose Conv (and ConvTranspose) takes bfloat16
DEFAULT_BODY = "scan"
_DSR_OP_TYPES = set(ALL_OP_TYPES.values())


def quiet_export():
    """torch.onnx.export prints progress lines; keep the CLI output ours."""
    import logging

    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    for name in ("torch.onnx", "torch.export", "torch._export", "onnxscript"):
        logger = logging.getLogger(name)
        old = logger.level
        logger.setLevel(logging.ERROR)
        stack.callback(logger.setLevel, old)
    return stack


def dsr_nodes(model: onnx.ModelProto) -> List[onnx.NodeProto]:
    return find_dsr_nodes(model, _DSR_OP_TYPES)  # the neuron (whole-sequence) nodes: dsr_deploy.onnx_graph


def bfloat16_export_settings(model: torch.nn.Module, dtype: torch.dtype, opset=None) -> tuple:
    """(opset, optimize) of a torch.onnx.export at ``dtype``: bfloat16 defaults to opset 22 (an explicit older one
    is refused for a model with convolutions: ONNX Conv has no bfloat16 before 22) and turns the exporter's
    optimiser off (its BatchNorm folding writes float32 weights beside bfloat16 activations)."""
    if dtype != torch.bfloat16:
        return int(opset or DEFAULT_OPSET), True
    opset = int(opset or BFLOAT16_OPSET)
    convs = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d,
             torch.nn.ConvTranspose3d)
    if opset < BFLOAT16_OPSET and any(isinstance(m, convs) for m in model.modules()):
        raise UserError(f"--precision bfloat16 with convolutions needs --opset {BFLOAT16_OPSET} or later (ONNX Conv "
                        f"has no bfloat16 before opset {BFLOAT16_OPSET}); got --opset {opset}")
    return opset, False


def export_onnx_model(ctx: ExportContext) -> onnx.ModelProto:
    """Export ``ctx.model`` to an in-memory ModelProto per ``ctx.options`` (validated by
    :meth:`~dsr_deploy.export.options.ExportOptions.validate`); checked with full_check."""
    opset, optimize = bfloat16_export_settings(ctx.model, ctx.dtype, ctx.options.opset)
    lowering = ctx.options.lowering or "function"
    body = ctx.options.function_body or DEFAULT_BODY
    dynamic_T = body == "scan" and ctx.time_dim is not None and not ctx.fixed_T
    inf = inference_copy(ctx.model, "op")
    if ctx.dtype != torch.float32:  # --precision: weights and activations in that dtype, membranes float32
        inf = inf.to(ctx.dtype)
    for m in inf.modules():  # tag each node with its layer so probes and tools can map it back
        if hasattr(m, "onnx_attrs"):
            m.onnx_meta = {_META_INDEX: str(m.index), "dsr.layer_name": m.layer_name}
    dims: Dict[int, str] = ctx.dynamic_dims(dynamic_T)  # T at dim 0 (1 for a [B, T] layout), batch at 1 (0)
    x = ctx.example_input(shape=ctx.trace_shape(dynamic_T))
    try:
        with quiet_export():
            prog = torch.onnx.export(
                inf, (x,), input_names=[INPUT_NAME], output_names=ctx.output_names, opset_version=opset,
                dynamo=True, dynamic_shapes=(dims,) if dims else None, optimize=optimize, verbose=False,
            )
    except Exception as exc:  # the exporter's messages are long; the first line says what failed
        first = first_line(exc)
        raise UserError(f"ONNX export failed: {first}") from exc
    model = prog.model_proto
    kinds = postprocess(model, ctx, lowering=lowering, body=body, opset=opset, dynamic_T=dynamic_T)
    if ctx.options.precision == "int8" and kinds:
        model = quantized(model, ctx)
    if lowering == "portable":
        model = portable(model)
    elif not kinds:
        raise UserError("ONNX export produced no dsr node (was the inference copy traced?)")
    onnx.checker.check_model(model, full_check=True)
    return model


def quantized(model: onnx.ModelProto, ctx: ExportContext) -> onnx.ModelProto:
    """``--precision int8``: the Q/DQ model (:mod:`.int8`) with the export's int8 options (calibration checked)."""
    from .int8.rewrite import quantize

    q, _ = quantize(model, ctx.options.int8, ctx.batch_dim)
    return q


def postprocess(model: onnx.ModelProto, ctx: ExportContext, *, lowering: str, body: str, opset: int,
                dynamic_T: bool) -> List[str]:
    """Name the dsr nodes, append their FunctionProtos, write metadata. Returns the neuron kinds present."""
    kinds = []
    layer_outputs = []
    layer_inputs = []
    named = set()
    for call, node in enumerate(dsr_nodes(model)):
        meta = {p.key: p.value for p in node.metadata_props}
        idx = meta.get(_META_INDEX, str(call))
        layer_outputs.append([int(idx), node.output[0]])
        layer_inputs.append([int(idx), node.input[0]])
        # dsr_layer_<i>; a neuron module called twice gets _call<k> on its later nodes.
        node.name = f"dsr_layer_{idx}" if f"dsr_layer_{idx}" not in named else f"dsr_layer_{idx}_call{call}"
        named.add(node.name)
        kind = _KIND_OF_OP.get(node.op_type, "lif")
        if kind not in kinds:
            kinds.append(kind)
    prefix = scope_prefix(model.graph)  # function names never collide with the graph's (onnx-tensorrt < 10.8)
    elem = onnx_elem_type(ctx.dtype)
    for kind in kinds:
        model.functions.append(function_proto(kind, body, opset, T=ctx.T, elem=elem, prefix=prefix))
    if not any(o.domain == ONNX_DOMAIN for o in model.opset_import) and kinds:
        model.opset_import.append(helper.make_opsetid(ONNX_DOMAIN, 1))
    meta = {
        "dsr_deploy.version": __version__,
        "dsr_deploy.T": str(ctx.T),
        "dsr_deploy.neurons": str(len(ctx.neurons)),
        "dsr_deploy.neuron_types": ",".join(n.op_type for n in ctx.neurons),
        "dsr_deploy.lowering": lowering,
        "dsr_deploy.function_body": body,
        "dsr_deploy.input_layout": LAYOUT if ctx.io is None else ctx.input_layout,
        "dsr_deploy.dynamic_T": str(dynamic_T).lower(),
        "dsr_deploy.dynamic_batch": str(ctx.dynamic_batch).lower(),
        # [layer index, tensor name] of each neuron call: the tensors keep their names when a portable
        # lowering inlines the bodies, so verify can expose them either way.
        _META_LAYER_OUTPUTS: json.dumps(layer_outputs),
        # ... and of each call's input: verify cuts every neuron out of the file (onnx_neurons) to run it alone.
        _META_LAYER_INPUTS: json.dumps(layer_inputs),
    }
    if ctx.io is not None:
        meta["dsr_deploy.io"] = json.dumps(ctx.io, sort_keys=True)
    if ctx.spec:
        meta["dsr_deploy.model"] = ctx.spec
    del model.metadata_props[:]
    for k, v in meta.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    model.producer_name = "dsr-deploy"
    model.producer_version = __version__
    return kinds


def portable(model: onnx.ModelProto) -> onnx.ModelProto:
    """Inline the dsr functions: standard ops only (the ``portable`` lowering)."""
    import onnx.inliner

    model = onnx.inliner.inline_local_functions(model)
    del model.functions[:]
    keep = [o for o in model.opset_import if o.domain != ONNX_DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    if dsr_nodes(model):
        raise RuntimeError("portable lowering left a dsr node in the graph")
    return model


def probe_targets(model: onnx.ModelProto) -> List[tuple]:
    """``[(layer index, tensor name)]`` of every neuron call, in call order (dsr nodes, or the recorded
    tensors of a portable model)."""
    return [(s.layer, s.output) for s in neuron_sites(model)]


def add_probe_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose every neuron-call output is also a graph output ``spikes_<k>`` (k = call
    order), and, where the file records it, the call's input ``currents_<k>``, through Identity nodes. The rest
    of the graph is unchanged."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    sites = neuron_sites(probe)
    if not sites:
        raise ValueError("the model records no neuron layer outputs (not written by dsr-deploy?)")
    probe.graph.node.extend(probe_nodes(probe))  # a channels-last int8 file keeps them out of the graph
    channels_last = channels_last_map(probe)
    produced = {o for n in probe.graph.node for o in n.output} | {i.name for i in probe.graph.input}
    exposed = []
    for k, site in enumerate(sites):
        if site.output not in produced:
            raise ValueError(f"neuron output {site.output!r} is not produced by any node of the graph")
        exposed.append((site.output, f"{PROBE_PREFIX}{k}"))
        if site.input is not None and site.input in produced:
            exposed.append((site.input, f"{CURRENT_PREFIX}{k}"))
    elem = probe.graph.input[0].type.tensor_type.elem_type if probe.graph.input else onnx.TensorProto.FLOAT
    for tensor, name in exposed:  # in the original layout
        probe.graph.node.append(helper.make_node("Transpose", [tensor], [name], name=f"probe_{name}",
                                                 perm=channels_last[tensor]) if tensor in channels_last else
                                helper.make_node("Identity", [tensor], [name], name=f"probe_{name}"))
        probe.graph.output.append(helper.make_tensor_value_info(name, elem, None))
    return probe


def write_onnx(ctx: ExportContext, path: Path) -> Dict[str, Any]:
    model = export_onnx_model(ctx)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
    meta = {p.key: p.value for p in model.metadata_props}
    extra = {}
    if "dsr_deploy.int8" in meta:
        extra = {"precision": "int8", "quantization": json.loads(meta["dsr_deploy.int8"])}
    return {
        **extra,
        "format": "onnx",
        "path": Path(path).name,
        "opset": next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        "lowering": meta["dsr_deploy.lowering"],
        "function_body": meta["dsr_deploy.function_body"],
        "dynamic_T": meta["dsr_deploy.dynamic_T"] == "true",
        "dynamic_batch": meta["dsr_deploy.dynamic_batch"] == "true",
        "dsr_nodes": len(dsr_nodes(model)),
        "functions": [f"{f.domain}::{f.name}" for f in model.functions],
        "nodes": len(model.graph.node),
    }
