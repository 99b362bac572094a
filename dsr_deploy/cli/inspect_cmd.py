"""``dsr-deploy inspect``: a MODEL spec, an export folder or an artifact file, described."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import UserError
from .common import SET_HELP, warn_assumed
from .render import inspect_report
from .validate import emit_json

ORDER = 22  # place in `dsr-deploy --help` (after export, verify)


def inspect_target(target: str, checkpoint: Optional[str] = None, trust_pickle: bool = False,
                   settings: Optional[List[str]] = None) -> dict:
    """What ``dsr-deploy inspect`` reports for a MODEL spec, an export folder or an artifact file."""
    p = Path(target)
    if p.is_dir():
        from ..manifest import read_manifest

        m = read_manifest(p)
        return {"kind": "export-folder", "path": str(p), "manifest": dict(m), "neurons": m.neurons,
                "artifacts": m.artifacts}
    if p.is_file() and p.suffix == ".onnx":
        return inspect_onnx(p)
    if p.is_file() and p.suffix in (".ts", ".pt2"):
        from ..manifest import manifest_beside

        info = {"kind": "torchscript" if p.suffix == ".ts" else "pt2", "path": str(p), "bytes": p.stat().st_size}
        if p.suffix == ".pt2":
            from ..runtime.pt2 import pickled_entries

            # Read from the zip only (nothing is unpickled): what loading it would need --trust-pickle for.
            info["pickled_entries"] = pickled_entries(p)
        m = manifest_beside(p)
        if m is not None:
            info["neurons"] = m.neurons
            info["artifact"] = next((a for a in m.artifacts if a["path"] == p.name), None)
        return info
    if p.is_file():
        raise UserError(f"cannot inspect {target}: not an export folder, .onnx, .ts or .pt2 file")
    from ..convert import NO_NEURON_HINT, find_neurons
    from ..model_spec import load_model, parse_set_options

    loaded = load_model(target, checkpoint, trust_pickle, settings=parse_set_options(settings))
    warn_assumed(loaded)
    try:
        found = find_neurons(loaded.model)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    if not found:
        raise UserError(NO_NEURON_HINT)
    neurons = [n.to_dict() for n in found]
    return {"kind": "model", "spec": loaded.spec, "checkpoint": loaded.checkpoint, **loaded.record(),
            "default_input_shape": list(loaded.default_input_shape) if loaded.default_input_shape else None,
            "neurons": neurons}


def inspect_onnx(path: Path) -> dict:
    import collections

    import onnx

    from ..export.onnx_writer import dsr_nodes

    try:
        model = onnx.load(str(path))
    except Exception as exc:
        raise UserError(f"cannot read {path} as ONNX: {type(exc).__name__}") from exc
    meta = {p.key: p.value for p in model.metadata_props}
    ops = collections.Counter(f"{n.domain + '::' if n.domain else ''}{n.op_type}" for n in model.graph.node)
    neurons = []
    for n in dsr_nodes(model):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
        neurons.append({"node": n.name, "op_type": n.op_type, "attributes": attrs})

    def dims(vi):
        return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]

    return {
        "kind": "onnx", "path": str(path),
        "opset_import": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "ir_version": model.ir_version,
        "node_count": len(model.graph.node),
        "dsr_node_count": len(neurons),
        "function_count": len(model.functions),
        "functions": [{"name": f"{f.domain}::{f.name}", "nodes": len(f.node),
                       "body": ",".join(sorted({n.op_type for n in f.node} & {"Scan", "Split", "Loop"})) or "-"}
                      for f in model.functions],
        "op_counts": dict(ops.most_common()),
        "inputs": [{"name": i.name, "shape": dims(i)} for i in model.graph.input],
        "outputs": [{"name": o.name, "shape": dims(o)} for o in model.graph.output],
        "metadata": meta,
        "neurons": neurons,
    }


def register(app: typer.Typer) -> None:
    @app.command("inspect")
    def inspect(
        target: str = typer.Argument(..., help="MODEL spec, export folder, or .onnx / .ts / .pt2 file"),
        checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="state dict for a MODEL spec"),
        trust_pickle: bool = typer.Option(False, "--trust-pickle", help="allow a pickled model checkpoint"),
        as_json: bool = typer.Option(False, "--json", help="print JSON"),
        settings: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
    ):
        """Show the neuron layers and their parameters; for ONNX also node / function counts and metadata."""
        if settings and Path(target).exists():
            raise UserError("--set applies to a MODEL spec, not to an export folder or artifact file")
        info = inspect_target(target, str(checkpoint) if checkpoint else None, trust_pickle, settings)
        if as_json:
            emit_json(json.dumps(info, indent=2, default=str))
        else:
            inspect_report(info)
