"""The benchmark's result document (``docs/bench-schema.md``) and its writers: JSON, CSV, a plot, the table."""

from __future__ import annotations

import csv
import datetime as _dt
import io
from dataclasses import dataclass, field
from pathlib import Path

from ..machine import library_versions, machine_info
from ..runtime.base import Runner

SCHEMA = "dsr-deploy-bench"
SCHEMA_VERSION = 1

CSV_COLUMNS = [
    "schema_version", "label", "backend", "device", "batch", "timesteps", "iterations",
    "p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "max_ms", "std_ms",
    "samples_per_s", "neuron_steps_per_s", "speedup_vs_first", "memcpy_ms", "vs_memcpy",
    "error", "cpu_model", "gpu", "created",
]


@dataclass
class BenchEntry:
    """One line of the comparison: a label and a runner (created, not necessarily loaded)."""

    label: str
    runner: Runner


@dataclass
class BenchResult:
    artifact: str
    settings: dict
    entries: dict  # label -> runner description
    rows: list[dict]
    machine: dict = field(default_factory=machine_info)
    libraries: dict = field(default_factory=library_versions)
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "created": self.created,
                "artifact": self.artifact, "machine": self.machine, "libraries": self.libraries,
                "settings": self.settings, "entries": self.entries, "results": self.rows}

    def csv_text(self) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
        w.writeheader()
        for r in self.rows:
            lat = r.get("latency_ms") or {}
            thr = r.get("throughput") or {}
            w.writerow({
                "schema_version": SCHEMA_VERSION, "label": r["label"], "backend": r["backend"],
                "device": r["device"], "batch": r["batch"], "timesteps": r["timesteps"],
                "iterations": r.get("iterations", 0),
                **{f"{k}_ms": _num(lat.get(k)) for k in ("p50", "p90", "p99", "mean", "min", "max", "std")},
                "samples_per_s": _num(thr.get("samples_per_s")),
                "neuron_steps_per_s": _num(thr.get("neuron_steps_per_s")),
                "speedup_vs_first": _num(r.get("speedup_vs_first")), "memcpy_ms": _num(r.get("memcpy_ms")),
                "vs_memcpy": _num(r.get("vs_memcpy")), "error": r.get("error") or "",
                "cpu_model": self.machine.get("cpu_model"), "gpu": self.machine.get("gpu") or "",
                "created": self.created,
            })
        return buf.getvalue()


def _num(v) -> str:
    return "" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v))



def write_json(result: BenchResult, path: Path | str) -> Path:
    import json

    from ..io import atomic_write_text

    return atomic_write_text(path, json.dumps(result.to_dict(), indent=2) + "\n")


def write_csv(result: BenchResult, path: Path | str) -> Path:
    from ..io import atomic_write_text

    return atomic_write_text(path, result.csv_text())


def write_plot(result: BenchResult, path: Path | str) -> Path:
    """PNG: p50 latency against batch (log-log), one line per entry (and per T when several)."""
    from ..errors import require
    from ..io import atomic_path

    matplotlib = require("matplotlib", "bench", "bench --plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict = {}
    for r in result.rows:
        if r["latency_ms"]:
            series.setdefault((r["label"], r["timesteps"]), []).append((r["batch"], r["latency_ms"]["p50"]))
    many_t = len({t for _, t in series}) > 1
    for (label, t), pts in series.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{label} T={t}" if many_t else label)
    from matplotlib.ticker import ScalarFormatter

    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_xticks(sorted({r["batch"] for r in result.rows}))
    ax.set_xlabel("batch size")
    ax.set_ylabel("latency p50 (ms)")
    gpu = result.machine.get("gpu")
    ax.set_title(f"{Path(result.artifact).name or 'model'} on {gpu or result.machine.get('cpu_model')}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return Path(path)


def render_table(result: BenchResult):
    """A rich Table of the rows (the CLI prints it)."""
    from rich.table import Table

    t = Table(title=f"dsr-deploy bench: {result.artifact}", caption=_caption(result))
    for col in ("backend", "batch", "T", "p50 ms", "p90 ms", "p99 ms", "mean ms", "min ms", "samples/s",
                "neuron-steps/s", f"vs {result.settings['baseline']}", "vs memcpy"):
        t.add_column(col, justify="left" if col == "backend" else "right")
    for r in result.rows:
        if not r["latency_ms"]:
            t.add_row(r["label"], str(r["batch"]), str(r["timesteps"]), f"[yellow]{r['error']}[/yellow]",
                      *[""] * 8)
            continue
        lat, thr = r["latency_ms"], r["throughput"]
        t.add_row(r["label"], str(r["batch"]), str(r["timesteps"]),
                  *(f"{lat[k]:.3f}" for k in ("p50", "p90", "p99", "mean", "min")),
                  f"{thr['samples_per_s']:.1f}",
                  f"{thr['neuron_steps_per_s']:.3g}" if thr["neuron_steps_per_s"] else "-",
                  f"{r['speedup_vs_first']:.2f}x" if r["speedup_vs_first"] else "-",
                  f"{r['vs_memcpy']:.1f}x" if r["vs_memcpy"] else "-")
    return t


def _caption(result: BenchResult) -> str:
    m = result.machine
    hw = f"{m.get('cpu_model')} ({m.get('cpu_cores_usable')} usable cores)"
    if m.get("gpu"):
        hw += f", {m['gpu']} (driver {m.get('gpu_driver')})"
    return (f"{hw}; torch {result.libraries.get('torch')}, onnxruntime {result.libraries.get('onnxruntime')}; "
            f"'vs {result.settings['baseline']}' = its mean / this mean (>1 = faster); "
            "'vs memcpy' = mean / copy of the same bytes")
