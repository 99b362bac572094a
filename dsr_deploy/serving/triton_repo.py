"""``dsr-deploy triton-repo``: a Triton Inference Server model repository for exported DSR models.

For each ONNX model the repository holds ``<name>_onnx/1/model.onnx`` (onnxruntime backend) and, when a
TensorRT plan is given, ``<name>_trt/1/model.plan`` (``tensorrt_plan``), each with its ``config.pbtxt``, and a
README on starting tritonserver with the dsr plugin libraries.

What the repository's ONNX model changes, and why (the math is untouched; only graph edges are added):

* multi-step models ``input [T, B, ...] -> output [T, B, ...]``: Triton batches along the first dimension, so
  the repository's model takes ``input [B, T, ...]`` and returns ``output [B, T, ...]`` (a Transpose at each
  edge). That makes dynamic batching possible; the config says so.
* streaming models ``x_t, v_in_i -> y_t, v_out_i``: Triton keeps the membranes as implicit state
  (``sequence_batching.state``, zero initial state) and feeds the sequence controls START and READY; the model
  gets those two bool inputs: START zeroes the incoming membranes, READY=false keeps a slot's membranes.

A plan cannot be inspected without TensorRT; its config is written from the ONNX model it was built from
(the export's original model: its edges are not rewritten, so a multi-step plan gets ``max_batch_size: 0``
with explicit dims, and a streaming plan's sequence batcher uses the zero initial state without controls).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from ..errors import UserError

#: ``--instance-kind`` -> Triton's instance group kind of the onnxruntime models (GPU: the CUDA execution provider).
INSTANCE_KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}

STREAM_INPUT, STREAM_OUTPUT = "x_t", "y_t"
START, READY = "START", "READY"
MULTI_INPUT, MULTI_OUTPUT = "input", "output"

_ONNX_TO_TRITON = {
    1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16", 5: "TYPE_INT16", 6: "TYPE_INT32",
    7: "TYPE_INT64", 9: "TYPE_BOOL", 10: "TYPE_FP16", 11: "TYPE_FP64", 12: "TYPE_UINT32", 13: "TYPE_UINT64",
    16: "TYPE_BF16",
}
PLAN_SUFFIXES = (".plan", ".engine", ".trt")


@dataclass
class Edge:
    name: str
    elem_type: int
    dims: list  # int or str (symbolic) per dimension

    @property
    def triton_type(self) -> str:
        if self.elem_type not in _ONNX_TO_TRITON:
            raise UserError(f"tensor {self.name}: ONNX element type {self.elem_type} has no Triton equivalent")
        return _ONNX_TO_TRITON[self.elem_type]


@dataclass
class ModelSource:
    """One model to put in the repository: an ONNX file, optionally with a TensorRT plan built from it."""

    name: str
    onnx: Path
    plan: Optional[Path] = None
    manifest: dict = field(default_factory=dict)


def _edges(values) -> list[Edge]:
    out = []
    for v in values:
        tt = v.type.tensor_type
        dims = [d.dim_param if d.HasField("dim_param") else (d.dim_value if d.HasField("dim_value") else "?")
                for d in tt.shape.dim]
        out.append(Edge(v.name, tt.elem_type, dims))
    return out


def is_streaming(inputs: Sequence[Edge]) -> bool:
    names = {e.name for e in inputs}
    return STREAM_INPUT in names and "v_in_0" in names


def _state_pairs(inputs: Sequence[Edge], outputs: Sequence[Edge]) -> list[tuple[Edge, Edge]]:
    ins = {e.name: e for e in inputs}
    outs = {e.name: e for e in outputs}
    pairs, i = [], 0
    while f"v_in_{i}" in ins:
        if f"v_out_{i}" not in outs:
            raise UserError(f"streaming model has v_in_{i} but no v_out_{i}")
        pairs.append((ins[f"v_in_{i}"], outs[f"v_out_{i}"]))
        i += 1
    return pairs


def _sanitize(name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._-")
    return name or "model"


# ---------------------------------------------------------------------------------------------------------
# Collecting the artifacts.


def collect_sources(artifacts: Sequence[Path | str], name: Optional[str] = None) -> list[ModelSource]:
    """Export folders (manifest.json), ONNX files and plan files -> models. A plan belongs to the ONNX model
    of the same export folder, or, given as a file, to the single ONNX model of the command."""
    sources: list[ModelSource] = []
    loose_plans: list[Path] = []
    for a in artifacts:
        p = Path(a)
        if not p.exists():
            raise UserError(f"{p} does not exist")
        if p.is_dir():
            from ..manifest import read_manifest

            manifest = read_manifest(p)  # validated; every path inside the folder
            mpath = manifest.where
            arts = manifest.artifacts
            onnx_paths = [manifest.path_of(x) for x in arts if x["format"].lower() == "onnx"]
            plan_paths = [manifest.path_of(x) for x in arts if x["path"].endswith(PLAN_SUFFIXES)
                          or x["format"].lower() in ("tensorrt", "tensorrt_plan", "plan")]
            if not onnx_paths and (p / "model.onnx").is_file():
                onnx_paths = [p / "model.onnx"]
            if not onnx_paths:
                raise UserError(f"export folder {p} has no ONNX model (export with --format onnx)")
            for q in onnx_paths + plan_paths:
                if not q.is_file():
                    raise UserError(f"{q} is listed in {mpath} but missing")
            sources.append(ModelSource(_sanitize(p.resolve().name), onnx_paths[0],
                                       plan_paths[0] if plan_paths else None, manifest))
        elif p.suffix == ".onnx":
            sources.append(ModelSource(_sanitize(p.stem if p.stem != "model" else p.resolve().parent.name), p))
        elif p.suffix in PLAN_SUFFIXES:
            loose_plans.append(p)
        else:
            raise UserError(f"{p}: not an export folder, an .onnx file or a TensorRT plan ({', '.join(PLAN_SUFFIXES)})")
    if loose_plans:
        if len(sources) != 1 or len(loose_plans) != 1:
            raise UserError("a TensorRT plan file needs exactly one ONNX model (the one it was built from) beside it "
                            "on the command line; its inputs and outputs are read from that model")
        sources[0].plan = loose_plans[0]
    if not sources:
        raise UserError("no model given: pass an export folder or an .onnx file")
    if name:
        if len(sources) != 1:
            raise UserError("--name applies to a single model")
        sources[0].name = _sanitize(name)
    names = [s.name for s in sources]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise UserError(f"two models would be named {', '.join(sorted(dup))}; pass them one at a time with --name")
    return sources


# ---------------------------------------------------------------------------------------------------------
# ONNX edge rewrites.


def _rename_uses(graph, old: str, new: str) -> None:
    for node in graph.node:
        for i, n in enumerate(node.input):
            if n == old:
                node.input[i] = new


def _rename_producer(graph, old: str, new: str) -> None:
    for node in graph.node:
        for i, n in enumerate(node.output):
            if n == old:
                node.output[i] = new
    _rename_uses(graph, old, new)


def batch_first_multistep(model, output_spikes: Optional[bool] = None) -> bool:
    """``input [T, B, ...] -> output [T, B, ...]`` becomes ``[B, T, ...] -> [B, T, ...]``; False if not that.
    ``output_spikes`` (from the manifest's ``io``): whether the output is a ``[T, B, ...]`` spike train (False:
    logits ``[B, ...]``, left as they are); None: guessed from the dims."""
    from onnx import helper

    g = model.graph
    ins, outs = _edges(g.input), _edges(g.output)
    if len(ins) != 1 or len(outs) != 1 or len(ins[0].dims) < 2:
        return False
    x, y = ins[0], outs[0]
    rank_x, rank_y = len(x.dims), len(y.dims)
    inner_x, inner_y = x.name + "__tb", y.name + "__tb"
    _rename_uses(g, x.name, inner_x)
    perm_x = [1, 0] + list(range(2, rank_x))
    new_nodes = [helper.make_node("Transpose", [x.name], [inner_x], perm=perm_x, name="triton_batch_first_in")]
    # Output: transposed back when it keeps [T, B, ...] (its first two dims are the input's).
    transpose_out = rank_y >= 2 and y.dims[:2] == x.dims[:2] if output_spikes is None else output_spikes
    if transpose_out:
        _rename_producer(g, y.name, inner_y)
        perm_y = [1, 0] + list(range(2, rank_y))
        tail = [helper.make_node("Transpose", [inner_y], [y.name], perm=perm_y, name="triton_batch_first_out")]
    else:
        tail = []
    nodes = new_nodes + list(g.node) + tail
    del g.node[:]
    g.node.extend(nodes)
    _set_dims(g.input[0], [x.dims[1], x.dims[0], *x.dims[2:]])
    if transpose_out:
        _set_dims(g.output[0], [y.dims[1], y.dims[0], *y.dims[2:]])
    return True


def _set_dims(value_info, dims) -> None:
    shape = value_info.type.tensor_type.shape
    del shape.dim[:]
    for d in dims:
        nd = shape.dim.add()
        if isinstance(d, int):
            nd.dim_value = d
        elif d != "?":
            nd.dim_param = d


def add_sequence_controls(model, batched: bool = True) -> None:
    """Streaming model: add bool inputs START [B, 1] and READY [B, 1] (``[1]`` without batching: Triton's
    onnxruntime backend then wants a control input of exactly ``[1]``, applied to the whole request).

    START=true replaces the incoming membranes by zeros (a new sequence in a reused slot); READY=false returns
    the incoming membranes unchanged (an empty batch slot must not advance a state)."""
    from onnx import TensorProto, helper

    g = model.graph
    ins, outs = _edges(g.input), _edges(g.output)
    pairs = _state_pairs(ins, outs)
    batch = next(e for e in ins if e.name == STREAM_INPUT).dims[0]
    nodes = [helper.make_node("Constant", [], ["triton_zero"], value=helper.make_tensor("z", TensorProto.FLOAT, [], [0.0]))]
    tail = []
    for i, (vin, vout) in enumerate(pairs):
        rank = len(vin.dims)
        shape_name = f"triton_ctl_shape_{i}"
        nodes.append(helper.make_node("Constant", [], [shape_name],
                                      value=helper.make_tensor(shape_name, TensorProto.INT64, [rank],
                                                               [-1] + [1] * (rank - 1))))
        nodes.append(helper.make_node("Reshape", [START, shape_name], [f"triton_start_{i}"]))
        nodes.append(helper.make_node("Reshape", [READY, shape_name], [f"triton_ready_{i}"]))
        used = f"{vin.name}__seq"
        _rename_uses(g, vin.name, used)
        nodes.append(helper.make_node("Where", [f"triton_start_{i}", "triton_zero", vin.name], [used]))
        stepped = f"{vout.name}__step"
        _rename_producer(g, vout.name, stepped)
        tail.append(helper.make_node("Where", [f"triton_ready_{i}", stepped, used], [vout.name]))
    # Keep topological order: controls first, original graph, then the READY selects.
    ordered = nodes + list(g.node) + tail
    del g.node[:]
    g.node.extend(ordered)
    for ctl in (START, READY):
        g.input.append(helper.make_tensor_value_info(ctl, TensorProto.BOOL, [batch, 1] if batched else [1]))


# ---------------------------------------------------------------------------------------------------------
# config.pbtxt.


def _dims(dims, batched: bool) -> str:
    ds = dims[1:] if batched else dims
    return "[ " + ", ".join(str(d) if isinstance(d, int) and d > 0 else "-1" for d in ds) + " ]"


def _io_block(kind: str, edges: Sequence[Edge], batched: bool) -> str:
    items = [f'  {{\n    name: "{e.name}"\n    data_type: {e.triton_type}\n    dims: {_dims(e.dims, batched)}\n  }}'
             for e in edges]
    return f"{kind} [\n" + ",\n".join(items) + "\n]\n"


def make_config(name: str, platform: str, inputs: Sequence[Edge], outputs: Sequence[Edge], max_batch: int,
                streaming: bool, controls: bool, instance_kind: str, queue_delay_us: int = 100,
                idle_us: int = 60_000_000, ops_library: Optional[str] = None) -> str:
    """The text of a config.pbtxt (parsable as Triton's ``inference.ModelConfig``)."""
    batched = max_batch > 0
    lines = [f'name: "{name}"']
    lines.append('backend: "onnxruntime"' if platform == "onnxruntime_onnx" else f'platform: "{platform}"')
    lines.append(f"max_batch_size: {max_batch}")
    text = "\n".join(lines) + "\n"
    if streaming:
        pairs = _state_pairs(inputs, outputs)
        state_names = {e.name for p in pairs for e in p}
        text += _io_block("input", [e for e in inputs if e.name not in state_names | {START, READY}], batched)
        text += _io_block("output", [e for e in outputs if e.name not in state_names], batched)
        seq = ["sequence_batching {", f"  max_sequence_idle_microseconds: {idle_us}"]
        seq.append(f"  direct {{\n    max_queue_delay_microseconds: {queue_delay_us}\n  }}" if batched else "  direct { }")
        if controls:
            seq.append("  control_input [")
            seq.append(",\n".join(
                f'    {{\n      name: "{ctl}"\n      control [\n        {{\n          kind: {kind}\n'
                f"          bool_false_true: [ false, true ]\n        }}\n      ]\n    }}"
                for ctl, kind in ((START, "CONTROL_SEQUENCE_START"), (READY, "CONTROL_SEQUENCE_READY"))))
            seq.append("  ]")
        seq.append("  state [")
        seq.append(",\n".join(
            f'    {{\n      input_name: "{vin.name}"\n      output_name: "{vout.name}"\n'
            f"      data_type: {vin.triton_type}\n      dims: {_dims(vin.dims, batched)}\n"
            f"      initial_state {{\n        data_type: {vin.triton_type}\n        dims: {_dims(vin.dims, batched)}\n"
            f'        zero_data: true\n        name: "zero_membrane"\n      }}\n    }}'
            for vin, vout in pairs))
        seq.append("  ]")
        seq.append("}")
        text += "\n".join(seq) + "\n"
    else:
        text += _io_block("input", inputs, batched)
        text += _io_block("output", outputs, batched)
        if batched:
            text += f"dynamic_batching {{\n  max_queue_delay_microseconds: {queue_delay_us}\n}}\n"
    text += f"instance_group [\n  {{\n    kind: {instance_kind}\n    count: 1\n  }}\n]\n"
    if ops_library:
        text += f'model_operations {{\n  op_library_filename: [ "{ops_library}" ]\n}}\n'
    return text


# ---------------------------------------------------------------------------------------------------------
# The repository.

README = """# Triton model repository (written by dsr-deploy {version})

Models:
{models}

## Start Triton

    docker run --gpus all --rm -p8000:8000 -p8001:8001 -p8002:8002 \\
        -v $PWD:/models -v ~/.cache/dsr-deploy/plugins/<build>:/dsr_lib \\
        nvcr.io/nvidia/tritonserver:<yy.mm>-py3 \\
        tritonserver --model-repository=/models {plugin_flag}

TensorRT plans that contain dsr plugin layers need the plugin library loaded into the server process; Triton
has no per-model plugin field. Either

    LD_PRELOAD=/dsr_lib/libdsr_trt_plugin.so tritonserver --model-repository=/models

or

    tritonserver --model-repository=/models --backend-config=tensorrt,plugins="/dsr_lib/libdsr_trt_plugin.so"

Use `libdsr_trt_plugin.so` (static registration, registers on dlopen), not `libdsr_trt_plugin_dynamic.so`
(that one is for IPluginRegistry::loadLibrary / trtexec --dynamicPlugins). Build it with `dsr-deploy plugins
build` against the TensorRT version of the container.

The ONNX models run on the stock onnxruntime backend without any library: each dsr custom node
(DSRIFSpike, DSRLIFSpike, DSRIFStep, DSRLIFStep) carries a model-local function of standard ONNX ops. To use
the fused kernels instead, pass `--ort-ops-library /dsr_lib/libdsr_ort_ops.so` to `dsr-deploy triton-repo`
(it writes `model_operations {{ op_library_filename: ... }}` into the onnxruntime configs).

{ort_section}

## Tensors

Multi-step models: Triton batches along the first dimension, so the repository's ONNX model takes
`input [B, T, ...]` and returns `output [B, T, ...]` (batch first; the export's model is [T, B, ...] and a
Transpose at each edge converts). A TensorRT plan is used as built; when its batch is not the first dimension
its config has `max_batch_size: 0` (no dynamic batching; send whole [T, B, ...] tensors).

Streaming models (one time step per request): send `x_t` with Triton's sequence parameters
(`sequence_id`, `sequence_start`, `sequence_end`, e.g. tritonclient's `infer(..., sequence_id=...,
sequence_start=True)`); Triton keeps each sequence's membranes (`v_in_i` / `v_out_i`) as implicit state,
zero at the start of a sequence; the response holds `y_t`. Sequences idle for longer than
`max_sequence_idle_microseconds` are released.
"""


def write_repository(artifacts: Sequence[Path | str], out: Path | str, max_batch: int = 8,
                     name: Optional[str] = None, force: bool = False,
                     ort_ops_library: Optional[str] = None, queue_delay_us: int = 100,
                     instance_kind: str = "cpu") -> dict:
    """Write the model repository into ``out`` (all or nothing). Returns a summary of what was written."""
    import onnx

    from .. import __version__
    from ..io import atomic_dir

    if max_batch < 0:
        raise UserError(f"--max-batch must be >= 0, got {max_batch}")
    if instance_kind not in INSTANCE_KINDS:
        raise UserError(f"--instance-kind must be one of {', '.join(INSTANCE_KINDS)}, got {instance_kind!r}")
    kind = INSTANCE_KINDS[instance_kind]
    sources = collect_sources(artifacts, name)
    summary = {"repository": str(out), "models": []}
    with atomic_dir(Path(out), force=force) as tmp:
        for src in sources:
            try:
                model = onnx.load(str(src.onnx))
            except Exception as exc:
                raise UserError(f"{src.onnx} is not a readable ONNX model: {exc}") from exc
            ins0, outs0 = _edges(model.graph.input), _edges(model.graph.output)
            initializers = {i.name for i in model.graph.initializer}
            ins0 = [e for e in ins0 if e.name not in initializers]
            streaming = is_streaming(ins0)
            batched = max_batch > 0
            note = ""
            if batched:
                _require_dynamic_batch(src, ins0, streaming)
            if streaming:
                add_sequence_controls(model, batched)
                note = "streaming: sequence batching, implicit membrane state, START/READY"
            elif batched:
                io = (src.manifest or {}).get("io")
                io = io if isinstance(io, dict) else {}
                if io.get("input_layout") in ("BT", "static"):  # export options: batch first already
                    note = (f"model used as exported (batch first: {io['input_layout']} input, "
                            f"{io.get('output', 'spikes')} output)")
                elif io and batch_first_multistep(model, output_spikes=io.get("output") != "logits"):
                    note = f"multi-step: input batch first [B, T, ...], {io.get('output')} output"
                elif _batch_first(ins0):
                    note = "model used as exported (batch first)"
                elif batch_first_multistep(model):
                    note = "multi-step: input/output batch first [B, T, ...]"
                else:
                    note = "model used as exported (batch assumed first)"
            ins, outs = _edges(model.graph.input), _edges(model.graph.output)
            ins = [e for e in ins if e.name not in initializers]
            onnx.checker.check_model(model)
            mname = f"{src.name}_onnx"
            d = tmp / mname / "1"
            d.mkdir(parents=True)
            onnx.save(model, str(d / "model.onnx"))
            (tmp / mname / "config.pbtxt").write_text(make_config(
                mname, "onnxruntime_onnx", ins, outs, max_batch, streaming, controls=True,
                instance_kind=kind, queue_delay_us=queue_delay_us, ops_library=ort_ops_library))
            summary["models"].append({"name": mname, "backend": "onnxruntime", "streaming": streaming,
                                      "max_batch_size": max_batch, "instance_kind": kind, "note": note})
            if src.plan is not None:
                pname = f"{src.name}_trt"
                plan_batched = batched and (streaming or _batch_first(ins0)) and _first_dim_dynamic(ins0, streaming)
                pmax = max_batch if plan_batched else 0
                pd = tmp / pname / "1"
                pd.mkdir(parents=True)
                (pd / "model.plan").write_bytes(src.plan.read_bytes())
                (tmp / pname / "config.pbtxt").write_text(make_config(
                    pname, "tensorrt_plan", ins0, outs0, pmax, streaming, controls=False,
                    instance_kind="KIND_GPU", queue_delay_us=queue_delay_us))
                summary["models"].append({"name": pname, "backend": "tensorrt_plan", "streaming": streaming,
                                          "max_batch_size": pmax,
                                          "note": "" if plan_batched else "batch not first: no dynamic batching"})
        listing = "\n".join(f"- `{m['name']}` ({m['backend']}, max_batch_size {m['max_batch_size']}"
                            + (f"; {m['note']}" if m["note"] else "") + ")" for m in summary["models"])
        has_plan = any(m["backend"] == "tensorrt_plan" for m in summary["models"])
        flag = '--backend-config=tensorrt,plugins="/dsr_lib/libdsr_trt_plugin.so"' if has_plan else ""
        (tmp / "README.md").write_text(README.format(version=__version__, models=listing, plugin_flag=flag,
                                                     ort_section=_ort_section(kind, ort_ops_library)))
    return summary


def _first_dim_dynamic(inputs: Sequence[Edge], streaming: bool) -> bool:
    """Whether the dimension Triton batches along is dynamic in every input that is batched."""
    edges = [e for e in inputs if not streaming or e.name == STREAM_INPUT or e.name.startswith("v_in_")]
    if not streaming and len(edges) == 1 and not _batch_first(edges) and len(edges[0].dims) >= 2:
        return not (isinstance(edges[0].dims[1], int) and edges[0].dims[1] > 0)  # [T, B, ...]: B becomes first
    return all(e.dims and not (isinstance(e.dims[0], int) and e.dims[0] > 0) for e in edges)


def _require_dynamic_batch(src: ModelSource, inputs: Sequence[Edge], streaming: bool) -> None:
    """With max_batch_size > 0 Triton's onnxruntime backend needs the batch (first) dimension to be -1; a
    ``--static-batch`` export has it fixed, and its graph may bake that size into reshapes, so it is refused."""
    if not _first_dim_dynamic(inputs, streaming):
        raise UserError(f"{src.onnx}: the batch dimension is fixed (exported with --static-batch?); Triton needs it "
                        "dynamic for batching: re-export without --static-batch, or pass --max-batch 0")


def _ort_section(kind: str, ops_library: Optional[str]) -> str:
    lines = [f"The onnxruntime models run with `instance_group {{ kind: {kind} }}`"
             + (" (the CUDA execution provider: Triton's onnxruntime backend uses it for GPU instances)."
                if kind == "KIND_GPU" else " (the CPU execution provider).")]
    if ops_library:
        lines.append(f"""
They load the dsr custom-op library `{ops_library}` (`model_operations {{ op_library_filename }}`); a library that
fails to load fails the whole model. Build it IN THE SERVING IMAGE, against that image's onnxruntime and CUDA
(a library built against another CUDA major does not load):

    docker run --gpus all --rm -v /path/to/dsr-deploy:/src -v /path/to/dsr_lib:/dsr_lib \\
        nvcr.io/nvidia/tritonserver:<yy.mm>-py3 bash -c \\
        "pip install -e /src && dsr-deploy plugins build --ort-root /path/to/onnxruntime/headers \\
         {'--cuda' if kind == 'KIND_GPU' else '--no-cuda'} --no-torch --lib-dir /dsr_lib"
""")
        if kind == "KIND_GPU":
            lines.append("With `--cuda` the library holds the fused CUDA kernels of the dsr ops for the CUDA "
                         "execution provider (and the CPU kernels).")
        else:
            lines.append("`--no-cuda` builds a CPU-only library: it needs no CUDA runtime at all, which is what "
                         "these KIND_CPU models need.")
    return "\n".join(lines)


def _batch_first(inputs: Sequence[Edge]) -> bool:
    # An exported multi-step model is [T, B, ...]: its batch is not first. We only call a model batch-first
    # when its single input's first dim is named like a batch.
    return len(inputs) == 1 and isinstance(inputs[0].dims[0], str) and "batch" in inputs[0].dims[0].lower()
