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

from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ..errors import UserError, first_line
from ..machine import cpu_model, library_versions, machine_info  # noqa: F401  (public API)
from ..runtime.base import Runner
from .report import (  # noqa: F401  (public API)
    CSV_COLUMNS,
    SCHEMA,
    SCHEMA_VERSION,
    BenchEntry,
    BenchResult,
    render_table,
    write_csv,
    write_json,
    write_plot,
)
from .timing import (  # noqa: F401  (public API)
    Timer,
    count_neurons,
    input_spec,
    make_input,
    memcpy_ms,
    neurons_from_manifest,
    percentile,
    run_timed,
    summarize,
)


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
        from ..io_adapter import canonical_shape

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
                        row["error"] = f"{type(exc).__name__}: {first_line(exc)}"
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
            described[e.label] = {"backend": e.runner.backend, "error": first_line(exc)}
    return BenchResult(artifact=artifact, settings=settings, entries=described, rows=rows)


def _manifest_io(runner: Runner) -> Optional[dict]:
    """The export manifest's ``io`` record (layout, encoding, readout) for a runner's artifact, if any."""
    from ..runtime.base import manifest_for

    if not isinstance(runner.artifact, (str, Path)):
        return None
    m = manifest_for(runner.artifact)
    io = m.io if m else None
    return io if isinstance(io, dict) and io.get("input_layout") in ("TB", "BT", "static") else None


def _manifest_shape(runner: Runner) -> Optional[list]:
    """The export manifest's ``[T, B, ...]`` for a runner whose artifact sits in an export folder."""
    from ..runtime.base import manifest_for

    if not isinstance(runner.artifact, (str, Path)):
        return None
    m = manifest_for(runner.artifact)
    return list(m.input_shape) if m is not None and m.input_shape is not None else None


def _time_one(runner: Runner, name: str, shape: tuple, dtype: str, warmup: int, iters: Optional[int],
              seconds: Optional[float], neurons: Optional[int], tick: Callable[[], None],
              io: Optional[dict] = None) -> dict:
    from ..io_adapter import artifact_shape

    x = make_input(artifact_shape(shape, io), dtype)  # shape is [T, B, ...]; the artifact's may be [B, T] / [B]
    if runner.device.startswith("cuda"):
        import torch

        feed: Any = torch.from_numpy(x).to(runner.device)  # on the device once: no host copy timed
    else:
        feed = x
    feeds = runner.check_feeds({name: feed})  # checked once, before timing: the timed calls skip the check
    out = runner.infer(feeds, copy_outputs=False)
    out_bytes = sum(_nbytes(v) for v in out.values())
    timer = Timer(runner.device, runner.synchronize)
    times = run_timed(lambda: runner.infer(feeds, copy_outputs=False, check=False), timer, warmup, iters, seconds,
                      tick)
    res = summarize(times, shape[1], shape[0], neurons)
    res["bytes_moved"] = int(x.nbytes + out_bytes)
    return res


def _nbytes(v: Any) -> int:
    if isinstance(v, np.ndarray):
        return int(v.nbytes)
    if hasattr(v, "element_size") and hasattr(v, "numel"):
        return int(v.element_size() * v.numel())
    try:  # an OrtValue left on the GPU
        from ..runtime.onnxruntime import ORT_TYPES

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
    from ..runtime import backend_names

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
