"""What the export, verify and inspect commands share: consoles, number formats, the neuron table, --set."""

from __future__ import annotations

from typing import List


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


def warn_assumed(loaded) -> None:
    """The one-line warning on stderr naming the settings a checkpoint did not store and no --set gave."""
    import sys

    for line in [loaded.warning(), *getattr(loaded, "notes", [])]:
        if line:
            print(f"warning: {line}", file=sys.stderr)


SET_HELP = ("KEY=VALUE for the model's factory / constructor (repeatable; e.g. --set T=5 --set num_classes=100 "
            "--set v_threshold=0.6), checked against its signature and recorded in the manifest")


