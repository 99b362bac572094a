"""``dsr-deploy bench DIR --early-exit RULE --input X.npy``: the same runner with every sample run for all T steps
and with the exit rule, side by side: mean steps, latency percentiles and throughput (and accuracy with
``--labels``). The inputs are real data: how early a sample settles depends on it.

The two runs are interleaved pass by pass (a shared machine's load hits both alike); the first pass is a warm-up.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from ..contract import EXIT_PREDICTION, EXIT_STEPS


def latency_stats(seconds: Sequence[float], samples: int) -> Dict[str, float]:
    """Percentiles and mean of per-call latencies (ms) and the throughput (samples per second of those calls)."""
    ms = np.asarray(seconds) * 1e3
    return {"calls": len(ms), "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(statistics.fmean(ms)),
            "samples_per_s": samples / max(float(np.sum(seconds)), 1e-12)}


def measure(entries: Dict[str, Callable[[int], Any]], n_calls: int, batch: int, passes: int,
            labels: Optional[np.ndarray], total: int) -> List[dict]:
    """Time each entry call by call over ``n_calls`` chunks, ``passes`` times after one warm-up pass, the entries
    in turn within each pass. A result with ``steps`` adds the mean steps (and accuracy given ``labels``)."""
    lat: Dict[str, List[float]] = {k: [] for k in entries}
    last: Dict[str, list] = {k: [None] * n_calls for k in entries}
    for rep in range(passes + 1):
        for k, fn in entries.items():
            for i in range(n_calls):
                t = time.perf_counter()
                last[k][i] = fn(i)
                if rep:
                    lat[k].append(time.perf_counter() - t)
    rows = []
    for k in entries:
        row: Dict[str, Any] = {"entry": k, "batch": batch, **latency_stats(lat[k], total * passes)}
        if isinstance(last[k][0], dict) and EXIT_STEPS in last[k][0]:
            steps = np.concatenate([r[EXIT_STEPS] for r in last[k]])
            row["mean_steps"] = float(steps.mean())
            if labels is not None:
                pred = np.concatenate([r[EXIT_PREDICTION] for r in last[k]])
                row["accuracy"] = float((pred == labels).mean())
        rows.append(row)
    return rows


def bench_early_exit(runner: Any, x: np.ndarray, rule: Any, batches: Sequence[int], passes: int = 3,
                     labels: Optional[np.ndarray] = None, batch_axis: int = 1) -> List[dict]:
    """Rows for every batch size: the runner with all T steps (rule ``full``) and with ``rule``."""
    from ..early_exit import ExitRule
    from ..runtime.early_exit import exit_rule, runner_manifest

    rule = exit_rule(rule, runner_manifest(runner))
    total = x.shape[batch_axis]
    full = ExitRule("full")
    rows = []
    for b in batches:
        n = -(-total // b)
        chunks = [np.ascontiguousarray(np.take(x, range(i * b, min((i + 1) * b, total)), axis=batch_axis))
                  for i in range(n)]
        name = runner.inputs()[0].name
        entries = {"all T steps": lambda i, c=chunks, n=name: runner.infer({n: c[i]}, early_exit=full),
                   f"early exit ({rule})": lambda i, c=chunks, n=name: runner.infer({n: c[i]}, early_exit=rule)}
        rows += measure(entries, n, b, passes, labels, total)
    return rows


def render_rows(rows: List[dict], title: str):
    from rich.table import Table

    t = Table(title=title)
    for col in ("run", "batch", "mean steps", "accuracy", "p50 ms", "p90 ms", "p99 ms", "samples/s"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["entry"], str(r["batch"]), f"{r.get('mean_steps', float('nan')):.2f}",
                  f"{r['accuracy']:.2%}" if "accuracy" in r else "-", f"{r['p50_ms']:.3f}", f"{r['p90_ms']:.3f}",
                  f"{r['p99_ms']:.3f}", f"{r['samples_per_s']:.0f}")
    return t
