#!/usr/bin/env python
"""ONNX Runtime CPU latency of the two int8 export forms: ``--int8-activations uint8`` (the default, asymmetric
currents) vs ``int8`` (signed symmetric: the form TensorRT takes), same network, same calibration, same input.

For each zoo model: both forms exported (Q/DQ neurons and, with ``--neuron-forms``, the quantised neuron ops too),
each run with the dsr custom-op library (``custom_ops="require"``), the repeats interleaved so both forms see the
same machine load; the median of each repeat's median. The record also says how many quantised convolutions ONNX
Runtime fused into ``QLinearConv`` in each form (read from its optimised graph): that, not the arithmetic, is what
the s8 activations change on x86.

    python benchmarks/bench_int8_activations.py        # writes benchmarks/results/int8_activations_cpu.{json,md}
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FORMS = ("uint8", "int8")


def fused(folder: Path, lib: str) -> dict:
    """Op counts of ONNX Runtime's optimised graph that tell whether the convolutions were fused."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        so.register_custom_ops_library(lib)
        ort.InferenceSession(str(folder / "model.onnx"), so, providers=["CPUExecutionProvider"])
        ops = collections.Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)
    return {k: ops.get(k, 0) for k in ("QLinearConv", "Conv", "QuantizeLinear", "DequantizeLinear")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", help="zoo model (repeatable; default vgg11-dvs-lif and "
                    "preact-resnet18-lif)")
    ap.add_argument("--T", type=int, default=4, help="time steps (both models)")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--iters", type=int, default=7)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--neuron-forms", action="store_true", help="also the quantised neuron ops")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from dsr_deploy import plugins
    from dsr_deploy.export import Int8Options, export_model
    from dsr_deploy.machine import cpu_flags, library_versions, machine_info
    from dsr_deploy.model_spec import load_model
    from dsr_deploy.runtime import load_runner

    lib = plugins.ort_library()
    if lib is None:
        print("build the custom-op library first: dsr-deploy plugins build", file=sys.stderr)
        return 2
    models = args.model or ["vgg11-dvs-lif", "preact-resnet18-lif"]
    batches = [int(b) for b in args.batch.split(",")]
    neurons = ("qdq", "quantized") if args.neuron_forms else ("qdq",)
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        for name in models:
            loaded = load_model(f"zoo:{name}", None, False, settings={"T": str(args.T)})
            shape = [args.T, *loaded.default_input_shape[1:]]
            rng = np.random.default_rng(0)
            cal = rng.normal(size=(args.T, 8, *shape[2:])).astype(np.float32)
            x = {b: rng.normal(size=(args.T, b, *shape[2:])).astype(np.float32) for b in batches}
            folders = {}
            for form in FORMS:
                for neuron in neurons:
                    d = Path(tmp) / f"{name}-{form}-{neuron}"
                    export_model(loaded.model, shape, d, formats=("onnx",), precision="int8",
                                 int8=Int8Options(calibration=cal, activations=form, neuron=neuron))
                    folders[(form, neuron)] = d
            times = collections.defaultdict(list)
            for _ in range(args.repeats):
                for key, d in folders.items():
                    with load_runner(d, backend="onnxruntime", custom_ops="require") as runner:
                        for b in batches:
                            runner.infer({"input": x[b]})
                            ts = []
                            for _ in range(args.iters):
                                t0 = time.perf_counter()
                                runner.infer({"input": x[b]})
                                ts.append(time.perf_counter() - t0)
                            times[(*key, b)].append(float(np.median(ts)) * 1e3)
            for (form, neuron), d in folders.items():
                ops = fused(d, str(lib))
                for b in batches:
                    rows.append({"model": name, "T": args.T, "activations": form, "neuron": neuron, "batch": b,
                                 "median_ms": float(np.median(times[(form, neuron, b)])),
                                 "repeats_ms": times[(form, neuron, b)], "ort_ops": ops})
    record = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine_info(),
              "cpu_flags": cpu_flags(), "libraries": library_versions(), "iters": args.iters,
              "repeats": args.repeats, "load_before": list(load_before), "load_after": list(os.getloadavg()),
              "results": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "int8_activations_cpu.json").write_text(json.dumps(record, indent=1) + "\n")
    m = record["machine"]
    lines = ["# int8 exports in ONNX Runtime CPU: uint8 vs int8 (TensorRT form) activations", "",
             f"Written by `benchmarks/bench_int8_activations.py` on {record['created']}. Median of {args.repeats} "
             f"interleaved repeats of the median of {args.iters} runs; ONNX Runtime with the dsr custom-op library.",
             "", f"* Machine: {m['cpu_model']}, {m['cpu_cores_usable']} usable CPUs; flags "
             f"{', '.join(f for f in record['cpu_flags'] if 'avx512' in f or f == 'avx2')}",
             f"* onnxruntime {record['libraries'].get('onnxruntime')}; load average before / after: "
             f"{load_before[0]:.1f} / {record['load_after'][0]:.1f} (a shared machine: treat small differences as "
             "noise)", "",
             "| model | T | batch | neuron form | uint8 ms | int8 ms | int8 / uint8 | QLinearConv uint8 / int8 | "
             "float Conv uint8 / int8 |", "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    by = {(r["model"], r["neuron"], r["batch"], r["activations"]): r for r in rows}
    for name in models:
        for neuron in neurons:
            for b in batches:
                u, s = by[(name, neuron, b, "uint8")], by[(name, neuron, b, "int8")]
                lines.append(f"| {name} | {args.T} | {b} | {neuron} | {u['median_ms']:.1f} | {s['median_ms']:.1f} | "
                             f"{s['median_ms'] / u['median_ms']:.2f}x | {u['ort_ops']['QLinearConv']} / "
                             f"{s['ort_ops']['QLinearConv']} | {u['ort_ops']['Conv']} / {s['ort_ops']['Conv']} |")
    (args.out / "int8_activations_cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
