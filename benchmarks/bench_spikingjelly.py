"""SpikingJelly zoo networks with LIFNode at CIFAR size: dsr-deploy's CPU paths against SpikingJelly, in one run.

For ``spiking_resnet18`` and ``sew_resnet18`` (``spiking_neuron=LIFNode``, multi-step, 10 classes, input
``[T, B, 3, 32, 32]``), T in {4, 20}, batch in {1, 8}, the median latency of one forward of:

* ``sj_eager``: SpikingJelly eager (its CPU dispatch; SpikingJelly 2.0 has one CPU implementation of LIF, the torch
  code in ``spikingjelly/_ops/lif/cpu.py``, so this is also "SJ with its fastest CPU backend": its CUDA / Triton
  backends do not run on a CPU);
* ``sj_compile``: SpikingJelly under ``torch.compile`` (inductor; compile time recorded apart);
* ``dsr_ort_scan`` / ``dsr_ort_unrolled``: the dsr-deploy ONNX export (``dsr::SJLIFSpike`` nodes with their
  function fallback, scan or unrolled body) on ONNX Runtime CPU;
* ``dsr_torchscript``: the dsr-deploy TorchScript export.

Every dsr-deploy output is checked equal to SpikingJelly eager's on the timed input (argmax of the summed output
and the spikes are what verify proves; here the outputs must be equal too, or the row says so).
Writes ``benchmarks/results/spikingjelly_cpu.{json,md}`` with the machine (CPU model, flags, load before / after:
the CPU is shared). Usage: ``python benchmarks/bench_spikingjelly.py [--repeats 5] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the zoo shim: SpikingJelly's model package without torchvision

MODELS = ("spiking_resnet18", "sew_resnet18")


def build(name: str):
    import sj_zoo
    from spikingjelly.activation_based import functional

    from dsr_deploy import sj_factory

    kw = sj_factory.resolve({"spiking_neuron": "LIFNode", "step_mode": "m", "num_classes": 10})
    torch.manual_seed(0)
    net = sj_factory.finish(getattr(sj_zoo, name)(**kw), kw).eval()
    functional.reset_net(net)
    return net


def timed(fn, repeats: int) -> tuple:
    out = fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, out


def sj_runner(net):
    from spikingjelly.activation_based import functional

    def run(x):
        functional.reset_net(net)
        with torch.inference_mode():
            return net(x).numpy()
    return run


def export(name: str, folder: Path, fmt: str, body: str, T: int) -> Path:
    from dsr_deploy.cli import main

    out = folder / f"{name}_{fmt}_{body}_{T}"
    argv = ["export", f"{HERE.parent / 'tests' / 'sj_zoo.py'}:{name}", "--set", "spiking_neuron=LIFNode",
            "--set", "step_mode=m", "--set", "num_classes=10", "--input-shape", f"{T},1,3,32,32", "--format", fmt,
            "--out", str(out), "--function-body", body]
    try:
        main(argv)
    except SystemExit as exc:
        if exc.code:
            raise RuntimeError(f"export failed: {argv}") from exc
    return out


def ort_runner(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    sess = ort.InferenceSession(str(path / "model.onnx"), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x.numpy()})[0]


def ts_runner(path: Path):
    m = torch.jit.load(str(path / "model.ts")).eval()

    def run(x):
        with torch.inference_mode():
            return m(x).numpy()
    return run


def bench_model(name: str, shapes, repeats: int, folder: Path, done=lambda row: None, compile_: bool = True) -> list:
    net = build(name)
    rows = []
    scan = export(name, folder, "onnx", "scan", 4)
    ts = export(name, folder, "torchscript", "scan", 4)
    runners = {"dsr_ort_scan": ort_runner(scan), "dsr_torchscript": ts_runner(ts)}
    unrolled = {T: ort_runner(export(name, folder, "onnx", "unrolled", T)) for T in sorted({s[0] for s in shapes})}
    for T, B in shapes:
        x = torch.rand(T, B, 3, 32, 32, generator=torch.Generator().manual_seed(T * 100 + B)) * 2
        row = {"model": name, "T": T, "batch": B}
        row["sj_eager_ms"], ref = timed(lambda x=x: sj_runner(net)(x), repeats)
        row["sj_compile_ms"] = None  # --no-compile: not measured
        if compile_:
            torch._dynamo.reset()
            compiled = torch.compile(net)
            t0 = time.perf_counter()
            sj_runner(compiled)(x)
            row["sj_compile_first_call_s"] = round(time.perf_counter() - t0, 1)
            row["sj_compile_ms"], out = timed(lambda x=x, c=compiled: sj_runner(c)(x), repeats)
            row["sj_compile_equal_eager"] = bool(np.array_equal(out, ref))
        for key, run in {**runners, "dsr_ort_unrolled": unrolled[T]}.items():
            row[f"{key}_ms"], out = timed(lambda run=run, x=x: run(x), repeats)
            row[f"{key}_equal_sj"] = bool(np.array_equal(out, ref))
        dsr = {k: row[f"{k}_ms"] for k in ("dsr_ort_scan", "dsr_ort_unrolled", "dsr_torchscript")}
        row["dsr_fastest"] = min(dsr, key=dsr.get)
        row["speedup_vs_sj_eager"] = round(row["sj_eager_ms"] / dsr[row["dsr_fastest"]], 2)
        row["speedup_vs_sj_compile"] = (round(row["sj_compile_ms"] / dsr[row["dsr_fastest"]], 2)
                                        if row["sj_compile_ms"] is not None else None)
        print(json.dumps(row), flush=True)
        rows.append(row)
        done(dict(row))
    return rows


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = ["# SpikingJelly LIFNode zoo networks, CPU (`benchmarks/bench_spikingjelly.py`)", "",
             f"{m['cpu_model']}, {m['cpu_cores_usable']} usable cores (shared with other jobs: load "
             f"{result['load_before']} before, {result['load_after']} after), torch {result['versions']['torch']}, "
             f"onnxruntime {result['versions']['onnxruntime']}, SpikingJelly {result['versions']['spikingjelly']}; "
             f"median of {result['repeats']} runs, ms per forward; {len(result['rows'])} of "
             f"{result.get('planned_rows', len(result['rows']))} planned rows measured.", "",
             "| model | T | B | SJ eager | SJ torch.compile | dsr ORT scan | dsr ORT unrolled | dsr TorchScript | "
             "fastest dsr | vs SJ eager | vs SJ compile | outputs equal SJ |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        equal = all(r[k] for k in r if k.endswith("_equal_sj"))
        comp = "not run" if r["sj_compile_ms"] is None else f"{r['sj_compile_ms']:.1f}"
        lines.append(f"| {r['model']} | {r['T']} | {r['batch']} | {r['sj_eager_ms']:.1f} | {comp} | "
                     f"{r['dsr_ort_scan_ms']:.1f} | {r['dsr_ort_unrolled_ms']:.1f} | {r['dsr_torchscript_ms']:.1f} | "
                     f"{r['dsr_fastest']} | {r['speedup_vs_sj_eager']}x | "
                     f"{'-' if r['speedup_vs_sj_compile'] is None else str(r['speedup_vs_sj_compile']) + 'x'} | "
                     f"{'yes' if equal else 'NO'} |")
    lines += ["", "\"outputs equal SJ\": the network's output (logits) bit-equal to SpikingJelly eager's on the timed "
              "input. End to end the backends' convolutions round differently (docs/fidelity.md), so \"NO\" is "
              "expected; the neurons themselves are proved exact by `dsr-deploy verify` (tests/test_sj_convert.py)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="T=4, batch 1 only")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "spikingjelly_cpu")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ", ".join(MODELS))
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                    help="also time SpikingJelly under torch.compile (minutes of compilation per shape)")
    args = ap.parse_args(argv)
    from dsr_deploy.machine import cpu_flags, library_versions, machine_info

    shapes = [(4, 1)] if args.quick else [(4, 1), (4, 8), (20, 1), (20, 8)]
    models = [m for m in args.models.split(",") if m]
    if not set(models) <= set(MODELS):
        ap.error(f"--models: choose from {', '.join(MODELS)}")
    before = [round(v, 2) for v in os.getloadavg()]
    rows: list = []
    result = {"machine": machine_info(), "cpu_flags": cpu_flags(), "versions": library_versions(),
              "torch_threads": torch.get_num_threads(), "repeats": args.repeats, "load_before": before,
              "load_after": None, "planned_rows": len(models) * len(shapes), "compile": args.compile,
              "rows": rows}

    def write(_row=None) -> None:  # after every row: an interrupted run keeps what it measured
        result["load_after"] = [round(v, 2) for v in os.getloadavg()]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(markdown(result))

    with tempfile.TemporaryDirectory(prefix="bench-sj-") as tmp:
        for name in models:
            bench_model(name, shapes, args.repeats, Path(tmp), done=lambda row: (rows.append(row), write()),
                        compile_=args.compile)
    write()
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
