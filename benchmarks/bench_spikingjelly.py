"""SpikingJelly zoo networks with LIFNode at CIFAR size: dsr-deploy's CPU paths against SpikingJelly, in one run.

For ``spiking_resnet18`` and ``sew_resnet18`` (``spiking_neuron=LIFNode``, multi-step, 10 classes, input
``[T, B, 3, 32, 32]``), T in {4, 20}, batch in {1, 8}, the median latency of one forward of:

* ``sj_eager``: SpikingJelly eager (its CPU dispatch; SpikingJelly 2.0 has one CPU implementation of LIF, the torch
  code in ``spikingjelly/_ops/lif/cpu.py``, so this is also "SJ with its fastest CPU backend": its CUDA / Triton
  backends do not run on a CPU);
* ``sj_compile``: SpikingJelly under ``torch.compile`` (inductor, default settings: compiled once per model, recompiled
  when a shape needs it: its LIF loop over T is unrolled, so every T compiles again, and batch 1 is specialised);
  the first call at each shape, compilation included, is recorded apart (``sj_compile_first_call_s``); once a
  model's first calls have taken ``--compile-budget`` seconds, its remaining compile rows are skipped, saying so;
* ``dsr_ort_custom``: the dsr-deploy ONNX export on ONNX Runtime CPU with the dsr custom-op library
  (``libdsr_ort_ops.so``: one native ``SJLIFSpike`` kernel per layer; dsr-deploy's fastest CPU path);
* ``dsr_ort_fallback``: the same file without the library (the ``SJLIFSpike`` nodes' model-local function, scan body);
* ``dsr_pt2``: the torch.export program (the ``dsr::sj_spike`` op, native CPU kernel);
* ``dsr_torchscript``: the TorchScript export (the scripted reference loop);
* with ``--unrolled``, also ``dsr_ort_unrolled``: the function fallback with an unrolled body (one export per T).

One export (``--format all``, T and batch dynamic) per model serves every shape. Every dsr-deploy output is compared
with SpikingJelly eager's on the timed input (the neurons are proved exact by ``dsr-deploy verify``; end to end the
backends' convolutions may round differently, docs/fidelity.md). Each row is timed as a warm-up call, then up to
``--repeats`` calls while the row's time stays under ``--row-budget`` seconds (at least one): the slowest rows
(SpikingJelly eager at T=20, batch 8) get fewer repeats, and the number of each row is recorded.

Writes ``benchmarks/results/spikingjelly_cpu.{json,md}`` after every row, with the machine (CPU model, flags,
cores, the load average before, after and at each row: the CPU may be shared). About 15 minutes on a quiet 2-core
AMD EPYC: ``python benchmarks/bench_spikingjelly.py``; ``--quick`` (T=4, batch 1, one model, 2 repeats) checks the
script in about 3 minutes and writes to ``--out`` (default: a scratch file, not the committed results).
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


def timed(fn, repeats: int, budget_s: float) -> tuple:
    """(median ms, output, timed calls): a warm-up call, then up to ``repeats`` calls while under ``budget_s``."""
    out = fn()  # warm-up
    times: list = []
    start = time.perf_counter()
    while len(times) < max(1, repeats) and (not times or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, out, len(times)


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


def artifact_runner(folder: Path, backend: str, **options):
    """A dsr-deploy runner (``load_runner``) as a function of the input tensor."""
    from dsr_deploy.runtime import load_runner

    r = load_runner(folder, backend, **options)
    name = r.inputs()[0].name
    return lambda x: next(iter(r.infer({name: x.numpy()}).values()))


def dsr_runners(name: str, folder: Path, Ts, unrolled: bool) -> tuple:
    """({row: runner}, {T: {row: runner}}, {row: why not run}): the dsr-deploy rows of one model."""
    from dsr_deploy import plugins

    t0 = time.perf_counter()
    d = export(name, folder, "all", "scan", 4)
    print(f"export {name}: {time.perf_counter() - t0:.1f} s", flush=True)
    runners, skipped = {}, {}
    why = plugins.missing_reason("ort")
    if why is None:
        runners["dsr_ort_custom"] = artifact_runner(d, "onnxruntime", custom_ops="require")
    else:
        skipped["dsr_ort_custom"] = f"the dsr ONNX Runtime library is not built: {why}"
    runners["dsr_ort_fallback"] = artifact_runner(d, "onnxruntime", custom_ops="off")
    runners["dsr_pt2"] = artifact_runner(d, "pt2")
    runners["dsr_torchscript"] = artifact_runner(d, "torchscript")
    per_T = {T: {"dsr_ort_unrolled": artifact_runner(export(name, folder, "onnx", "unrolled", T), "onnxruntime",
                                                     custom_ops="off")} for T in Ts} if unrolled else {}
    return runners, per_T, skipped


def bench_model(name: str, shapes, repeats: int, folder: Path, done=lambda row: None, compile_: bool = True,
                budget_s: float = 8.0, unrolled: bool = False, compile_budget_s: float = 0.0) -> list:
    net = build(name)
    rows = []
    runners, per_T, skipped = dsr_runners(name, folder, sorted({s[0] for s in shapes}), unrolled)
    compiled, compiling_s = None, 0.0
    if compile_:
        torch._dynamo.reset()
        compiled = torch.compile(net)
    for T, B in shapes:
        x = torch.rand(T, B, 3, 32, 32, generator=torch.Generator().manual_seed(T * 100 + B)) * 2
        row = {"model": name, "T": T, "batch": B, "load_1min": round(os.getloadavg()[0], 2), "skipped": dict(skipped)}
        row["sj_eager_ms"], ref, row["sj_eager_n"] = timed(lambda x=x: sj_runner(net)(x), repeats, budget_s)
        row["sj_compile_ms"] = None  # --no-compile, or the compile budget spent: not measured
        if compiled is not None and compile_budget_s > 0 and compiling_s >= compile_budget_s:
            row["skipped"]["sj_compile"] = (f"{name}'s first calls under torch.compile (compilation included) took "
                                            f"{compiling_s:.0f} s >= --compile-budget {compile_budget_s:g} s")
        elif compiled is not None:
            t0 = time.perf_counter()
            sj_runner(compiled)(x)  # compiles (again) when the shape needs it
            first = time.perf_counter() - t0
            compiling_s += first
            row["sj_compile_first_call_s"] = round(first, 1)
            row["sj_compile_ms"], out, row["sj_compile_n"] = timed(lambda x=x: sj_runner(compiled)(x), repeats,
                                                                    budget_s)
            row["sj_compile_equal_eager"] = bool(np.array_equal(out, ref))
        for key, run in {**runners, **per_T.get(T, {})}.items():
            row[f"{key}_ms"], out, row[f"{key}_n"] = timed(lambda run=run, x=x: run(x), repeats, budget_s)
            row[f"{key}_equal_sj"] = bool(np.array_equal(out, ref))
        dsr = {k: row[f"{k}_ms"] for k in DSR_ROWS if row.get(f"{k}_ms") is not None}
        row["dsr_fastest"] = min(dsr, key=dsr.get)
        row["speedup_vs_sj_eager"] = round(row["sj_eager_ms"] / dsr[row["dsr_fastest"]], 2)
        row["speedup_vs_sj_compile"] = (round(row["sj_compile_ms"] / dsr[row["dsr_fastest"]], 2)
                                        if row["sj_compile_ms"] is not None else None)
        print(json.dumps(row), flush=True)
        rows.append(row)
        done(dict(row))
    return rows


DSR_ROWS = ("dsr_ort_custom", "dsr_ort_fallback", "dsr_pt2", "dsr_torchscript", "dsr_ort_unrolled")
COLUMNS = (("sj_eager", "SJ eager"), ("sj_compile", "SJ torch.compile"), ("dsr_ort_custom", "dsr ORT + custom ops"),
           ("dsr_ort_fallback", "dsr ORT fallback"), ("dsr_pt2", "dsr pt2"), ("dsr_torchscript", "dsr TorchScript"),
           ("dsr_ort_unrolled", "dsr ORT unrolled"))


def _ms(row: dict, key: str) -> str:
    v = row.get(f"{key}_ms")
    return "-" if v is None else f"{v:.1f} ({row.get(f'{key}_n', '?')})"


def markdown(result: dict) -> str:
    m = result["machine"]
    cols = [(k, h) for k, h in COLUMNS if any(r.get(f"{k}_ms") is not None for r in result["rows"])] or list(COLUMNS)
    lines = ["# SpikingJelly LIFNode zoo networks, CPU (`benchmarks/bench_spikingjelly.py`)", "",
             f"{m['cpu_model']}, {m['cpu_cores_usable']} usable cores, flags {result.get('cpu_simd', '?')} (load "
             f"{result['load_before']} before, {result['load_after']} after), torch {result['versions']['torch']}, "
             f"onnxruntime {result['versions']['onnxruntime']}, SpikingJelly {result['versions']['spikingjelly']}; "
             f"ms per forward, median of (n) timed calls after a warm-up (up to {result['repeats']}, "
             f"{result['row_budget_s']} s per row); {len(result['rows'])} of "
             f"{result.get('planned_rows', len(result['rows']))} planned rows measured.", "",
             "| model | T | B | " + " | ".join(h for _, h in cols) + " | SJ compile: first call s | fastest dsr | "
             "vs SJ eager | vs SJ compile | outputs equal SJ |",
             "|---|---|---|" + "---|" * len(cols) + "---|---|---|---|---|"]
    for r in result["rows"]:
        equal = all(r[k] for k in r if k.endswith("_equal_sj"))
        first = r.get("sj_compile_first_call_s")
        lines.append(f"| {r['model']} | {r['T']} | {r['batch']} | " + " | ".join(_ms(r, k) for k, _ in cols)
                     + f" | {'-' if first is None else first} | {r['dsr_fastest']} | {r['speedup_vs_sj_eager']}x | "
                     f"{'-' if r['speedup_vs_sj_compile'] is None else str(r['speedup_vs_sj_compile']) + 'x'} | "
                     f"{'yes' if equal else 'NO'} |")
    skipped = {k: v for r in result["rows"] for k, v in (r.get("skipped") or {}).items()}
    lines += [""] + [f"Not run: `{k}`: {v}." for k, v in skipped.items()]
    lines += ["", "\"outputs equal SJ\": the network's output (logits) bit-equal to SpikingJelly eager's on the timed "
              "input. End to end the backends' convolutions round differently (docs/fidelity.md), so \"NO\" may "
              "happen; the neurons themselves are proved exact by `dsr-deploy verify` (tests/test_sj_convert.py)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per row at most (after one warm-up)")
    ap.add_argument("--row-budget", type=float, default=8.0, help="seconds of timed calls per row before stopping "
                    "early (at least one call is timed)")
    ap.add_argument("--quick", action="store_true", help="T=4, batch 1, sew_resnet18 only, 2 repeats: a smoke run")
    ap.add_argument("--out", type=Path, default=None,
                    help="results path without suffix (default: benchmarks/results/spikingjelly_cpu; with --quick "
                         "a scratch file in the temp folder)")
    ap.add_argument("--models", default=None, help="comma-separated subset of " + ", ".join(MODELS))
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                    help="also time SpikingJelly under torch.compile (a minute or two of compilation per model)")
    ap.add_argument("--compile-budget", type=float, default=300.0,
                    help="seconds of torch.compile first calls (compilation) per model after which the remaining "
                         "shapes' compile rows are skipped and say so (0: no limit); each T and each batch 1 / >1 "
                         "compiles again")
    ap.add_argument("--unrolled", action="store_true", help="also the unrolled function fallback (one export per T)")
    args = ap.parse_args(argv)
    from dsr_deploy.machine import cpu_flags, library_versions, machine_info

    shapes = [(4, 1)] if args.quick else [(4, 1), (4, 8), (20, 1), (20, 8)]
    models = [m for m in (args.models or ("sew_resnet18" if args.quick else ",".join(MODELS))).split(",") if m]
    if not set(models) <= set(MODELS):
        ap.error(f"--models: choose from {', '.join(MODELS)}")
    repeats = min(args.repeats, 2) if args.quick else args.repeats
    out = args.out or (Path(tempfile.gettempdir()) / "spikingjelly_cpu_quick" if args.quick
                       else HERE / "results" / "spikingjelly_cpu")
    before = [round(v, 2) for v in os.getloadavg()]
    rows: list = []
    flags = cpu_flags()
    simd = [f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile") if f in flags]
    result = {"machine": machine_info(), "cpu_flags": flags, "cpu_simd": simd, "versions": library_versions(),
              "torch_threads": torch.get_num_threads(), "repeats": repeats, "row_budget_s": args.row_budget,
              "load_before": before, "load_after": None, "planned_rows": len(models) * len(shapes),
              "compile": args.compile, "compile_budget_s": args.compile_budget, "quick": args.quick, "rows": rows}

    def write(_row=None) -> None:  # after every row: an interrupted run keeps what it measured
        result["load_after"] = [round(v, 2) for v in os.getloadavg()]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        out.with_suffix(".md").write_text(markdown(result))

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-sj-") as tmp:
        for name in models:
            bench_model(name, shapes, repeats, Path(tmp), done=lambda row: (rows.append(row), write()),
                        compile_=args.compile, budget_s=args.row_budget, unrolled=args.unrolled,
                        compile_budget_s=args.compile_budget)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    write()
    print(markdown(result))
    print(f"wrote {out.with_suffix('.json')} and .md in {result['wall_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
