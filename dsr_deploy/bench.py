"""Latency benchmarking across backends, written against :class:`dsr_deploy.runtime.Runner` only.

For every entry (a labelled runner) x batch x time steps: warm-up runs (excluded), then timed runs until an
iteration count or a time budget; latency p50/p90/p99/mean/min/max/std in milliseconds, throughput in
samples/s and neuron-steps/s, the ratio to the first entry (``speedup_vs_first`` = first mean / this mean, so
> 1 is faster) and to a memcpy of the same bytes measured in the same run (``vs_memcpy`` = mean / memcpy time).

Timing: on a GPU device each run is bracketed by CUDA events with a device synchronisation before the end
event (so work on any stream is counted); on the CPU ``time.perf_counter_ns`` (monotonic). Outputs are not
copied to the host inside the timed region (``infer(copy_outputs=False)``); GPU inputs are placed on the device
once, before timing.

The result document (``BenchResult.to_dict()``, written by ``--json``) and the CSV (``--csv``) follow
``docs/bench-schema.md``; ``SCHEMA_VERSION`` changes whenever a field changes meaning or is removed.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import math
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .errors import UserError
from .runtime.base import Runner, one_line

SCHEMA = "dsr-deploy-bench"
SCHEMA_VERSION = 1

CSV_COLUMNS = [
    "schema_version", "label", "backend", "device", "batch", "timesteps", "iterations",
    "p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "max_ms", "std_ms",
    "samples_per_s", "neuron_steps_per_s", "speedup_vs_first", "memcpy_ms", "vs_memcpy",
    "error", "cpu_model", "gpu", "created",
]


# ---------------------------------------------------------------------------------------------------------
# Machine and library description.

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu_driver() -> Optional[str]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def machine_info() -> dict:
    """CPU model, cores, memory, GPU name and driver of this machine."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count()
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    info = {"hostname": platform.node(), "os": platform.platform(), "cpu_model": cpu_model(),
            "cpu_cores": os.cpu_count(), "cpu_cores_usable": usable, "memory_gib": mem_gib,
            "gpu": None, "gpu_count": 0, "gpu_driver": None, "cuda_runtime": None}
    try:
        import torch

        info["cuda_runtime"] = torch.version.cuda
        if torch.cuda.is_available():
            info.update(gpu=torch.cuda.get_device_name(0), gpu_count=torch.cuda.device_count(),
                        gpu_driver=_gpu_driver())
    except ImportError:  # pragma: no cover
        pass
    return info


def library_versions() -> dict:
    from importlib import metadata

    from . import __version__

    out = {"python": platform.python_version(), "dsr_deploy": __version__}
    for dist in ("torch", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "spikingjelly"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


# ---------------------------------------------------------------------------------------------------------
# Statistics.

def percentile(sorted_ms: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default) of an already sorted sequence."""
    return float(np.percentile(np.asarray(sorted_ms, dtype=np.float64), q))


def summarize(times_ms: Sequence[float], batch: int, timesteps: int, neurons: Optional[int]) -> dict:
    if not times_ms:
        raise ValueError("no timed iterations")
    t = np.sort(np.asarray(times_ms, dtype=np.float64))
    mean = float(t.mean())
    lat = {"p50": percentile(t, 50), "p90": percentile(t, 90), "p99": percentile(t, 99), "mean": mean,
           "min": float(t[0]), "max": float(t[-1]), "std": float(t.std(ddof=1)) if len(t) > 1 else 0.0}
    samples = batch / (mean / 1e3)
    return {"latency_ms": lat, "iterations": len(t),
            "throughput": {"samples_per_s": samples,
                           "neuron_steps_per_s": samples * timesteps * neurons if neurons else None}}


# ---------------------------------------------------------------------------------------------------------
# Timing loops.

class Timer:
    """Times one call: CUDA events + device synchronisation on a GPU, the monotonic clock on the CPU."""

    def __init__(self, device: str, synchronize: Callable[[], None]):
        self.gpu = device.startswith("cuda")
        self.synchronize = synchronize
        if self.gpu:
            import torch

            self._torch = torch
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)

    def time_ms(self, fn: Callable[[], Any]) -> float:
        if self.gpu:
            self._start.record()
            fn()
            self.synchronize()
            self._end.record()
            self._end.synchronize()
            return float(self._start.elapsed_time(self._end))
        t0 = time.perf_counter_ns()
        fn()
        self.synchronize()
        return (time.perf_counter_ns() - t0) / 1e6


def run_timed(fn: Callable[[], Any], timer: Timer, warmup: int, iters: Optional[int],
              seconds: Optional[float], on_iteration: Optional[Callable[[], None]] = None) -> list[float]:
    """Warm-up calls (not recorded), then timed calls until ``iters`` or ``seconds`` (at least one)."""
    for _ in range(warmup):
        fn()
    timer.synchronize()
    times: list[float] = []
    deadline = time.monotonic() + seconds if seconds else None
    while True:
        times.append(timer.time_ms(fn))
        if on_iteration:
            on_iteration()
        if iters is not None and len(times) >= iters:
            break
        if deadline is not None and time.monotonic() >= deadline:
            break
    return times


def memcpy_ms(nbytes: int, device: str, warmup: int = 2, iters: int = 10) -> float:
    """Median time of copying ``nbytes`` once on ``device`` (the floor any runner is compared with)."""
    import torch

    n = max(1, nbytes // 4)
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    sync = (lambda: torch.cuda.synchronize(device)) if device.startswith("cuda") else (lambda: None)
    times = run_timed(lambda: dst.copy_(src), Timer(device, sync), warmup, iters, None)
    return float(np.median(times))


# ---------------------------------------------------------------------------------------------------------
# Inputs and neuron counts.

def input_spec(runner: Runner, fallback_shape: Optional[Sequence[int]] = None, io: Optional[dict] = None):
    """The single multi-step input ``[T, B, ...]`` of ``runner``: (name, per-sample dims, dtype, fixed T).

    ``io`` (the manifest's record): the artifact's input is ``[B, T, ...]`` or static ``[B, ...]``; its shape
    is read as the network's ``[T, B, ...]`` (a static input has the fixed T of the record)."""
    from .io_adapter import canonical_shape

    specs = runner.inputs()
    if len(specs) != 1:
        raise UserError(f"bench: {runner.backend} model takes {len(specs)} inputs "
                        f"({', '.join(s.name for s in specs)}); "
                        "bench runs multi-step models with one input [T, B, ...]")
    spec = specs[0]
    shape = spec.shape
    if shape is not None and io:
        shape = canonical_shape(shape, io)
    if shape is not None and len(shape) < 2:
        raise UserError(f"bench: input {spec.name!r} has rank {len(shape)}; expected [T, B, ...]")
    if fallback_shape is not None and shape is not None:
        if len(shape) != len(fallback_shape) or any(
                isinstance(d, int) and d >= 0 and d != int(f) for d, f in zip(shape[2:], fallback_shape[2:])):
            dims = ",".join("?" if not isinstance(d, int) or d < 0 else str(d) for d in shape)
            raise UserError(f"bench: --input-shape {','.join(map(str, fallback_shape))} does not match the "
                            f"{runner.backend} model input [{dims}]")
    if shape is None or any(not isinstance(d, int) or d < 0 for d in shape[2:]):
        if fallback_shape is None:
            raise UserError(f"bench: cannot tell the input shape of {runner.artifact} ({runner.backend}); "
                            "pass --input-shape T,B,C,H,W")
        tail = tuple(int(d) for d in fallback_shape[2:])
    else:
        tail = tuple(int(d) for d in shape[2:])
    fixed_t = shape[0] if shape is not None and isinstance(shape[0], int) and shape[0] > 0 else None
    fixed_b = shape[1] if shape is not None and isinstance(shape[1], int) and shape[1] > 0 else None
    return spec.name, tail, spec.dtype or "float32", fixed_t, fixed_b


def count_neurons(model, sample_shape: Sequence[int]) -> Optional[int]:
    """Neurons per sample per time step of an eager model: summed outputs of its DSR neuron modules."""
    import torch

    hits: list[int] = []

    def hook(_m, _inp, out):
        if isinstance(out, torch.Tensor) and out.dim() >= 2:
            hits.append(out[0, 0].numel())

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if type(m).__name__ in ("DSRIFNode", "DSRLIFNode")]
    if not handles:
        return None
    try:
        with torch.inference_mode():
            for m in model.modules():
                if callable(getattr(m, "reset", None)) and type(m).__name__ in ("DSRIFNode", "DSRLIFNode"):
                    m.reset()
            p = next(model.parameters(), None)
            model(torch.zeros(tuple(sample_shape), dtype=p.dtype if p is not None else torch.float32,
                              device=p.device if p is not None else "cpu"))
    finally:
        for h in handles:
            h.remove()
    return sum(hits) or None


def neurons_from_manifest(manifest: Optional[dict]) -> Optional[int]:
    """Neurons per sample per step from an export manifest's ``neurons`` list, when it gives sizes."""
    if not manifest or not isinstance(manifest.get("neurons"), list):
        return None
    total = 0
    for n in manifest["neurons"]:
        if not isinstance(n, dict):
            return None
        size = n.get("neurons") or n.get("size") or n.get("numel")
        shape = n.get("shape") or n.get("step_shape") or n.get("output_shape")
        if isinstance(size, int):
            total += size
        elif isinstance(shape, list) and all(isinstance(d, int) for d in shape):
            total += math.prod(shape[2:] if n.get("layout", "TB") == "TB" and len(shape) > 2 else shape)
        else:
            return None
    return total or None


def make_input(shape: Sequence[int], dtype: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(0.5, 1.0, size=tuple(shape)).astype(dtype if dtype != "bfloat16" else "float32")


# ---------------------------------------------------------------------------------------------------------
# The benchmark.

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


def run_benchmark(entries: Sequence[BenchEntry], batches: Sequence[int], timesteps: Optional[Sequence[int]] = None,
                  *, warmup: int = 3, iters: Optional[int] = 20, seconds: Optional[float] = None,
                  input_shape: Optional[Sequence[int]] = None, neurons: Optional[int] = None,
                  artifact: str = "", memcpy: bool = True, progress: Optional[Any] = None,
                  settings_extra: Optional[dict] = None) -> BenchResult:
    """Time every entry at every batch (and T where the entry's artifact allows a different T).

    ``timesteps`` None: the T of ``input_shape`` or of each artifact. ``progress``: a callable
    ``progress(event, **info)`` (the CLI draws a rich progress bar with it).
    """
    if not entries:
        raise UserError("bench: nothing to benchmark")
    if iters is None and not seconds:
        raise UserError("bench: give an iteration count or a time budget")
    if iters is not None and iters < 1:
        raise UserError(f"bench: --iters must be >= 1, got {iters}")
    if warmup < 0:
        raise UserError(f"bench: --warmup must be >= 0, got {warmup}")
    for b in batches:
        if b < 1:
            raise UserError(f"bench: batch sizes must be >= 1, got {b}")
    notify = progress or (lambda *a, **k: None)
    plans = []
    for e in entries:
        e.runner.ensure_loaded()
        io = _manifest_io(e.runner)
        from .io_adapter import canonical_shape

        manifest_shape = _manifest_shape(e.runner)
        shape_hint = input_shape or (canonical_shape(manifest_shape, io) if manifest_shape else None) \
            or getattr(e.runner, "example_shape", None)
        name, tail, dtype, fixed_t, fixed_b = input_spec(e.runner, shape_hint, io)
        ts = list(timesteps) if timesteps else [fixed_t or (shape_hint[0] if shape_hint else None)]
        if ts == [None]:
            raise UserError(f"bench: {e.label}: the number of time steps is dynamic; pass --timesteps")
        plans.append((e, name, tail, dtype, fixed_t, fixed_b, ts, io))
    combos = [(e, b, t) for (e, *_r, ts, _io) in plans for b in batches for t in ts]
    notify("start", total=len(combos), iters=iters, seconds=seconds)
    rows: list[dict] = []
    memcpy_cache: dict = {}
    for (e, name, tail, dtype, fixed_t, fixed_b, ts, io) in plans:
        runner = e.runner
        for b in batches:
            for t in ts:
                row = {"label": e.label, "backend": runner.backend, "device": runner.device, "batch": b,
                       "timesteps": t, "input_shape": [t, b, *tail], "iterations": 0, "latency_ms": None,
                       "throughput": None, "speedup_vs_first": None, "memcpy_ms": None, "vs_memcpy": None,
                       "error": None}
                notify("row", label=e.label, batch=b, timesteps=t)
                if fixed_t is not None and t != fixed_t:
                    row["error"] = f"skipped: the artifact has a fixed T={fixed_t}"
                elif fixed_b is not None and b != fixed_b:
                    row["error"] = f"skipped: the artifact has a fixed batch {fixed_b}"
                else:
                    try:
                        row.update(_time_one(runner, name, (t, b, *tail), dtype, warmup, iters, seconds, neurons,
                                             lambda: notify("iteration"), io))
                        if memcpy:
                            key = (runner.device, row["bytes_moved"])
                            if key not in memcpy_cache:
                                memcpy_cache[key] = memcpy_ms(row["bytes_moved"], runner.device)
                            row["memcpy_ms"] = memcpy_cache[key]
                            row["vs_memcpy"] = row["latency_ms"]["mean"] / row["memcpy_ms"]
                    except UserError as exc:
                        row["error"] = str(exc)
                    except Exception as exc:  # one backend failing must not lose the others' numbers
                        row["error"] = f"{type(exc).__name__}: {one_line(exc)}"
                rows.append(row)
                notify("row_done", label=e.label, batch=b, timesteps=t, row=row)
    _add_ratios(rows, entries[0].label)
    settings = {"batches": list(batches), "timesteps": list(timesteps) if timesteps else None, "warmup": warmup,
                "iters": iters, "seconds": seconds, "neurons_per_sample": neurons,
                "baseline": entries[0].label, **(settings_extra or {})}
    described = {}
    for e in entries:
        try:
            described[e.label] = e.runner.describe()
        except Exception as exc:  # pragma: no cover - describe is cheap and safe
            described[e.label] = {"backend": e.runner.backend, "error": one_line(exc)}
    return BenchResult(artifact=artifact, settings=settings, entries=described, rows=rows)


def _manifest_io(runner: Runner) -> Optional[dict]:
    """The export manifest's ``io`` record (layout, encoding, readout) for a runner's artifact, if any."""
    from .runtime.base import manifest_for

    if not isinstance(runner.artifact, (str, Path)):
        return None
    m = manifest_for(runner.artifact)
    io = m.get("io") if m else None
    return io if isinstance(io, dict) and io.get("input_layout") in ("TB", "BT", "static") else None


def _manifest_shape(runner: Runner) -> Optional[list]:
    """The export manifest's ``[T, B, ...]`` for a runner whose artifact sits in an export folder."""
    from .runtime.base import manifest_for

    if not isinstance(runner.artifact, (str, Path)):
        return None
    m = manifest_for(runner.artifact)
    return list(m.input_shape) if m is not None and m.input_shape is not None else None


def _time_one(runner: Runner, name: str, shape: tuple, dtype: str, warmup: int, iters: Optional[int],
              seconds: Optional[float], neurons: Optional[int], tick: Callable[[], None],
              io: Optional[dict] = None) -> dict:
    from .io_adapter import artifact_shape

    x = make_input(artifact_shape(shape, io), dtype)  # shape is [T, B, ...]; the artifact's may be [B, T] / [B]
    if runner.device.startswith("cuda"):
        import torch

        feed: Any = torch.from_numpy(x).to(runner.device)  # on the device once: no host copy timed
    else:
        feed = x
    feeds = {name: feed}
    out = runner.infer(feeds, copy_outputs=False)  # also checks the shapes before timing
    out_bytes = sum(_nbytes(v) for v in out.values())
    timer = Timer(runner.device, runner.synchronize)
    times = run_timed(lambda: runner.infer(feeds, copy_outputs=False), timer, warmup, iters, seconds, tick)
    res = summarize(times, shape[1], shape[0], neurons)
    res["bytes_moved"] = int(x.nbytes + out_bytes)
    return res


def _nbytes(v: Any) -> int:
    if isinstance(v, np.ndarray):
        return int(v.nbytes)
    if hasattr(v, "element_size") and hasattr(v, "numel"):
        return int(v.element_size() * v.numel())
    try:  # an OrtValue left on the GPU
        from .runtime.onnxruntime import ORT_TYPES

        return int(np.prod(v.shape()) * np.dtype(ORT_TYPES[v.data_type()]).itemsize)
    except Exception:
        return 0


def _add_ratios(rows: list[dict], baseline: str) -> None:
    base = {(r["batch"], r["timesteps"]): r["latency_ms"]["mean"] for r in rows
            if r["label"] == baseline and r["latency_ms"]}
    for r in rows:
        ref = base.get((r["batch"], r["timesteps"]))
        if r["latency_ms"] and ref:
            r["speedup_vs_first"] = ref / r["latency_ms"]["mean"]


# ---------------------------------------------------------------------------------------------------------
# Output files.

def write_json(result: BenchResult, path: Path | str) -> Path:
    import json

    from .io import atomic_write_text

    return atomic_write_text(path, json.dumps(result.to_dict(), indent=2) + "\n")


def write_csv(result: BenchResult, path: Path | str) -> Path:
    from .io import atomic_write_text

    return atomic_write_text(path, result.csv_text())


def write_plot(result: BenchResult, path: Path | str) -> Path:
    """PNG: p50 latency against batch (log-log), one line per entry (and per T when several)."""
    from .errors import require
    from .io import atomic_path

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


# ---------------------------------------------------------------------------------------------------------
# Command-line helpers (parsing lives here so it is unit-tested without the CLI).

def parse_int_list(text: Optional[str], what: str) -> Optional[list[int]]:
    """``"1,8,32"`` -> [1, 8, 32]; a one-line error naming ``what`` otherwise."""
    if text is None or str(text).strip() == "":
        return None
    out = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            v = int(part)
        except ValueError:
            raise UserError(f"{what}: {part!r} is not an integer (expected a list like 1,8,32)") from None
        if v < 1:
            raise UserError(f"{what}: values must be >= 1, got {v}")
        out.append(v)
    return out


# "--backend onnxruntime:fallback" and "onnxruntime:custom" compare ORT's function fallback with the library.
BACKEND_VARIANTS = {
    "onnxruntime:fallback": ("onnxruntime", {"custom_ops": "off"}),
    "onnxruntime:custom": ("onnxruntime", {"custom_ops": "require"}),
    "onnxruntime:iobinding": ("onnxruntime", {"io_binding": True}),
}


def parse_backends(values: Optional[Sequence[str]]) -> list[tuple[str, str, dict]]:
    """``["torchscript,onnxruntime:fallback"]`` -> [(label, backend, options), ...] in order, no duplicates."""
    from .runtime import backend_names

    out: list[tuple[str, str, dict]] = []
    for value in values or []:
        for label in (p.strip() for p in value.split(",")):
            if not label:
                continue
            if label in BACKEND_VARIANTS:
                name, opts = BACKEND_VARIANTS[label]
            elif label in backend_names():
                name, opts = label, {}
            else:
                known = sorted(set(backend_names()) | set(BACKEND_VARIANTS))
                raise UserError(f"unknown backend {label!r}; known: {', '.join(known)}")
            if label not in [o[0] for o in out]:
                out.append((label, name, dict(opts)))
    return out
