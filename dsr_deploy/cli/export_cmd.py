"""``dsr-deploy export | verify | inspect``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import UserError

ORDER = 20  # place in `dsr-deploy --help` (after info)
FORMAT_CHOICES = ("torchscript", "onnx", "pt2", "all")


def _console():
    import sys

    from rich.console import Console

    # Piped output (logs, CI) gets wide tables instead of rich's 80-column default with truncated cells.
    return Console(stderr=False, highlight=False, width=None if sys.stdout.isatty() else 200)


def _err_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def _fmt_float(v) -> str:
    return "-" if v is None else f"{v:.6g}"


def _pct(v) -> str:
    return "-" if v is None else f"{100.0 * v:.4f}%"


def _neuron_table(neurons: List[dict], title: str):
    from rich.table import Table

    t = Table(title=title)
    for col in ("#", "layer", "op", "source", "v_threshold", "alpha", "tau", "delta_t", "decay", "gain", "note"):
        t.add_column(col)
    for n in neurons:
        note = (f"clamped from {n['v_threshold_stored']:.6g} to bound {n['v_threshold_lower_bound']:.6g}"
                if n.get("clamped") else "")
        t.add_row(str(n["index"]), n["name"] or "<root>", n["op_type"], n.get("source", ""),
                  _fmt_float(n["v_threshold"]), _fmt_float(n["alpha"]), _fmt_float(n.get("tau")),
                  _fmt_float(n.get("delta_t")), _fmt_float(n.get("decay")), _fmt_float(n.get("gain")), note)
    return t


def inspect_target(target: str, checkpoint: Optional[str] = None, trust_pickle: bool = False,
                   settings: Optional[List[str]] = None) -> dict:
    """What ``dsr-deploy inspect`` reports for a MODEL spec, an export folder or an artifact file."""
    p = Path(target)
    if p.is_dir():
        from ..export.manifest import read_manifest

        m = read_manifest(p)
        return {"kind": "export-folder", "path": str(p), "manifest": m, "neurons": m["neurons"],
                "artifacts": m["artifacts"]}
    if p.is_file() and p.suffix == ".onnx":
        return inspect_onnx(p)
    if p.is_file() and p.suffix in (".ts", ".pt2"):
        from ..export.manifest import MANIFEST

        info = {"kind": "torchscript" if p.suffix == ".ts" else "pt2", "path": str(p), "bytes": p.stat().st_size}
        if (p.parent / MANIFEST).is_file():
            m = json.loads((p.parent / MANIFEST).read_text())
            info["neurons"] = m.get("neurons", [])
            info["artifact"] = next((a for a in m.get("artifacts", []) if a.get("path") == p.name), None)
        return info
    if p.is_file():
        raise UserError(f"cannot inspect {target}: not an export folder, .onnx, .ts or .pt2 file")
    from ..convert import find_neurons
    from ..model_spec import load_model, parse_set_options

    loaded = load_model(target, checkpoint, trust_pickle, settings=parse_set_options(settings))
    warn_assumed(loaded)
    neurons = [n.to_dict() for n in find_neurons(loaded.model)]
    return {"kind": "model", "spec": loaded.spec, "checkpoint": loaded.checkpoint, **loaded.record(),
            "default_input_shape": list(loaded.default_input_shape) if loaded.default_input_shape else None,
            "neurons": neurons}


def warn_assumed(loaded) -> None:
    """The one-line warning on stderr naming the settings a checkpoint did not store and no --set gave."""
    line = loaded.warning()
    if line:
        import sys

        print(f"warning: {line}", file=sys.stderr)


SET_HELP = ("KEY=VALUE for the model's factory / constructor (repeatable; e.g. --set T=5 --set num_classes=100 "
            "--set v_threshold=0.6), checked against its signature and recorded in the manifest")


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

    c = _console()
    kind = info["kind"]
    if kind == "model":
        c.print(f"[bold]{info['spec']}[/bold]" + (f"  checkpoint {info['checkpoint']}" if info["checkpoint"] else ""))
        if info.get("default_input_shape"):
            c.print(f"default input shape {info['default_input_shape']}")
        if info.get("settings"):
            c.print(escape("settings " + ", ".join(f"{k}={v}" for k, v in info["settings"].items())))
        c.print(_neuron_table(info["neurons"], f"{len(info['neurons'])} DSR neuron layers"))
    elif kind == "export-folder":
        m = info["manifest"]
        c.print(f"[bold]{info['path']}[/bold]: {m['model'].get('spec')} T={m['T']} input {m['input_shape']} "
                f"layout {m['layout']} (dsr-deploy {m['dsr_deploy_version']})")
        if isinstance(m["model"].get("settings"), dict) and m["model"]["settings"]:
            c.print(escape("settings " + ", ".join(f"{k}={v}" for k, v in m["model"]["settings"].items())))
        if isinstance(m.get("io"), dict):
            c.print(escape("io " + ", ".join(f"{k}={v}" for k, v in m["io"].items())))
        t = Table("format", "path", "details", title="artifacts")
        for a in info["artifacts"]:
            extra = ", ".join(f"{k}={v}" for k, v in a.items() if k not in ("format", "path"))
            t.add_row(a["format"], a["path"], extra)
        c.print(t)
        c.print(_neuron_table(info["neurons"], f"{len(info['neurons'])} DSR neuron layers"))
    elif kind == "onnx":
        c.print(f"[bold]{info['path']}[/bold]  opsets {info['opset_import']}  IR {info['ir_version']}")
        c.print(escape(f"nodes {info['node_count']}, dsr nodes {info['dsr_node_count']}, functions {info['function_count']}"
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
        c.print(f"[bold]{info['path']}[/bold] ({kind}, {info['bytes']} bytes)")
        if info.get("artifact"):
            c.print(", ".join(f"{k}={v}" for k, v in info["artifact"].items()))
        if info.get("neurons"):
            c.print(_neuron_table(info["neurons"], f"{len(info['neurons'])} DSR neuron layers (from manifest.json)"))


def _print_verify(report: dict) -> None:
    from rich.markup import escape
    from rich.table import Table

    c = _console()
    c.print(f"[bold]verify {escape(report['dir'])}[/bold] against " + escape(
        f"{report['model']}" + (f" + {report['checkpoint']}" if report["checkpoint"] else "")
        + f"; inputs: {', '.join(i['name'] + str(i['shape']) for i in report['inputs'])}"))
    t = Table(title=f"output and spike agreement (pass: every layer >= {_pct(report['min_agreement'])}, top-1 equal)")
    t.add_column("artifact")
    t.add_column("backend")
    t.add_column("max |diff|")
    t.add_column("top-1")
    for n in report["neurons"]:
        t.add_column(f"L{n['index']} {n['op_type'].replace('DSR', '').replace('Spike', '')}", justify="right")
    t.add_column("result")
    for r in report["runs"]:
        backend = r["backend"] + (f" ({r['variant']})" if r["variant"] else "")
        if r["status"] != "ok":
            cells = ["-", "-"] + ["-"] * len(report["neurons"])
            result = ("[yellow]skipped[/yellow]: " if r["status"] == "skipped" else "[red]ERROR[/red]: ") + escape(r["reason"])
        else:
            by = {l["index"]: l["agreement"] for l in r["layers"]}
            cells = [f"{r['max_abs_diff']:.3g}", _pct(r["top1_agreement"])] + [_pct(by.get(n["index"])) for n in report["neurons"]]
            result = "[green]pass[/green]" if r["passed"] else "[red]FAIL[/red]"
        t.add_row(escape(r["artifact"]), escape(backend), *cells, result)
    c.print(t)
    c.print("[green]PASSED[/green]" if report["passed"] else "[red]FAILED[/red]")


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export(
        model: str = typer.Argument(..., help="zoo:NAME, package.module:factory or path/to/file.py:factory"),
        input_shape: Optional[str] = typer.Option(None, "--input-shape", help="T,B,C,H,W (default: the zoo's)"),
        fmt: str = typer.Option("all", "--format", help="torchscript | onnx | pt2 | all (comma-separated allowed)"),
        out: Path = typer.Option(..., "--out", help="output folder"),
        checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="state dict (loaded with weights_only=True)"),
        lowering: str = typer.Option("function", "--lowering", help="ONNX: function (dsr nodes + function "
                                     "fallback) | portable (standard ops only)"),
        opset: int = typer.Option(18, "--opset", help="ONNX opset (>= 17)"),
        function_body: str = typer.Option("scan", "--function-body", help="ONNX function body: scan (dynamic T) | "
                                          "unrolled (fixed T)"),
        static_batch: bool = typer.Option(False, "--static-batch", help="fix the batch size to the example's"),
        aot: bool = typer.Option(False, "--aot", help="pt2: also compile an AOTInductor package (model.aoti.pt2)"),
        force: bool = typer.Option(False, "--force", help="overwrite an existing output folder"),
        trust_pickle: bool = typer.Option(False, "--trust-pickle", help="allow a checkpoint holding a pickled "
                                          "model (runs code from the file)"),
        as_json: bool = typer.Option(False, "--json", help="print the manifest as JSON"),
        mode: str = typer.Option("multistep", "--mode", help="multistep ([T, B, ...] in one call) | streaming "
                                 "(one time step per call, membranes as I/O: x_t, v_in_i -> y_t, v_out_i)"),
        settings: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
        layout: str = typer.Option("TB", "--layout", help="artifact input (and spike output) layout: TB "
                                   "[T, B, ...] | BT [B, T, ...]"),
        encode: str = typer.Option("none", "--encode", help="none | direct: the artifact takes a static [B, ...] "
                                   "input and repeats it T times inside (the authors' CIFAR/ImageNet input)"),
        readout: str = typer.Option("none", "--readout", help="none (spike train out) | mean (logits [B, classes]: "
                                    "firing rate over T, the authors' IF readout) | lif-rate (the authors' LIF "
                                    "weighted rate)"),
    ):
        """Export a DSR network to TorchScript, ONNX and/or torch.export (pt2) artifacts with a manifest."""
        from ..export import check_input_shape, export_model, formats
        from ..model_spec import load_model, parse_set_options, parse_shape

        if out.exists() and not force:  # before any expensive work
            raise UserError(f"{out} exists; pass --force to overwrite it")
        if mode not in ("multistep", "streaming"):
            raise UserError(f"unknown --mode {mode!r}; choose multistep or streaming")
        if mode == "streaming":
            from ..streaming import register_formats

            register_formats()
        names = [f.strip() for f in fmt.split(",") if f.strip()]
        known = list(formats(mode))
        if not names or any(f not in known + ["all"] for f in names):
            raise UserError(f"unknown --format {fmt!r}; choose from {', '.join(known)} or all")
        wanted = known if "all" in names else names
        if lowering not in ("function", "portable"):
            raise UserError(f"unknown --lowering {lowering!r}; choose function or portable")
        if function_body not in ("scan", "unrolled"):
            raise UserError(f"unknown --function-body {function_body!r}; choose scan or unrolled")
        if opset < 17:
            raise UserError(f"--opset must be >= 17, got {opset}")
        if aot and "pt2" not in wanted:
            raise UserError("--aot compiles the pt2 export; add pt2 to --format")
        from ..io_adapter import io_record

        io_record(1, layout, encode, readout)  # bad options fail before any work
        if mode == "streaming" and (layout, encode, readout) != ("TB", "none", "none"):
            raise UserError("--layout, --encode and --readout apply to multi-step exports, not to --mode streaming")
        shape = parse_shape(input_shape) if input_shape else None
        if shape is not None:
            check_input_shape(shape)
        from ..io import check_writable_dir

        check_writable_dir(out.parent if out.parent != Path("") else Path("."))
        set_opts = parse_set_options(settings)
        if shape is not None and model.strip().startswith("zoo:") and "T" not in set_opts:
            set_opts["T"] = str(shape[0])  # a zoo network is built for the T of the input shape given
        loaded = load_model(model, str(checkpoint) if checkpoint else None, trust_pickle, settings=set_opts)
        warn_assumed(loaded)
        if shape is None:
            if loaded.default_input_shape is None:
                raise UserError("--input-shape T,B,... is required for a model outside the zoo")
            shape = loaded.default_input_shape
        err = _err_console()
        progress = None if as_json else (lambda msg: err.print(f"[dim]{msg}[/dim]"))
        if mode == "streaming":
            from ..streaming import export_streaming

            manifest = export_streaming(loaded.model, shape, out, formats_=wanted, spec=loaded.spec,
                                        checkpoint=loaded.checkpoint, static_batch=static_batch, force=force,
                                        progress=progress, model_info=loaded.record())
        else:
            manifest = export_model(
                loaded.model, shape, out, formats_=wanted, spec=loaded.spec, checkpoint=loaded.checkpoint,
                lowering=lowering, opset=opset, function_body=function_body, static_batch=static_batch, aot=aot,
                force=force, trust_pickle=trust_pickle, progress=progress, model_info=loaded.record(),
                io=io_record(shape[0], layout, encode, readout),
            )
        if as_json:
            typer.echo(json.dumps(manifest, indent=2))
            return
        from rich.table import Table

        c = _console()
        c.print(f"[bold]exported[/bold] {loaded.spec} -> {out}  (input {manifest['input_shape']}, T={shape[0]}, "
                f"{'dynamic' if not static_batch else 'static'} batch"
                + (f"; streaming: {', '.join(manifest['inputs'])} -> {', '.join(manifest['outputs'])})"
                   if mode == "streaming" else ")")
                + ("; io: " + ", ".join(f"{k}={v}" for k, v in manifest["io"].items() if k != "source")
                   if manifest.get("io") else ""))
        t = Table("format", "file", "details", title="artifacts")
        for a in manifest["artifacts"]:
            t.add_row(a["format"], a["path"], ", ".join(f"{k}={v}" for k, v in a.items() if k not in ("format", "path")))
        c.print(t)
        c.print(_neuron_table(manifest["neurons"], f"{len(manifest['neurons'])} DSR neuron layers"))

    @app.command("verify")
    def verify(
        folder: Path = typer.Argument(..., help="an export folder (with manifest.json)"),
        input_file: Optional[Path] = typer.Option(None, "--input", help="an input [T,B,...] as .npy (float)"),
        min_agreement: float = typer.Option(0.999, "--min-agreement", help="per-layer spike agreement to pass"),
        random_inputs: int = typer.Option(1, "--random", help="how many random inputs (seeds 0..N-1)"),
        as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
    ):
        """Run every artifact of FOLDER in every available backend against the PyTorch model; exit 1 on failure."""
        from ..verify import verify_folder

        if random_inputs < 0:
            raise UserError(f"--random must be >= 0, got {random_inputs}")
        if random_inputs == 0 and input_file is None:
            raise UserError("nothing to compare: --random 0 and no --input")
        err = _err_console()
        report = verify_folder(folder, input_file=str(input_file) if input_file else None,
                               min_agreement=min_agreement, n_random=random_inputs,
                               progress=None if as_json else (lambda m: err.print(f"[dim]{m}[/dim]")))
        if as_json:
            typer.echo(json.dumps(report, indent=2))
        else:
            _print_verify(report)
        if not report["passed"]:
            # SystemExit, not typer.Exit: main() runs click with standalone_mode=False, which turns
            # typer.Exit into a return value that main() drops (the process would exit 0).
            raise SystemExit(1)

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
            typer.echo(json.dumps(info, indent=2, default=str))
        else:
            _print_inspect(info)
