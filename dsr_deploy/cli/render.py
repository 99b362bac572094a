"""What the commands print: every table and summary of the CLI, from the results the calls return.

Each command is parse (its flags) -> request -> call (the library) -> render (here); nothing here computes
anything the library did not return.
"""

from __future__ import annotations

import json
from typing import Any, List, Mapping, Optional

from .validate import emit_json


def console():
    import sys

    from rich.console import Console

    # Piped output (logs, CI) gets wide tables instead of rich's 80-column default with truncated cells.
    return Console(stderr=False, highlight=False, width=None if sys.stdout.isatty() else 200)


def err_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def fmt_float(v) -> str:
    return "-" if v is None else f"{v:.6g}"


def fmt_coef(v) -> str:
    return "-" if v is None else f"{v:.9g}"


def pct(v) -> str:
    return "-" if v is None else f"{100.0 * v:.4f}%"


def spec_note(spec) -> str:
    """One line from a neuron record's ``spec`` (:mod:`dsr_deploy.neuron_spec`); a bad record gives a note."""
    from ..neuron_spec import NeuronSpec, describe

    try:
        return describe(NeuronSpec(**spec))
    except (TypeError, ValueError):
        return "(no valid spec record)"


def neuron_table(neurons: List[dict], title: str):
    """The neuron layers of a model or manifest (inspect, export, verify)."""
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=title)
    for col in ("#", "layer", "op", "source", "layout", "v_threshold", "alpha", "tau", "delta_t", "rule", "decay",
                "gain", "note"):
        t.add_column(col)
    for n in neurons:
        note = (f"clamped from {fmt_float(n.get('v_threshold_stored'))} to bound "
                f"{fmt_float(n.get('v_threshold_lower_bound'))}" if n.get("clamped") else "")
        layout = f"T*B (T={n.get('timesteps')})" if n.get("layout") == "flat" else "T,B"
        if str(n.get("kind", "")).startswith("sj_"):  # SpikingJelly's: the arithmetic from the typed description
            note = spec_note(n.get("spec"))
        # The coefficients in full (9 digits: a float32 exactly): the two LIF rules differ in the last digits.
        t.add_row(str(n["index"]), escape(n["name"] or "<root>"), escape(n["op_type"]),
                  escape(str(n.get("source", ""))), layout,
                  fmt_float(n["v_threshold"]), fmt_float(n["alpha"]), fmt_float(n.get("tau")),
                  fmt_float(n.get("delta_t")), n.get("lif_rule") or "-", fmt_coef(n.get("decay")),
                  fmt_coef(n.get("gain")), note)
    return t


def warn_non_finite(model) -> None:
    """One warning line when the weights hold NaN / infinity: the export works, its outputs will not."""
    from ..numerics import non_finite_parameters

    bad = non_finite_parameters(model)
    if bad:
        more = f" (+{len(bad) - 5} more)" if len(bad) > 5 else ""
        err_console().print(f"[yellow]warning:[/yellow] non-finite values (NaN or inf) in {', '.join(bad[:5])}"
                            f"{more}; the exported model will compute NaN", markup=True, highlight=False,
                            soft_wrap=True)


def export_summary(manifest: Mapping[str, Any], spec: str, out, as_json: bool) -> None:
    """``dsr-deploy export``: the manifest as JSON, or a line, the artifacts and the neuron table."""
    from rich.table import Table

    from ..manifest import Manifest

    if as_json:
        emit_json(json.dumps(manifest, indent=2))
        return
    m = manifest if isinstance(manifest, Manifest) else Manifest(manifest)
    inputs, outputs = m.io_names()
    c = console()
    c.print(f"[bold]exported[/bold] {spec} -> {out}  (input {list(m.input_shape)}, T={m.T}, "
            f"{'dynamic' if m.dynamic_batch else 'static'} batch"
            + (f"; streaming: {', '.join(inputs)} -> {', '.join(outputs)})" if m.streaming else ")")
            + ("; io: " + ", ".join(f"{k}={v}" for k, v in m.io.items() if k != "source") if m.io else ""))
    t = Table("format", "file", "details", title="artifacts")
    for a in m.artifacts:
        details = ", ".join(f"{k}={v}" for k, v in a.items() if k not in ("format", "path"))
        t.add_row(a["format"], a["path"], details)
    c.print(t)
    c.print(neuron_table(m.neurons, f"{len(m.neurons)} DSR neuron layers"))


def inspect_report(info: dict) -> None:
    """``dsr-deploy inspect``: a MODEL spec, an export folder, an ONNX file or another artifact."""
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
        from ..manifest import Manifest

        m = Manifest(info["manifest"])
        shape = list(m.input_shape) if m.input_shape is not None else None
        c.print(escape(f"{info['path']}: {m.model_spec} T={m.T} input {shape} layout {m.layout} "
                       f"(dsr-deploy {m.version})"))
        if m.model_settings:
            c.print(escape("settings " + ", ".join(f"{k}={v}" for k, v in m.model_settings.items())))
        if m.io:
            c.print(escape("io " + ", ".join(f"{k}={v}" for k, v in m.io.items())))
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


class bench_progress:  # noqa: N801 - used as a context manager: `with bench_progress(iters) as progress:`
    """``dsr-deploy bench``'s progress bars on stderr (configurations, iterations of the current one); yields the
    ``progress(event, **info)`` callback :func:`dsr_deploy.bench.run_benchmark` calls."""

    def __init__(self, iters: Optional[int]):
        self.iters = iters

    def __enter__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=err_console(), transient=True)
        self.bar.__enter__()
        self.tasks = {}
        return self.progress

    def progress(self, event, **info) -> None:
        bar, tasks = self.bar, self.tasks
        if event == "start":
            tasks["all"] = bar.add_task("configurations", total=info["total"])
            tasks["it"] = bar.add_task("iterations", total=info["iters"])
        elif event == "row":
            bar.reset(tasks["it"], total=self.iters)
            bar.update(tasks["it"], description=f"{info['label']} batch={info['batch']} T={info['timesteps']}")
        elif event == "iteration":
            bar.advance(tasks["it"])
        elif event == "row_done":
            bar.advance(tasks["all"])

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)


def bench_report(result, *, json_out=None, csv_out=None, plot=None) -> None:
    """``dsr-deploy bench``: the table on stdout, each backend's dsr ops, and the files asked for."""
    from .. import bench as B

    out = console()
    out.print(B.render_table(result))
    for label, desc in result.entries.items():
        if desc.get("dsr_ops"):
            out.print(f"[dim]{label}: dsr ops: {desc['dsr_ops']}[/dim]")
    for path, write in ((json_out, B.write_json), (csv_out, B.write_csv), (plot, B.write_plot)):
        if path:
            write(result, path)
            out.print(f"wrote {path}")


def serving_ready(info: dict, as_json: bool) -> None:
    """``dsr-deploy serve``: the endpoints and models, once the server is ready (flushed: a caller waits on it)."""
    import sys

    import typer

    if as_json:
        emit_json(json.dumps(info))
    else:
        typer.echo(f"serving {', '.join(m['name'] for m in info['models'])} at {info['http']} "
                   f"(gRPC {info['grpc']}); Ctrl-C or SIGTERM stops")
    sys.stdout.flush()


def repository_summary(summary: dict, out, as_json: bool, k8s=None) -> None:
    """``dsr-deploy triton-repo``: what was written."""
    from pathlib import Path

    import typer

    if as_json:
        emit_json(json.dumps(summary, indent=2))
        return
    typer.echo(f"wrote {out}:")
    for m in summary["models"]:
        typer.echo(f"  {m['name']:<32} {m['backend']:<14} max_batch_size {m['max_batch_size']}"
                   + (f"  ({m['note']})" if m["note"] else ""))
    typer.echo(f"  see {Path(out) / 'README.md'} to start tritonserver")
    if k8s is not None:
        typer.echo(f"wrote {k8s}: {', '.join(summary['k8s']['files'])} (see {Path(k8s) / 'README.md'})")
    if k8s is not None:
        typer.echo(f"wrote {k8s}: {', '.join(summary['k8s']['files'])} (see {Path(k8s) / 'README.md'})")


def quickstart_report(result, console=None) -> None:
    """``dsr-deploy quickstart``: the summary tables and where everything is."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from .. import quickstart as Q

    console = console or Console()
    t = Table(title="verify: every artifact x backend vs PyTorch (held-out + direct-encoded inputs)")
    for col in ("artifact", "backend", "neurons (same input)", "max |diff|", "spikes equal", "top-1",
                "divergence starts", "result"):
        t.add_column(col)
    for r in result.verify["runs"]:
        if r["status"] != "ok":
            t.add_row(r["artifact"], f"{r['backend']} {r.get('variant') or ''}".strip(), "", "", "", "", "",
                      f"[yellow]{r['status']}: {escape(r['reason'])}[/yellow]")
            continue
        agreements = [layer["agreement"] for layer in r.get("layers") or [] if layer.get("agreement") is not None]
        d = r.get("divergence")
        div = "none" if not d else (f"L{d['layer']}: input differs by {d['input_max_rel_diff']:.2g} (rel.)"
                                    if d.get("input_max_rel_diff") is not None else f"L{d['layer']}")
        t.add_row(r["artifact"], f"{r['backend']} {r.get('variant') or ''}".strip(),
                  "[green]bit-exact[/green]" if r.get("neuron_exact") else "[red]DIFFER[/red]",
                  f"{r['max_abs_diff']:g}", f"{min(agreements):.4%}" if agreements else "-",
                  f"{r['top1_agreement']:.2%}" if r.get("top1_agreement") is not None else "-", div,
                  "[green]pass[/green]" if r.get("passed")
                  else "[red]FAIL[/red] " + escape("; ".join(r.get("failures") or [])))
    console.print(t)

    a = Table(title=f"held-out accuracy ({result.heldout} images, T={result.T}); PyTorch"
                    + (" float32" if result.precision != "float32" else "") + f": {result.pytorch_accuracy:.2%}"
                    + (f"; {result.precision} artifacts below" if result.precision != "float32" else ""))
    for col in ("artifact", "backend", "accuracy", "correct", "vs PyTorch"):
        a.add_column(col)
    for r in result.accuracy:
        backend = f"{r.backend} {r.variant}".strip()
        if r.status != "ok":
            a.add_row(r.artifact, backend, f"[yellow]{r.status}: {escape(r.reason)}[/yellow]", "", "")
            continue
        vs = Q.vs_pytorch(r)
        if not Q.within_rule(r, result.pytorch_accuracy, result.precision):
            vs = f"[red]{vs}; more than {Q.max_drop(result.precision)} points below PyTorch[/red]"
        a.add_row(r.artifact, backend, f"{r.accuracy:.2%}", f"{r.correct}/{r.total}", vs)
    console.print(a)

    if result.bench:
        from .. import bench as B

        console.print(B.render_table(Q.bench_from_dict(result.bench)))

    if result.early_exit:
        from ..quickstart_early_exit import render_early_exit

        render_early_exit(result.early_exit, console)
    if result.native:
        console.print("native kernels: " + "; ".join(f"{k}: {escape(str(v))}" for k, v in result.native.items()))
    unusable = {k: v for k, v in result.backends.items() if v}
    if unusable:
        console.print("backends not available here: " + "; ".join(f"{k} ({escape(str(v))})"
                                                                   for k, v in unusable.items()))
    w = Table(title="where everything is", show_header=False)
    w.add_column("what")
    w.add_column("path")
    for k, v in result.files.items():
        w.add_row(k, v)
    console.print(w)
    if result.passed:
        same = all(r.identical_to_pytorch for r in result.accuracy if r.status == "ok")
        console.print("[bold green]quickstart passed[/bold green]: every backend's neurons are bit-exact with "
                      "PyTorch given the same input, and every artifact "
                      + (f"gives PyTorch's logits exactly ({result.pytorch_accuracy:.2%} held-out accuracy)"
                         if same else f"is within {Q.max_drop(result.precision)} points of PyTorch's "
                         f"{result.pytorch_accuracy:.2%} held-out accuracy (see the table)") + ". Next: "
                      f"dsr-deploy bench {result.files.get('export')}  |  "
                      f"dsr-deploy verify {result.files.get('export')}")
    else:
        console.print("[bold red]quickstart FAILED[/bold red]: see the tables above and "
                      f"{result.files.get('summary')}")


def info_report(data: dict) -> None:
    """``dsr-deploy info``: versions and which optional backends are importable."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    console.print(f"[bold]dsr-deploy {data['dsr_deploy']}[/bold]  python {data['python']}  ({data['platform']})")
    t = Table("component", "version / state")
    t.add_row("torch", f"{data['torch']} (CUDA {'yes: ' + data['gpu'] if data['cuda_available'] else 'no'})")
    t.add_row("numpy", data["numpy"])
    t.add_row("onnx", data["onnx"])
    ort = data["onnxruntime"]
    t.add_row("onnxruntime", f"{ort['version']} {', '.join(ort['providers'])}" if ort else "not installed")
    nat = data["native_torch_ops"]
    t.add_row("native torch ops", f"loaded from {nat['path']}" if nat["loaded"] else f"no: {nat['reason']}")
    for name, o in data["optional"].items():
        state = (f"{o['version'] or 'installed'}" if o["importable"]
                 else f"missing (pip install 'dsr-deploy[{o['extra']}]')")
        if o["extra"] == "core" and not o["importable"]:
            state = "missing (core dependency)"
        t.add_row(f"{name}  [dim]{o['enables']}[/dim]", escape(state))
    console.print(t)


def plugins_built(record: dict) -> None:
    """``dsr-deploy plugins build``: what was built where, and what was skipped and why."""
    import typer

    opts = record["options"]
    typer.echo(f"built in {record['seconds']} s into {record['lib_dir']} "
               f"(torch={opts['torch']}, cuda={opts['cuda']}, ort={opts['ort']}, tensorrt={opts['trt']})")
    for key, path in record["libraries"].items():
        typer.echo(f"  {key:12s} {path}")
    for _key, why in record.get("skipped", {}).items():
        typer.secho(f"warning: {why}", fg="yellow", err=True)


def plugins_status(st: dict) -> None:
    """``dsr-deploy plugins status``: each library, whether it loads here and what it was built against."""
    import typer

    typer.echo("library folders: " + ", ".join(st["lib_dirs"]))
    for key, e in st["libraries"].items():
        mark = "built  " if e["built"] else "missing"
        typer.echo(f"{mark} {e['library']:30s} {e['what']}")
        if key == "torch" and e["built"]:
            typer.echo(f"        loaded={e['loaded']} cpu_kernel={e['cpu_kernel']} cuda_kernel={e['cuda_kernel']}")
        typer.echo(f"        {e['reason']}")
        if e.get("build") and e["built"]:
            b = e["build"]
            abi = b.get("ort_abi") or {}
            checked = abi.get("checked_against")
            against = {"torch": f"torch {b.get('torch')}",
                       "ort": f"OrtApi {abi.get('api_version')} (dsr_ort_abi.h"
                              + (f", checked against API {checked.get('ORT_API_VERSION')} header)" if checked else ")"),
                       "trt": f"TensorRT headers {b.get('trt_headers')}",
                       "trt_dynamic": f"TensorRT headers {b.get('trt_headers')}"}.get(key, f"{b.get('compiler')}")
            cuda = b.get("cuda")
            typer.echo(f"        built {b.get('built_at')} against {against}; CUDA "
                       + (f"sm_{cuda['arch']} ({cuda['nvcc']})" if cuda else "off"))
    tc = st["toolchain"]
    typer.echo("toolchain: " + "; ".join([
        f"cmake {'yes' if tc['cmake']['available'] else 'NO'}",
        (f"nvcc yes (toolkit {tc['cuda'].get('root') or 'not found'})" if tc['cuda']['available'] else "nvcc no"),
        f"GPU {'yes' if tc['cuda']['gpu_visible'] else 'no'}",
        f"torch {tc['torch']['version']} (CUDA {tc['torch']['cuda']})",
        f"ORT header for the ABI check {tc['ort']['include'] or 'no (not needed)'}",
        f"TensorRT headers {tc['trt']['include'] or 'no'}",
    ]))
