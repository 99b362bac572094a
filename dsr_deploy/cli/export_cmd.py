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


def _fmt_coef(v) -> str:
    return "-" if v is None else f"{v:.9g}"


def _pct(v) -> str:
    return "-" if v is None else f"{100.0 * v:.4f}%"


def _neuron_table(neurons: List[dict], title: str):
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=title)
    for col in ("#", "layer", "op", "source", "layout", "v_threshold", "alpha", "tau", "delta_t", "rule", "decay",
                "gain", "note"):
        t.add_column(col)
    for n in neurons:
        note = (f"clamped from {_fmt_float(n.get('v_threshold_stored'))} to bound "
                f"{_fmt_float(n.get('v_threshold_lower_bound'))}" if n.get("clamped") else "")
        layout = f"T*B (T={n.get('timesteps')})" if n.get("layout") == "flat" else "T,B"
        # The coefficients in full (9 digits: a float32 exactly): the two LIF rules differ in the last digits.
        t.add_row(str(n["index"]), escape(n["name"] or "<root>"), escape(n["op_type"]), escape(str(n.get("source", ""))),
                  layout,
                  _fmt_float(n["v_threshold"]), _fmt_float(n["alpha"]), _fmt_float(n.get("tau")),
                  _fmt_float(n.get("delta_t")), n.get("lif_rule") or "-", _fmt_coef(n.get("decay")),
                  _fmt_coef(n.get("gain")), note)
    return t


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
        c.print(f"[bold]{escape(info['path'])}[/bold] ({kind}, {info['bytes']} bytes)")
        if info.get("pickled_entries"):
            c.print(escape(f"pickled entries (loading runs code; refused without --trust-pickle): "
                           f"{', '.join(info['pickled_entries'])}"))
        if info.get("artifact"):
            c.print(", ".join(f"{k}={v}" for k, v in info["artifact"].items()))
        if info.get("neurons"):
            c.print(_neuron_table(info["neurons"], f"{len(info['neurons'])} DSR neuron layers (from manifest.json)"))


def _divergence_cell(r: dict) -> str:
    d = r.get("divergence")
    if not d:
        f = r.get("first_input_difference")
        if f and f.get("input_max_rel_diff") is not None:
            return f"none (inputs differ from L{f['layer']}, by {f['input_max_rel_diff']:.2g} rel.)"
        return "none"
    cell = f"L{d['layer']} ({d['spikes_differing']} spikes)"
    if d.get("input_max_rel_diff") is not None:
        cell += f"; its input differs by {d['input_max_rel_diff']:.2g} (rel.)"
    return cell


def _print_verify(report: dict) -> None:
    from rich.markup import escape
    from rich.table import Table

    c = _console()
    c.print(f"[bold]verify {escape(report['dir'])}[/bold] against " + escape(
        f"{report['model']}" + (f" + {report['checkpoint']}" if report["checkpoint"] else "")
        + f"; inputs ({report.get('encoding', 'noise')}): "
        + ", ".join(i['name'] + str(i['shape']) for i in report['inputs'])))
    rule = report.get("rule") or {}
    title = (f"pass: neurons exact given the reference's input, top-1 agreement >= {_pct(rule.get('min_top1'))}"
             + (f", accuracy within {rule.get('max_accuracy_drop')} points" if report.get("labels") else "")
             + (f", every layer >= {_pct(rule.get('min_agreement'))}" if rule.get("min_agreement") is not None else "")
             + (f"; int8: {rule['int8']}" if any(r.get("precision") == "int8" for r in report.get("runs", []))
                and rule.get("int8") else ""))
    t = Table(title=title)
    cols = ["artifact", "backend", "neurons", "max |diff|", "top-1"]
    if report.get("labels"):
        cols.append(f"accuracy (PyTorch {_pct(report.get('pytorch_accuracy'))})")
    cols += ["spikes equal (lowest layer)", "divergence starts", "result"]
    for col in cols:
        t.add_column(col)
    for r in report["runs"]:
        backend = r["backend"] + (f" ({r['variant']})" if r["variant"] else "")
        if r["status"] != "ok":
            cells = ["-"] * (len(cols) - 3)
            result = ("[yellow]skipped[/yellow]: " if r["status"] == "skipped" else "[red]ERROR[/red]: ") + escape(r["reason"])
        else:
            neurons = ("exact" if r["neuron_exact"] else
                       ("-" if r["neuron_exact"] is None else f"{_pct(r.get('neuron_agreement'))}"))
            cells = [neurons, f"{r['max_abs_diff']:.3g}", _pct(r["top1_agreement"])]
            if report.get("labels"):
                cells.append(_pct(r.get("accuracy")))
            cells += [_pct(r.get("min_layer_agreement")), _divergence_cell(r)]
            result = "[green]pass[/green]" if r["passed"] else "[red]FAIL[/red]: " + escape("; ".join(r["failures"]))
        t.add_row(escape(r["artifact"]), escape(backend), *cells, result)
    c.print(t)
    for u in report.get("unchecked", []):
        verdict = "[yellow]not checked[/yellow] (--allow-skipped)" if report.get("allow_skipped") else "[red]not checked[/red]"
        c.print(f"{verdict}: {escape(u['artifact'])} ({escape(u['format'])}) ran in no backend here: {escape(u['reason'])}")
    c.print("[green]PASSED[/green]" if report["passed"] else "[red]FAILED[/red]")


def _max_opset() -> int:
    """The newest ONNX opset both torch.onnx and the onnx package here support."""
    import onnx

    try:
        from torch.onnx import _constants

        torch_max = int(_constants.ONNX_MAX_OPSET)
    except (ImportError, AttributeError):
        torch_max = onnx.defs.onnx_opset_version()
    return min(torch_max, onnx.defs.onnx_opset_version())


def _warn_non_finite(model) -> None:
    """One warning line when the weights hold NaN / infinity: the export works, its outputs will not."""
    from ..numerics import non_finite_parameters

    bad = non_finite_parameters(model)
    if bad:
        more = f" (+{len(bad) - 5} more)" if len(bad) > 5 else ""
        _err_console().print(f"[yellow]warning:[/yellow] non-finite values (NaN or inf) in {', '.join(bad[:5])}"
                             f"{more}; the exported model will compute NaN", markup=True, highlight=False,
                             soft_wrap=True)


def _spec_file(model: str) -> Optional[Path]:
    """The file of a ``path/to/file.py:factory`` MODEL spec, if it is one."""
    where = model.rpartition(":")[0]
    return Path(where) if where.endswith(".py") and Path(where).is_file() else None


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
        precision: str = typer.Option("float32", "--precision", help="ONNX activations and dsr nodes in float32 | "
                                      "float16 | bfloat16 (membranes stay float32, as in the kernels; for "
                                      "TensorRT 11's strongly typed networks) | int8 (quantised Q/DQ graph, spikes "
                                      "exact, needs --calibration); non-float32 needs --format onnx"),
        calibration: Optional[Path] = typer.Option(None, "--calibration", help="--precision int8: inputs as the "
                                                   "model takes them (.npy, any number along the batch "
                                                   "dimension; default for zoo:digits-cnn: its training split)"),
        int8_all_layers: bool = typer.Option(False, "--int8-all-layers", help="--precision int8: quantise the "
                                             "analog first layer and the readout too (float32 by default)"),
        int8_neuron: str = typer.Option("qdq", "--int8-neuron", help="--precision int8: qdq (Q/DQ around the "
                                        "float32 dsr node; verify checks it teacher-forced) | quantized (dsr "
                                        "ops on uint8 currents giving uint8 spike codes: same results, faster "
                                        "with the custom-op library; verify cannot teacher-force it yet)"),
    ):
        """Export a DSR network to TorchScript, ONNX and/or torch.export (pt2) artifacts with a manifest."""
        from ..export import check_input_shape, export_model, formats
        from ..model_spec import load_model, parse_set_options, parse_shape

        from ..io import check_output_target

        # Before any expensive work: an empty / current folder, an existing one without --force, or one holding
        # the checkpoint or the model file (--force would delete what this command reads).
        check_output_target(out, force=force, protect=(checkpoint, _spec_file(model)))
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
        from ..export import check_precision

        check_precision(precision, wanted)
        if precision != "int8" and (calibration is not None or int8_all_layers or int8_neuron != "qdq"):
            raise UserError("--calibration, --int8-all-layers and --int8-neuron apply to --precision int8")
        if lowering not in ("function", "portable"):
            raise UserError(f"unknown --lowering {lowering!r}; choose function or portable")
        if function_body not in ("scan", "unrolled"):
            raise UserError(f"unknown --function-body {function_body!r}; choose scan or unrolled")
        if not 17 <= opset <= _max_opset():
            raise UserError(f"--opset must be >= 17 and <= {_max_opset()} (what torch.onnx and onnx here "
                            f"support), got {opset}")
        if aot and "pt2" not in wanted:
            raise UserError("--aot compiles the pt2 export; add pt2 to --format")
        from ..io_adapter import io_record

        io_record(1, layout, encode, readout)  # bad options fail before any work
        if mode == "streaming" and (layout, encode, readout) != ("TB", "none", "none"):
            raise UserError("--layout, --encode and --readout apply to multi-step exports, not to --mode streaming")
        shape = parse_shape(input_shape) if input_shape is not None else None  # '' is an error, as ',,,' is
        if shape is not None:
            check_input_shape(shape)
        from ..io import check_can_create

        check_can_create(out.parent if out.parent != Path("") else Path("."))  # creates nothing yet
        set_opts = parse_set_options(settings)
        if shape is not None and model.strip().startswith("zoo:") and "T" not in set_opts:
            set_opts["T"] = str(shape[0])  # a zoo network is built for the T of the input shape given
        loaded = load_model(model, str(checkpoint) if checkpoint else None, trust_pickle, settings=set_opts)
        warn_assumed(loaded)
        _warn_non_finite(loaded.model)
        if shape is None:
            if loaded.default_input_shape is None:
                raise UserError("--input-shape T,B,... is required for a model outside the zoo")
            shape = loaded.default_input_shape
        extra: dict = {}
        if precision == "int8":
            from ..export.quantize import load_calibration

            extra = {"calibration": load_calibration(calibration, loaded.spec, shape, layout, encode),
                     "int8_all_layers": int8_all_layers, "int8_neuron": int8_neuron}
        err = _err_console()
        progress = None if as_json else (lambda msg: err.print(f"[dim]{msg}[/dim]"))
        if mode == "streaming":
            from ..streaming import export_streaming

            manifest = export_streaming(loaded.model, shape, out, formats_=wanted, spec=loaded.spec,
                                        checkpoint=loaded.checkpoint, static_batch=static_batch, force=force,
                                        progress=progress, model_info=loaded.record(), precision=precision,
                                        extra_options=extra)
        else:
            manifest = export_model(
                loaded.model, shape, out, formats_=wanted, spec=loaded.spec, checkpoint=loaded.checkpoint,
                lowering=lowering, opset=opset, function_body=function_body, static_batch=static_batch, aot=aot,
                force=force, trust_pickle=trust_pickle, progress=progress, model_info=loaded.record(),
                io=io_record(shape[0], layout, encode, readout), precision=precision, extra_options=extra,
            )
        if as_json:
            typer.echo(json.dumps(manifest, indent=2))
            return
        from rich.table import Table

        c = _console()
        c.print(f"[bold]exported[/bold] {loaded.spec} -> {out}  (input {manifest['input_shape']}, T={manifest['T']}, "
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
        input_file: Optional[Path] = typer.Option(None, "--input", help="an input as .npy (float), laid out as the "
                                                  "export takes it ([T,B,...] by default)"),
        labels: Optional[Path] = typer.Option(None, "--labels", help="the --input batch's classes as .npy (int, "
                                              "[B]): accuracy is then compared with PyTorch's"),
        min_top1: float = typer.Option(0.99, "--min-top1", help="top-1 agreement with PyTorch to pass"),
        max_accuracy_drop: float = typer.Option(0.5, "--max-accuracy-drop",
                                                help="with --labels: accuracy points below PyTorch's allowed"),
        min_agreement: Optional[float] = typer.Option(None, "--min-agreement", help="opt-in gate: every layer's "
                                                      "end-to-end spike agreement at least this (e.g. 0.999)"),
        random_inputs: int = typer.Option(1, "--random", help="how many generated inputs (seeds 0..N-1)"),
        encoding: Optional[str] = typer.Option(None, "--encoding", help="generated inputs: direct (a static "
                                               "image repeated over T) | noise (N(0,1) every step); default: "
                                               "direct for zoo models fed images, else noise"),
        as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
        model: Optional[str] = typer.Option(None, "--model", help="the MODEL spec to compare against, instead of "
                                            "the manifest's (a folder's own spec is built only for zoo: models)"),
        checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="state dict for the model, instead "
                                                  "of the manifest's"),
        trust_pickle: bool = typer.Option(False, "--trust-pickle", help="allow pickled Python objects in the "
                                          "checkpoint and .pt2 archives (runs code from those files)"),
        trust_model_code: bool = typer.Option(False, "--trust-model-code", help="build the manifest's MODEL spec "
                                              "even when it is code outside the zoo (imports and runs it)"),
        allow_skipped: bool = typer.Option(False, "--allow-skipped", help="pass even when some artifact ran in "
                                           "no backend here (e.g. a TensorRT plan without a GPU)"),
    ):
        """Run every artifact of FOLDER in every available backend against
        the PyTorch model; exit 1 on failure.

        Pass rule, per artifact x backend: (1) every neuron, fed exactly
        the input the PyTorch reference gave it (teacher forcing), gives
        the reference's spikes bit for bit in float32 (>= 99.9 % in
        float16), run alone in that backend with the artifact's own
        parameters; (2) the artifact loads and runs; (3) top-1 agreement
        >= --min-top1 over the inputs; (4) with --labels, accuracy at most
        --max-accuracy-drop points below PyTorch's; (5) only with --min-
        agreement, every layer's end-to-end spike agreement at least that.

        End to end, a backend's own convolutions may round differently
        from PyTorch's (CPU-dependent kernels); the report shows where
        divergence starts and how far that layer's input already differed.

        FOLDER is untrusted: it can never grant trust; only --trust-pickle
        / --trust-model-code do."""
        from ..verify import verify_folder

        if random_inputs < 0:
            raise UserError(f"--random must be >= 0, got {random_inputs}")
        if random_inputs == 0 and input_file is None:
            raise UserError("nothing to compare: --random 0 and no --input")
        err = _err_console()
        report = verify_folder(folder, input_file=str(input_file) if input_file else None,
                               labels_file=str(labels) if labels else None, min_top1=min_top1,
                               max_accuracy_drop=max_accuracy_drop, min_agreement=min_agreement,
                               n_random=random_inputs, encoding=encoding,
                               model=model, checkpoint=str(checkpoint) if checkpoint else None, trust_pickle=trust_pickle,
                               trust_model_code=trust_model_code, allow_skipped=allow_skipped,
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
