"""What the commands print: every table and summary of the CLI, from the results the calls return.

Each command is parse (its flags) -> request -> call (the library) -> render (here); nothing here computes
anything the library did not return.
"""

from __future__ import annotations

import json
from typing import Any, List, Mapping


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
    import typer
    from rich.table import Table

    from ..manifest import Manifest

    if as_json:
        typer.echo(json.dumps(manifest, indent=2))
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
