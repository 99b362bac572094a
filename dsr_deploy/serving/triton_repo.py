"""``dsr-deploy triton-repo``: a Triton Inference Server model repository for exported DSR models.

For each ONNX model the repository holds ``<name>_onnx/1/model.onnx`` (onnxruntime backend) and, when a
TensorRT plan is given, ``<name>_trt/1/model.plan`` (``tensorrt_plan``), each with its ``config.pbtxt``, and a
README on starting tritonserver with the dsr plugin libraries (the template ``triton_readme.md`` is package data).
The ONNX edge rewrites are :mod:`.triton_onnx`, the config text :mod:`.triton_config`.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from .. import contract
from ..errors import UserError
from ..manifest import Manifest
from .triton_config import INSTANCE_KINDS, make_config
from .triton_onnx import (
    Edge,
    add_sequence_controls,
    batch_first,
    batch_first_multistep,
    edges,
    first_dim_dynamic,
    is_streaming,
)

PLAN_SUFFIXES = (".plan", ".engine", ".trt")
#: ``--backend`` -> (model name suffix, config platform) of the ONNX models.
ONNX_BACKENDS = {"onnxruntime": ("onnx", "onnxruntime_onnx"), "python": ("py", "python")}


@dataclass
class ModelSource:
    """One model to put in the repository: an ONNX file, optionally with a TensorRT plan built from it."""

    name: str
    onnx: Path
    plan: Optional[Path] = None
    manifest: Optional[Manifest] = None  # the export folder's (validated), None for a loose file


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
            # Only what the manifest lists (what verify ran) is published; a file merely lying there never is.
            from ..input_files import unlisted_models, unlisted_note

            if not onnx_paths:
                extra = [n for n in unlisted_models(manifest) if n.endswith(".onnx")]
                raise UserError(f"export folder {p} lists no ONNX model in its manifest (export with --format onnx)"
                                + (f"; {', '.join(extra)} lies there unlisted (never verified) and is not published"
                                   if extra else ""))
            note = unlisted_note(manifest, "published")
            if note:
                import sys

                print(note, file=sys.stderr)
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


# ---------------------------------------------------------------------------------------------------------
# config.pbtxt.


# ---------------------------------------------------------------------------------------------------------
# The repository.


def python_model_text() -> str:
    """The python variant's ``model.py`` (:mod:`.triton_python_model`, package data as a module)."""
    from importlib import resources

    return resources.files(__package__).joinpath("triton_python_model.py").read_text(encoding="utf-8")


def readme_text(**fields) -> str:
    """The repository's README: the package's ``triton_readme.md`` template with the contract's names filled in."""
    from importlib import resources

    template = resources.files(__package__).joinpath("triton_readme.md").read_text(encoding="utf-8")
    names = {"trt_plugin": contract.TRT_PLUGIN_LIBRARY, "trt_plugin_dynamic": contract.TRT_DYNAMIC_PLUGIN_LIBRARY,
             "ort_library": contract.ORT_OPS_LIBRARY,
             "dsr_ops": ", ".join(contract.DSR_OPS), "trt_ops": ", ".join(contract.TENSORRT_PLUGIN_OPS),
             "stream_input": contract.STREAM_INPUT, "stream_output": contract.STREAM_OUTPUT,
             "state_in": contract.STATE_IN_PREFIX, "state_out": contract.STATE_OUT_PREFIX}
    return template.format(**names, **fields)

def _batch_note(src: ModelSource, model, ins0) -> str:
    """How a batched multi-step model's batch dimension is used (the summary's note)."""
    io = (src.manifest.io if src.manifest is not None else None) or {}
    if io.get("input_layout") in ("BT", "static"):  # export options: batch first already
        return (f"model used as exported (batch first: {io['input_layout']} input, "
                f"{io.get('output', 'spikes')} output)")
    if io and batch_first_multistep(model, output_spikes=io.get("output") != "logits"):
        return f"multi-step: input batch first [B, T, ...], {io.get('output')} output"
    if batch_first(ins0):
        return "model used as exported (batch first)"
    if batch_first_multistep(model):
        return "multi-step: input/output batch first [B, T, ...]"
    return "model used as exported (batch assumed first)"


def _write_plan(tmp: Path, src: ModelSource, ins0, outs0, streaming: bool, batched: bool, max_batch: int,
                queue_delay_us: int) -> dict:
    """The TensorRT plan's model folder and config; returns its summary entry."""
    pname = f"{src.name}_trt"
    plan_batched = batched and (streaming or batch_first(ins0)) and first_dim_dynamic(ins0, streaming)
    pmax, pnote = plan_max_batch(src, ins0, streaming, max_batch) if plan_batched else (
        0, "batch not first: no dynamic batching")
    pd = tmp / pname / "1"
    pd.mkdir(parents=True)
    (pd / "model.plan").write_bytes(src.plan.read_bytes())
    (tmp / pname / "config.pbtxt").write_text(make_config(
        pname, "tensorrt_plan", ins0, outs0, pmax, streaming, controls=False,
        instance_kind="KIND_GPU", queue_delay_us=queue_delay_us))
    return {"name": pname, "backend": "tensorrt_plan", "streaming": streaming, "max_batch_size": pmax,
            "note": pnote}


def write_repository(artifacts: Sequence[Path | str], out: Path | str, max_batch: int = 8,
                     name: Optional[str] = None, force: bool = False,
                     ort_ops_library: Optional[str] = None, queue_delay_us: int = 100,
                     instance_kind: str = "cpu", backend: str = "onnxruntime") -> dict:
    """Write the model repository into ``out`` (all or nothing). Returns a summary of what was written.
    ``backend``: what runs the ONNX models, Triton's onnxruntime backend (``<name>_onnx``) or its python backend
    (``<name>_py``: ONNX Runtime in ``model.py``, the same config fields; :mod:`.triton_python_model`)."""
    import onnx

    from .. import __version__
    from ..io import atomic_dir

    if max_batch < 0:
        raise UserError(f"--max-batch must be >= 0, got {max_batch}")
    if instance_kind not in INSTANCE_KINDS:
        raise UserError(f"--instance-kind must be one of {', '.join(INSTANCE_KINDS)}, got {instance_kind!r}")
    kind = INSTANCE_KINDS[instance_kind]
    if backend not in ONNX_BACKENDS:
        raise UserError(f"--backend must be one of {', '.join(ONNX_BACKENDS)}, got {backend!r}")
    sources = collect_sources(artifacts, name)
    summary = {"repository": str(out), "models": []}
    with atomic_dir(Path(out), force=force) as tmp:
        for src in sources:
            try:
                model = onnx.load(str(src.onnx))
            except Exception as exc:
                raise UserError(f"{src.onnx} is not a readable ONNX model: {exc}") from exc
            ins0, outs0 = edges(model.graph.input), edges(model.graph.output)
            initializers = {i.name for i in model.graph.initializer}
            ins0 = [e for e in ins0 if e.name not in initializers]
            streaming = is_streaming(ins0)
            batched = max_batch > 0
            note = ""
            if batched:
                _require_dynamic_batch(src, ins0, streaming)
            if streaming:
                _refuse_nonzero_start(src, model)
                add_sequence_controls(model, batched)
                note = "streaming: sequence batching, implicit membrane state, START/READY"
            elif batched:
                note = _batch_note(src, model, ins0)
            ins, outs = edges(model.graph.input), edges(model.graph.output)
            ins = [e for e in ins if e.name not in initializers]
            onnx.checker.check_model(model)
            suffix, platform = ONNX_BACKENDS[backend]
            mname = f"{src.name}_{suffix}"
            d = tmp / mname / "1"
            d.mkdir(parents=True)
            onnx.save(model, str(d / "model.onnx"))
            if backend == "python":
                (d / "model.py").write_text(python_model_text())
            (tmp / mname / "config.pbtxt").write_text(make_config(
                mname, platform, ins, outs, max_batch, streaming, controls=True,
                instance_kind=kind, queue_delay_us=queue_delay_us, ops_library=ort_ops_library))
            summary["models"].append({"name": mname, "backend": backend, "streaming": streaming,
                                      "max_batch_size": max_batch, "instance_kind": kind, "note": note})
            if src.plan is not None:
                summary["models"].append(_write_plan(tmp, src, ins0, outs0, streaming, batched, max_batch,
                                                     queue_delay_us))
        listing = "\n".join(f"- `{m['name']}` ({m['backend']}, max_batch_size {m['max_batch_size']}"
                            + (f"; {m['note']}" if m["note"] else "") + ")" for m in summary["models"])
        has_plan = any(m["backend"] == "tensorrt_plan" for m in summary["models"])
        flag = f'--backend-config=tensorrt,plugins="/dsr_lib/{contract.TRT_PLUGIN_LIBRARY}"' if has_plan else ""
        (tmp / "README.md").write_text(readme_text(version=__version__, models=listing, plugin_flag=flag,
                                                   ort_section=_ort_section(kind, ort_ops_library)))
    return summary


def _refuse_nonzero_start(src: ModelSource, model) -> None:
    """Triton's sequence batcher starts every membrane from zeros (``zero_data``): a hard-reset SpikingJelly step
    node whose membrane starts at a nonzero ``v_reset`` would run from the wrong state, so it is refused."""
    from onnx import helper

    steps = set(contract.SJ_STEP_OP_TYPES.values())
    for node in model.graph.node:
        if node.domain != contract.DOMAIN or node.op_type not in steps:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("hard_reset") and attrs.get("v_reset", 0.0) != 0.0:
            raise UserError(f"{src.onnx}: node {node.name or node.output[0]!r} ({node.op_type}) starts its membrane at "
                            f"v_reset={attrs['v_reset']:g}, and Triton's sequence batcher starts every stream from "
                            "zeros; serve it with StreamSession instead, or export with v_reset=0 or a soft reset")


def plan_max_batch(src: ModelSource, inputs: Sequence[Edge], streaming: bool, wanted: int) -> tuple[int, str]:
    """A plan's ``max_batch_size``: Triton's tensorrt backend refuses one above the engine's batch profile, and
    a plan cannot be opened without TensorRT, so the profile ``build-engine`` recorded in the manifest is read.
    Above it: clamped (with a note); no recorded profile, or one whose batch does not start at 1: 0 (no
    batching, explicit dims)."""
    entry = next((a for a in (src.manifest.artifacts if src.manifest else [])
                  if src.plan is not None and src.manifest.path_of(a) == src.plan), None)
    profile = (entry or {}).get("profile")
    names = [e.name for e in inputs if not streaming or e.name == contract.STREAM_INPUT
             or e.name.startswith(contract.STATE_IN_PREFIX)]
    if not profile or not all(n in profile and profile[n][0] for n in names):
        return 0, "the engine's batch profile is not in a manifest (build it with build-engine in the export " \
                  "folder): no dynamic batching"
    lo = max(profile[n][0][0] for n in names)
    hi = min(profile[n][2][0] for n in names)
    if lo > 1:
        return 0, f"the engine's batch profile starts at {lo}: no dynamic batching"
    if wanted > hi:
        return hi, f"max_batch_size clamped to the engine's profile maximum batch {hi} (asked {wanted})"
    return wanted, ""


def _require_dynamic_batch(src: ModelSource, inputs: Sequence[Edge], streaming: bool) -> None:
    """With max_batch_size > 0 Triton's onnxruntime backend needs the batch (first) dimension to be -1; a
    ``--static-batch`` export has it fixed, and its graph may bake that size into reshapes, so it is refused."""
    if not first_dim_dynamic(inputs, streaming):
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


