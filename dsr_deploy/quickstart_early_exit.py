"""The quickstart's early-exit step: the shipped model exported for streaming, ``exit-calibrate``'s rule on the
held-out split (within :data:`MAX_DROP` points of the full-T accuracy), the accuracy / mean-steps curve, and the
batch-1 latency of the streaming artifact with all T steps and with the rule next to the multi-step artifact's
(:mod:`dsr_deploy.early_exit`, docs/runtime.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np

STREAM_DIR = "export-streaming"
MAX_DROP = 0.5  # percentage points, as exit-calibrate's default
LATENCY_IMAGES = 64  # batch-1 latency over the first held-out images (each run all T steps and with the rule)


def run_early_exit(model: Any, spec: str, T: int, x: np.ndarray, labels: np.ndarray, out: Path,
                   export_dir: Path, bench: bool, iters: int, threads: Optional[int],
                   log: Callable[[str], None]) -> Dict[str, Any]:
    """Export, calibrate (recording the rule in the streaming export's manifest), and time; returns the record
    the quickstart summary holds under ``early_exit``."""
    from . import plugins
    from .bench.early_exit import measure
    from .early_exit import calibrate, manifest_record
    from .export import export_model
    from .manifest import read_manifest, write_manifest
    from .runtime import load_runner
    from .runtime.early_exit import manifest_readout, readouts_of

    folder = out / STREAM_DIR
    export_model(model, (T, 1, *x.shape[2:]), folder, mode="streaming", formats=("onnx",), spec=spec, force=True)
    opts = {"custom_ops": "require" if plugins.ort_library() else "off", **({"threads": threads} if threads else {})}
    with load_runner(folder, "onnxruntime", **opts) as stream:
        manifest = read_manifest(folder)
        cal = calibrate(readouts_of(stream, x, manifest), labels, MAX_DROP)
        record = manifest_record(cal, manifest_readout(manifest), "quickstart held-out split")
        write_manifest(folder, {**manifest, "early_exit": record})
        best = cal["chosen"]
        log(f"      rule {best.rule}: {best.accuracy:.2%} at {best.mean_steps:.2f} mean steps of {T} "
            f"(full T: {cal['full_accuracy']:.2%}; bound {MAX_DROP} points)")
        latency = None
        if bench:
            n = min(LATENCY_IMAGES, x.shape[1])
            with load_runner(export_dir / "model.onnx", "onnxruntime", **opts) as multi:
                entries = {
                    "multi-step ONNX, all T steps": lambda i: multi.infer({"input": x[:, i:i + 1]}),
                    "streaming ONNX, all T steps": lambda i: stream.infer({"x_t": x[:, i:i + 1]}, early_exit="full"),
                    f"streaming ONNX, early exit ({best.rule})": lambda i: stream.infer({"x_t": x[:, i:i + 1]},
                                                                                        early_exit=best.rule),
                }
                latency = measure(entries, n, 1, max(1, iters // 10), labels[:n], n)
            for row in latency:
                row.setdefault("mean_steps", float(T))
    return {"export": str(folder), "rule": str(best.rule), "record": record, "full_accuracy": cal["full_accuracy"],
            "fixed_steps": cal["fixed_steps"], "frontier": [p.to_dict() for p in cal["frontier"]],
            "batch1_latency": latency, "backend": "onnxruntime (" + ("dsr custom-op library"
                                                                    if opts["custom_ops"] == "require"
                                                                    else "function fallback") + ")"}


def render_early_exit(doc: Dict[str, Any], console) -> None:
    """The curve and the batch-1 latency table."""
    from rich.table import Table

    t = Table(title=f"early exit: accuracy vs mean steps (held-out; full T {doc['full_accuracy']:.2%}; chosen "
                    f"{doc['rule']}, recorded in {doc['export']}/manifest.json)")
    for col in ("rule", "mean steps", "accuracy"):
        t.add_column(col)
    for p in doc["frontier"]:
        t.add_row(p["rule"] + (" <- chosen" if p["rule"] == doc["rule"] else ""), f"{p['mean_steps']:.2f}",
                  f"{p['accuracy']:.2%}")
    console.print(t)
    console.print("every image stopped at step t: " + ", ".join(f"{f['steps']}: {f['accuracy']:.1%}"
                                                               for f in doc["fixed_steps"]))
    if doc.get("batch1_latency"):
        lt = Table(title=f"early exit: batch-1 latency ({doc['backend']})")
        for col in ("run", "mean steps", "p50 ms", "p90 ms", "mean ms"):
            lt.add_column(col)
        for r in doc["batch1_latency"]:
            lt.add_row(r["entry"], f"{r['mean_steps']:.2f}", f"{r['p50_ms']:.3f}", f"{r['p90_ms']:.3f}",
                       f"{r['mean_ms']:.3f}")
        console.print(lt)
