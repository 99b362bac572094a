"""``dsr-deploy verify``: every artifact of an export folder in every available backend against the PyTorch model
(:mod:`dsr_deploy.verify`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .common import console, err_console, pct
from .validate import emit_json

ORDER = 21  # place in `dsr-deploy --help` (after export)


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

    c = console()
    c.print(f"[bold]verify {escape(report['dir'])}[/bold] against " + escape(
        f"{report['model']}" + (f" + {report['checkpoint']}" if report["checkpoint"] else "")
        + f"; {report.get('samples')} samples"
        + (f" (generated: {g['samples']} {g['encoding']}, seed {g['seed']})" if (g := report.get("generated"))
           and g.get("samples") else "")
        + (f" + {report['labels']}" if report.get("labels") else "")))
    rule = report.get("rule") or {}
    title = (f"pass: neurons exact given the reference's input, no layer defect, top-1 agreement >= "
             f"{pct(rule.get('min_top1'))} over {rule.get('samples')} samples"
             + (f", accuracy within {rule.get('max_accuracy_drop')} points" if report.get("labels") else "")
             + (f", every layer >= {pct(rule.get('min_agreement'))}" if rule.get("min_agreement") is not None else "")
             + (f"; int8: {rule['int8']}" if any(r.get("precision") == "int8" for r in report.get("runs", []))
                and rule.get("int8") else ""))
    t = Table(title=title)
    cols = ["artifact", "backend", "neurons", "max |diff|", "top-1"]
    if report.get("labels"):
        cols.append(f"accuracy (PyTorch {pct(report.get('pytorch_accuracy'))})")
    cols += ["spikes equal (lowest layer)", "divergence starts", "verdict", "result"]
    for col in cols:
        t.add_column(col)
    for r in report["runs"]:
        backend = r["backend"] + (f" ({r['variant']})" if r["variant"] else "")
        if r["status"] != "ok":
            cells = ["-"] * (len(cols) - 3)
            result = (("[yellow]skipped[/yellow]: " if r["status"] == "skipped" else "[red]ERROR[/red]: ")
                      + escape(r["reason"]))
        else:
            neurons = ("exact" if r["neuron_exact"] else
                       ("-" if r["neuron_exact"] is None else f"{pct(r.get('neuron_agreement'))}"))
            cells = [neurons, f"{r['max_abs_diff']:.3g}", pct(r["top1_agreement"])]
            if report.get("labels"):
                cells.append(pct(r.get("accuracy")))
            cells += [pct(r.get("min_layer_agreement")), _divergence_cell(r), r.get("verdict") or "-"]
            result = "[green]pass[/green]" if r["passed"] else "[red]FAIL[/red]: " + escape("; ".join(r["failures"]))
        t.add_row(escape(r["artifact"]), escape(backend), *cells, result)
    c.print(t)
    for r in report["runs"]:
        for d in r.get("defects") or []:
            c.print(f"[red]defect[/red] in {escape(r['artifact'])} on {escape(r['backend'])}: {escape(d['text'])}")
    for u in report.get("unchecked", []):
        verdict = ("[yellow]not checked[/yellow] (--allow-skipped)" if report.get("allow_skipped")
                   else "[red]not checked[/red]")
        c.print(f"{verdict}: {escape(u['artifact'])} ({escape(u['format'])}) ran in no backend here: "
                f"{escape(u['reason'])}")
    c.print("[green]PASSED[/green]" if report["passed"] else "[red]FAILED[/red]")




def register(app: typer.Typer) -> None:
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
        samples: Optional[int] = typer.Option(None, "--samples", help="generated samples (default without "
                                              "--input: at least 16, more for a small model; with --input: 0)"),
        seed: int = typer.Option(0, "--seed", help="seed of the generated samples (recorded in the report)"),
        encoding: Optional[str] = typer.Option(None, "--encoding", help="generated inputs: static | direct (a "
                                               "static image repeated over T) | events (DVS-style counts >= 0) | "
                                               "noise (N(0,1) every step); default: from the artifact's I/O"),
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
        parameters; (2) the artifact loads and runs; (3) no defect: each
        layer's input, computed from the reference's spikes upstream, is
        within its own arithmetic of the reference's (float rounding; int8:
        a few steps of its recorded scale); (4) top-1 agreement >= --min-
        top1 over the samples (at least 16 generated by default); (5) with
        --labels, accuracy at most --max-accuracy-drop points below
        PyTorch's; (6) only with --min-agreement, every layer's end-to-end
        spike agreement at least that.

        End to end, a backend's own convolutions may round differently
        from PyTorch's (CPU-dependent kernels) and flip a spike that then
        spreads: the verdict says "numerical divergence", not "defect".
        Streaming folders are stepped over T against the multi-step model.

        FOLDER is untrusted: it can never grant trust; only --trust-pickle
        / --trust-model-code do."""
        from ..verify import verify_folder

        err = err_console()
        report = verify_folder(folder, input_file=str(input_file) if input_file else None,
                               labels_file=str(labels) if labels else None, min_top1=min_top1,
                               max_accuracy_drop=max_accuracy_drop, min_agreement=min_agreement,
                               samples=samples, seed=seed, encoding=encoding,
                               model=model, checkpoint=str(checkpoint) if checkpoint else None,
                               trust_pickle=trust_pickle,
                               trust_model_code=trust_model_code, allow_skipped=allow_skipped,
                               progress=None if as_json else (lambda m: err.print(f"[dim]{m}[/dim]")))
        if as_json:
            emit_json(json.dumps(report, indent=2))
        else:
            _print_verify(report)
        if not report["passed"]:
            # SystemExit, not typer.Exit: main() runs click with standalone_mode=False, which turns
            # typer.Exit into a return value that main() drops (the process would exit 0).
            raise SystemExit(1)

