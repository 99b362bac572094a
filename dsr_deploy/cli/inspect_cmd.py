"""``dsr-deploy inspect``: a MODEL spec, an export folder or an artifact file, described."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import UserError
from .common import SET_HELP, console, neuron_table, warn_assumed
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


def _print_inspect(info: dict) -> None:
    from rich.markup import escape
    from rich.table import Table

    c = console()
    kind = info["kind"]
    if kind == "model":
        c.print(f"[bold]{info['spec']}[/bold]" + (f"  checkpoint {info['checkpoint']}" if info["checkpoint"] else ""))
        if info.get("default_input_shape"):
            c.print(f"default input shape {info['default_input_shape']}")
        if info.get("settings"):
            c.print(escape("settings " + ", ".join(f"{k}={v}" for k, v in info["settings"].items())))
        c.print(neuron_table(info["neurons"], f"{len(info['neurons'])} DSR neuron layers"))
    elif kind == "export-folder":
        m = info["manifest"]
        c.print(escape(f"{info['path']}: {(m.get('model') or {}).get('spec')} T={m.get('T')} input "
                       f"{m.get('input_shape')} layout {m.get('layout')} (dsr-deploy {m.get('dsr_deploy_version')})"))
        settings = (m.get("model") or {}).get("settings")
        if isinstance(settings, dict) and settings:
            c.print(escape("settings " + ", ".join(f"{k}={v}" for k, v in settings.items())))
        if isinstance(m.get("io"), dict):
            c.print(escape("io " + ", ".join(f"{k}={v}" for k, v in m["io"].items())))
        t = Table("format", "path", "details", title="artifacts")
        for a in info["artifacts"]:
            extra = ", ".join(f"{k}={v}" for k, v in a.items() if k not in ("format", "path"))
            t.add_row(escape(a["format"]), escape(a["path"]), escape(extra))
        c.print(t)
        c.print(neuron_table(info["neurons"], f"{len(info['neurons'])} DSR neuron layers"))
    elif kind == "onnx":
        c.print(f"[bold]{info['path']}[/bold]  opsets {info['opset_import']}  IR {info['ir_version']}")
        c.print(escape(f"nodes {info['node_count']}, dsr nodes {info['dsr_node_count']}, "
                       f"functions {info['function_count']}"
                       + "".join(f"  [{f['name']}: {f['nodes']} nodes, {f['body']}]" for f in info["functions"])))
        c.print(escape("inputs " + ", ".join(f"{i['name']}{i['shape']}" for i in info["inputs"])
                       + "  outputs " + ", ".join(f"{o['name']}{o['shape']}" for o in info["outputs"])))
        if info["metadata"]:
            t = Table("key", "value", title="metadata")
            for k, v in info["metadata"].items():
                t.add_row(k, v if len(v) < 120 else v[:117] + "...")
            c.print(t)
        if info["neurons"]:
            t = Table("node", "op", "attributes", title="dsr nodes")
            for n in info["neurons"]:
                t.add_row(n["node"], n["op_type"], ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
                                                           for k, v in n["attributes"].items()))
            c.print(t)
    else:
        c.print(f"[bold]{escape(info['path'])}[/bold] ({kind}, {info['bytes']} bytes)")
        if info.get("pickled_entries"):
            c.print(escape(f"pickled entries (loading runs code; refused without --trust-pickle): "
                           f"{', '.join(info['pickled_entries'])}"))
        if info.get("artifact"):
            c.print(", ".join(f"{k}={v}" for k, v in info["artifact"].items()))
        if info.get("neurons"):
            c.print(neuron_table(info["neurons"], f"{len(info['neurons'])} DSR neuron layers (from manifest.json)"))




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
            _print_inspect(info)
