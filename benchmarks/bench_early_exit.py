"""Early exit over time steps on the shipped digits model (zoo:digits-cnn, T=8), in one run:

* the accuracy / mean-steps curve on the quickstart's held-out split (360 images): every sample stopped at step
  t, and the rules ``exit-calibrate`` weighs; the rule it picks for ``--max-drop 0.5``;
* batch-1 latency (p50 / p90 / p99, mean) and throughput of: the multi-step ONNX artifact (all T steps, what
  runs without early exit), the streaming ONNX artifact run for all T steps, and the streaming artifact with
  the calibrated rule (each image stops when its rule fires), interleaved image by image so a shared machine's
  load hits all three alike;
* batch 32: the same three over the held-out set in batches of 32 (early exit compacts the batch as samples
  finish; the batch runs until its slowest sample settles).

ONNX Runtime, one intra-op thread, the dsr custom-op library when built (else the function fallback).

Usage: python benchmarks/bench_early_exit.py [--repeats N] [--out benchmarks/results/early_exit_digits_cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from dsr_deploy import models, plugins
from dsr_deploy.bench.early_exit import measure
from dsr_deploy.early_exit import ExitRule, calibrate, manifest_record
from dsr_deploy.encoding import direct_encode
from dsr_deploy.export import export_model
from dsr_deploy.machine import cpu_flags, library_versions, machine_info
from dsr_deploy.models.digits import DIGITS_T, load_digits_split
from dsr_deploy.runtime import load_runner
from dsr_deploy.runtime.early_exit import manifest_readout, readouts_of

MAX_DROP = 0.5


def run(repeats: int, out: Path) -> dict:
    split = load_digits_split()
    x = np.ascontiguousarray(direct_encode(split.x_test, DIGITS_T).numpy().astype(np.float32))
    y = split.y_test.numpy()
    load_before = os.getloadavg()
    opts = {"threads": 1, "custom_ops": "require" if plugins.ort_library() else "off"}
    with tempfile.TemporaryDirectory() as tmp:
        net = models.build("digits-cnn").eval()
        export_model(net, (DIGITS_T, 2, 1, 8, 8), Path(tmp) / "multi", formats=("onnx",), spec="zoo:digits-cnn")
        export_model(net, (DIGITS_T, 1, 1, 8, 8), Path(tmp) / "stream", mode="streaming", formats=("onnx",),
                         spec="zoo:digits-cnn")
        with load_runner(Path(tmp) / "stream", "onnxruntime", **opts) as stream, \
                load_runner(Path(tmp) / "multi", "onnxruntime", **opts) as multi:
            readouts = readouts_of(stream, x)
            cal = calibrate(readouts, y, MAX_DROP)
            rule: ExitRule = cal["chosen"].rule
            record = manifest_record(cal, manifest_readout(stream_manifest(stream)), "digits held-out split")
            rows = {}
            for batch in (1, 32):
                n = -(-x.shape[1] // batch)
                chunk = [x[:, i * batch:(i + 1) * batch] for i in range(n)]
                entries = {
                    "multi-step artifact, all T steps": lambda i, c=chunk: multi.infer({"input": c[i]}),
                    "streaming artifact, all T steps": lambda i, c=chunk: stream.infer({"x_t": c[i]},
                                                                                       early_exit="full"),
                    f"streaming artifact, early exit ({rule})": lambda i, c=chunk: stream.infer({"x_t": c[i]},
                                                                                                early_exit=rule),
                }
                rows[batch] = measure(entries, n, batch, repeats, y, len(y))
                for row in rows[batch]:
                    row.setdefault("mean_steps", float(DIGITS_T))
    doc = {"model": "zoo:digits-cnn", "T": DIGITS_T, "heldout_images": int(len(y)), "max_drop": MAX_DROP,
           "backend": "onnxruntime (" + ("dsr custom-op library" if opts["custom_ops"] == "require"
                                         else "function fallback") + ", 1 thread)",
           "repeats": repeats, "chosen_rule": str(rule), "early_exit_record": record,
           "full_accuracy": cal["full_accuracy"], "fixed_steps": cal["fixed_steps"],
           "frontier": [p.to_dict() for p in cal["frontier"]],
           "latency": {str(b): r for b, r in rows.items()},
           "machine": {**machine_info(), "cpu_flags": cpu_flags()}, "libraries": library_versions(),
           "load_average": {"before": load_before, "after": os.getloadavg()},
           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    out.with_suffix(".md").write_text(render(doc))
    return doc


def stream_manifest(runner):
    from dsr_deploy.runtime.early_exit import artifact_manifest

    return artifact_manifest(runner)


def render(doc: dict) -> str:
    m = doc["machine"]
    lines = [f"# Early exit on {doc['model']} (T={doc['T']}, {doc['heldout_images']} held-out images)", "",
             f"Machine: {m['cpu_model']}, {m['cpu_cores_usable']} usable cores; {doc['backend']}. 1-min load "
             f"average {doc['load_average']['before'][0]:.1f} before, {doc['load_average']['after'][0]:.1f} after "
             "(a shared machine: a load above the core count means other work competed). "
             f"{doc['repeats']} timed passes after one warm-up pass, entries interleaved. {doc['created']}.", "",
             f"Chosen by `exit-calibrate --max-drop {doc['max_drop']}`: **{doc['chosen_rule']}** "
             f"({doc['early_exit_record']['calibration']['accuracy']:.2%} at "
             f"{doc['early_exit_record']['calibration']['mean_steps']:.2f} mean steps; full T "
             f"{doc['full_accuracy']:.2%}).", "",
             "## Accuracy vs steps", "", "| every image stops at step | accuracy |", "|---|---|"]
    lines += [f"| {f['steps']} | {f['accuracy']:.2%} |" for f in doc["fixed_steps"]]
    lines += ["", "| rule (frontier) | mean steps | accuracy |", "|---|---|---|"]
    lines += [f"| {p['rule']} | {p['mean_steps']:.2f} | {p['accuracy']:.2%} |" for p in doc["frontier"]]
    for b, rows in doc["latency"].items():
        lines += ["", f"## Batch {b}", "", "| run | mean steps | accuracy | p50 ms | p90 ms | p99 ms | mean ms | "
                  "images/s |", "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            acc = f"{r['accuracy']:.2%}" if "accuracy" in r else "-"
            lines.append(f"| {r['entry']} | {r['mean_steps']:.2f} | {acc} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} | "
                         f"{r['p99_ms']:.3f} | {r['mean_ms']:.3f} | {r['samples_per_s']:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "early_exit_digits_cpu")
    a = ap.parse_args()
    d = run(a.repeats, a.out)
    print(render(d))
