"""``dsr-deploy exit-calibrate``: pick the cheapest early-exit rule that keeps the accuracy, record it in the
manifest (:mod:`dsr_deploy.early_exit`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..errors import UserError
from ..manifest import as_manifest
from .common import console

ORDER = 32  # place in `dsr-deploy --help` (after bench)


def _load_npy(option: str, path: Path):
    """A user's .npy file (never unpickled); one-line errors."""
    import numpy as np

    if not path.is_file():
        raise UserError(f"{option} {path}: no such file")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:
        raise UserError(f"{option} {path} is not a readable .npy array ({type(exc).__name__})") from exc


def read_data(manifest, input_file: Path, labels_file: Path):
    """(inputs as the artifact takes them, labels), checked against the manifest's input shape."""
    import numpy as np

    x = _load_npy("--input", input_file)
    if not np.issubdtype(x.dtype, np.floating):
        raise UserError(f"--input {input_file} must hold a floating-point array, got {x.dtype}")
    shape = tuple(manifest.input_shape or ())
    lead = 1 if (as_manifest(manifest).io or {}).get("input_layout") == "static" else 2
    if not shape or x.ndim != len(shape) or tuple(x.shape[lead:]) != shape[lead:] or min(x.shape[:lead]) < 1:
        raise UserError(f"--input {input_file} has shape {list(x.shape)}; expected the export's {list(shape)} "
                        "with any batch")
    T = as_manifest(manifest).T or shape[0]
    t_axis = {"BT": 1, "static": None}.get((as_manifest(manifest).io or {}).get("input_layout"), 0)
    if t_axis is not None and x.shape[t_axis] != T:
        raise UserError(f"--input {input_file} has T={x.shape[t_axis]}; the export's T is {T}")
    y = _load_npy("--labels", labels_file)
    b = x.shape[0 if lead == 1 or t_axis == 1 else 1]
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or len(y) != b:
        raise UserError(f"--labels {labels_file} must hold {b} integer class labels (one per input), got "
                        f"{y.dtype} {list(y.shape)}")
    return np.ascontiguousarray(x.astype(np.float32)), y.astype(np.int64)


def print_curve(result: dict) -> None:
    from rich.table import Table

    c = console()
    t = Table(title=f"accuracy vs mean steps ({result['samples']} inputs, T={result['T']}; full T: "
                    f"{result['full_accuracy']:.2%}; bound: {result['max_drop']:g} points)")
    for col in ("rule", "mean steps", "accuracy", "vs full T"):
        t.add_column(col)
    for p in result["frontier"]:
        mark = " [green]<- chosen[/green]" if p is result["chosen"] else ""
        t.add_row(str(p.rule) + mark, f"{p.mean_steps:.2f}", f"{p.accuracy:.2%}",
                  f"{100 * (p.accuracy - result['full_accuracy']):+.2f} pts")
    c.print(t)
    c.print("every sample stopped at step t: " + ", ".join(f"{f['steps']}: {f['accuracy']:.1%}"
                                                          for f in result["fixed_steps"]))
    best = result["chosen"]
    c.print(f"chosen: [bold]{best.rule}[/bold]: {best.accuracy:.2%} at {best.mean_steps:.2f} mean steps of "
            f"{result['T']} ({result['T'] / max(best.mean_steps, 1e-9):.2f}x fewer steps)")


def write_plot(result: dict, path: Path) -> None:
    from ..errors import require
    from ..io import atomic_path

    matplotlib = require("matplotlib", "bench", "exit-calibrate --plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    pts = result["points"]
    ax.scatter([p.mean_steps for p in pts], [100 * p.accuracy for p in pts], s=8, alpha=0.4, label="rules")
    fr = result["frontier"]
    ax.plot([p.mean_steps for p in fr], [100 * p.accuracy for p in fr], "-o", ms=3, label="frontier")
    fixed = result["fixed_steps"]
    ax.plot([f["steps"] for f in fixed], [100 * f["accuracy"] for f in fixed], "--", label="all stop at t")
    best = result["chosen"]
    ax.scatter([best.mean_steps], [100 * best.accuracy], marker="*", s=150, color="red", label=str(best.rule))
    ax.axhline(100 * result["full_accuracy"] - result["max_drop"], color="grey", lw=0.8, ls=":")
    ax.set_xlabel("mean time steps")
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(str(tmp), format="png", dpi=120)
    plt.close(fig)


def calibrate_folder(folder: Path, input_file: Path, labels_file: Path, max_drop: float,
                     backend: Optional[str] = None, record: bool = True) -> dict:
    """Run the artifact once over the data, weigh every rule, record the chosen one in ``folder``'s manifest."""
    from ..early_exit import calibrate, manifest_record
    from ..manifest import read_manifest, write_manifest
    from ..runtime import load_runner
    from ..runtime.early_exit import manifest_readout, readouts_of

    manifest = read_manifest(folder)
    x, y = read_data(manifest, input_file, labels_file)
    if manifest.get("early_exit"):  # a previous calibration's readout is not trusted over the export's own
        manifest = type(manifest)({k: v for k, v in manifest.items() if k != "early_exit"}, manifest.source,
                                  manifest.folder)
    runner = load_runner(folder, backend)
    with runner:
        readouts = readouts_of(runner, x, manifest)
    result = calibrate(readouts, y, max_drop)
    result["record"] = manifest_record(result, manifest_readout(manifest), Path(input_file).name)
    result["backend"] = runner.backend
    if record:
        write_manifest(folder, {**manifest, "early_exit": result["record"]})
    return result


def bench_early_exit_cli(artifact: str, rule: Optional[str], input_file: Optional[Path],
                         labels_file: Optional[Path], *, backend, batch: str, iters: Optional[int], threads,
                         json_out: Optional[Path]) -> None:
    """``dsr-deploy bench DIR --early-exit RULE --input X.npy [--labels y.npy]``
    (:mod:`dsr_deploy.bench.early_exit`)."""
    import numpy as np

    from ..bench import parse_backends, parse_int_list
    from ..bench.early_exit import bench_early_exit, render_rows
    from ..io import atomic_write_text, check_output_file
    from ..machine import machine_info
    from ..manifest import read_manifest
    from ..runtime import load_runner

    if rule is None or input_file is None:
        raise UserError("bench --early-exit RULE needs --input X.npy (and --input / --labels need --early-exit)")
    folder = Path(artifact)
    manifest = read_manifest(folder)
    batches = parse_int_list(batch, "--batch")
    if not batches or min(batches) < 1:
        raise UserError("--batch: give positive batch sizes")
    if iters is not None and iters < 1:
        raise UserError(f"--iters must be >= 1, got {iters}")
    if json_out is not None:
        check_output_file(json_out, "--json")
    if labels_file is not None:
        x, y = read_data(manifest, input_file, labels_file)
    else:
        x, y = _load_npy("--input", input_file).astype(np.float32), None
    choices = parse_backends(backend) or [(None, None, {})]
    if len(choices) != 1:
        raise UserError("bench --early-exit runs one backend; give one --backend")
    _, name, opts = choices[0]
    opts = {**opts, **({"threads": threads} if threads else {})}
    runner = load_runner(folder, name, **opts)
    with runner:
        batch_axis = 0 if (as_manifest(manifest).io or {}).get("input_layout") in ("BT", "static") else 1
        rows = bench_early_exit(runner, x, rule, batches, passes=iters or 3, labels=y, batch_axis=batch_axis)
        label = runner.backend
    console().print(render_rows(rows, f"early exit on {folder} ({label}; {x.shape[batch_axis]} samples, "
                                      f"T={as_manifest(manifest).T}; passes {iters or 3} after a warm-up)"))
    if json_out is not None:
        import os

        doc = {"artifact": str(folder), "backend": label, "rule": rule, "rows": rows, "machine": machine_info(),
               "load_average": list(os.getloadavg())}
        atomic_write_text(json_out, json.dumps(doc, indent=2) + "\n")
        console().print(f"wrote {json_out}")


def register(app: typer.Typer) -> None:
    @app.command("exit-calibrate")
    def exit_calibrate(
        folder: Path = typer.Argument(..., help="export folder (streaming, spikes out, or --per-step-readout)"),
        input_file: Path = typer.Option(..., "--input", help=".npy inputs as the artifact takes them (held-out "
                                        "data, the whole sequence [T, B, ...] for a streaming export)"),
        labels_file: Path = typer.Option(..., "--labels", help=".npy integer labels, one per input"),
        max_drop: float = typer.Option(0.5, "--max-drop", help="accuracy kept within this many percentage "
                                       "points of the full-T accuracy"),
        plot: Optional[Path] = typer.Option(None, "--plot", help="write the accuracy / mean-steps curve as PNG"),
        backend: Optional[str] = typer.Option(None, "--backend", help="backend to run the artifact on"),
        dry_run: bool = typer.Option(False, "--dry-run", help="print the curve; leave the manifest as it is"),
        as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
    ):
        """Pick the cheapest early-exit rule whose accuracy stays within --max-drop points of the full-T
        accuracy, record it in the manifest (early_exit) and print the accuracy / mean-steps curve."""
        import math

        from ..io import check_output_file

        if not math.isfinite(max_drop) or max_drop < 0:
            raise UserError(f"--max-drop must be a finite number of percentage points >= 0, got {max_drop}")
        if plot is not None:
            check_output_file(plot, "--plot")
            from ..errors import require

            require("matplotlib", "bench", "exit-calibrate --plot")
        result = calibrate_folder(folder, input_file, labels_file, max_drop, backend, record=not dry_run)
        if plot is not None:
            write_plot(result, plot)
        if as_json:
            typer.echo(json.dumps({"early_exit": result["record"], "backend": result["backend"],
                                   "fixed_steps": result["fixed_steps"],
                                   "frontier": [p.to_dict() for p in result["frontier"]]}, indent=2))
            return
        print_curve(result)
        console().print(("not recorded (--dry-run)" if dry_run else f"recorded in {folder}/manifest.json")
                        + (f"; curve: {plot}" if plot else ""))
