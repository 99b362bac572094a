#!/usr/bin/env python3
"""Write the measured numbers into the docs from ``benchmarks/results/*.json`` (``make docs-numbers``).

Each generated block sits between ``<!-- docs-numbers:NAME -->`` and ``<!-- /docs-numbers:NAME -->`` in its file;
everything between the markers is replaced, nothing else is touched. ``--check`` writes nothing and exits 1 when a
block differs from what the results files give (the test suite runs it), so a number is never edited by hand.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _load(name: str, results: Path) -> dict:
    return json.loads((results / name).read_text())


def _x(v: float) -> str:
    return f"{v:.2f}x"


def _kernel_rows(results: Path) -> dict:
    """Ratios of bench_kernels_cpu.json by neuron kind ("if", "lif")."""
    data = _load("bench_kernels_cpu.json", results)
    out = {"machine": data["machine"]}
    for r in data["results"]:
        copy = r["copy_prealloc_s"]
        out[r["kind"]] = {
            "shape": r["shape"], "dtype": r["dtype"],
            "kernel_vs_memcpy": r["kernel_prealloc_s"] / copy,
            "op_vs_memcpy": r["torch_op_s"] / copy,
            "op_fresh_vs_memcpy": r["torch_op_fresh_s"] / copy,
            "op_vs_clone": r["torch_op_s"] / r["clone_s"],
            "ort_vs_memcpy": r["ort_custom_s"] / copy,
            "ort_vs_fallback": r["ort_function_fallback_s"] / r["ort_custom_s"],
            "op_vs_spikingjelly": r["spikingjelly_s"] / r["torch_op_s"],
        }
    return out


def _backend_speedups(results: Path) -> tuple[dict, list[int], dict]:
    data = _load("bench_backends_cpu.json", results)
    table: dict[str, dict[int, float]] = {}
    for r in data["results"]:
        if r.get("error") is None and r.get("speedup_vs_first") is not None:
            table.setdefault(r["label"], {})[int(r["batch"])] = float(r["speedup_vs_first"])
    return table, list(data["settings"]["batches"]), data


def _int8_rows(results: Path) -> list:
    """The int8 rows: bench_backends_cpu_int8.json (one run, every entry side by side) and the int8 quickstart's
    held-out accuracy (quickstart_digits_cnn_cpu_int8.json)."""
    d = _load("bench_backends_cpu_int8.json", results)
    mean = {(r["label"], r["batch"]): r["latency_ms"]["mean"] for r in d["results"] if r.get("latency_ms")}
    f32, q, best = ("onnxruntime custom ops", "onnxruntime int8 custom ops",
                    "onnxruntime int8 nhwc quantized-neuron ops")
    form = "`--int8-neuron quantized --int8-layout nhwc`"
    if ("onnxruntime int8 --target onnxruntime-cpu", 8) in mean:  # results since issue 26: the target's own row
        best = "onnxruntime int8 --target onnxruntime-cpu"
        form = ("`--int8-neuron quantized --int8-layout nhwc --int8-all-layers`, the residual path in int8, the "
                "convolutions on spikes event-driven")
    sj, sjc = "spikingjelly eager", "spikingjelly torch.compile"
    load = d["settings"].get("load_average", {}).get("before", [0.0])[0]
    speed = (f"{mean[(best, 8)]:.0f} vs {mean[(f32, 8)]:.0f} ms ({_x(mean[(f32, 8)] / mean[(best, 8)])}) / "
             f"{mean[(best, 1)]:.1f} vs {mean[(f32, 1)]:.1f} ms ({_x(mean[(f32, 1)] / mean[(best, 1)])}) with "
             f"`--target onnxruntime-cpu` ({form}); "
             f"{_x(mean[(sj, 8)] / mean[(best, 8)])} faster than SpikingJelly eager and "
             f"{_x(mean[(sjc, 8)] / mean[(best, 8)])} than SpikingJelly under `torch.compile` at batch 8; the "
             f"portable Q/DQ form {_x(mean[(f32, 8)] / mean[(q, 8)])} / {_x(mean[(f32, 1)] / mean[(q, 1)])} "
             "([benchmarks/results/bench_backends_cpu_int8.md](benchmarks/results/bench_backends_cpu_int8.md))")
    what = ("PreAct-ResNet-18 LIF, T=20, batch 8 / 1, ONNX Runtime + our kernels: int8 (`--precision int8`) vs "
            f"float32 ({d['machine'].get('cpu_model')}, load {load:.1f})")
    qs = _load("quickstart_digits_cnn_cpu_int8.json", results)
    accs = sorted({a["accuracy"] for a in qs["accuracy"] if a.get("accuracy") is not None})
    acc = " / ".join(f"{100 * a:.2f} %" for a in accs)
    same = "; every prediction identical" if all(not a.get("predictions_differing") for a in qs["accuracy"]) else ""
    neurons = ("every neuron bit-exact given its dequantised input" if qs["neurons_exact"]
               else "neurons NOT bit-exact")
    return [(what, speed),
            ("shipped digits model in int8 (`quickstart --precision int8`)",
             f"{acc} held-out accuracy (float32: {100 * qs['pytorch_accuracy']:.2f} %{same}); {neurons}")]


def block_readme_measured(results: Path) -> str:
    k = _kernel_rows(results)
    i, lif = k["if"], k["lif"]
    n = math.prod(i["shape"])
    out_mb = n * 4 / 1e6
    load = k["machine"].get("load_average_1min_at_start")
    speed, batches, bdata = _backend_speedups(results)
    b = " / ".join(str(x) for x in batches)
    custom = " / ".join(_x(speed["onnxruntime custom ops"][x]) for x in batches)
    fallback = " / ".join(_x(speed["onnxruntime function fallback"][x]) for x in batches)
    export = {r["variant"]: r for r in _load("bench_export.json", results)["rows"] if r["T"] == 20 and r["batch"] == 8}
    serving = _load("serving.json", results)
    int8_rows = _int8_rows(results)
    fid = _load("fidelity_cpu.json", results)["rows"]
    fid_exact = sum(1 for r in fid if r["neuron_exact"])
    ort = [r for r in fid if r["backend"].startswith("onnxruntime")]
    fid_ort_min = min(r["min_layer_agreement"] for r in ort)
    fid_ort_input = max(r["first_input_rel_diff"] or 0.0 for r in ort)
    fid_top1 = min(r["top1_agreement"] for r in fid)
    mem = serving["memory"]
    rows = [
        ("what", "result"),
        ("---", "---"),
        (f"one DSR layer, T={i['shape'][0]}, {n / 1e6:.0f}M {i['dtype']} elements: native CPU kernel into an "
         "existing buffer",
         f"IF {_x(i['kernel_vs_memcpy'])}, LIF {_x(lif['kernel_vs_memcpy'])} a memcpy of the same bytes"
         + (f" (load {load:.1f})" if load is not None else "")),
        (f"the same through `torch.ops.dsr` (allocates its {out_mb:.0f} MB output in recycled 2 MB-aligned huge-page "
         "mappings)",
         f"{_x(i['op_vs_memcpy'])} / {_x(lif['op_vs_memcpy'])} memcpy ({_x(i['op_vs_clone'])} / "
         f"{_x(lif['op_vs_clone'])} a `clone()`); {_x(i['op_vs_spikingjelly'])} / {_x(lif['op_vs_spikingjelly'])} "
         "faster than SpikingJelly eager (the spread over runs: [docs/kernel-runs.md](docs/kernel-runs.md))"),
        ("ONNX Runtime with `libdsr_ort_ops.so`",
         f"{_x(i['ort_vs_memcpy'])} / {_x(lif['ort_vs_memcpy'])} memcpy; {_x(i['ort_vs_fallback'])} / "
         f"{_x(lif['ort_vs_fallback'])} faster than the model's function fallback"),
        (f"PreAct-ResNet-18 LIF, T={bdata['settings']['timesteps'][0]}, batch {b} (convolutions dominate): ONNX "
         "Runtime with our kernels",
         f"{custom} faster than SpikingJelly eager (function fallback {fallback})"),
        ("ONNX function lowering (Scan) vs plain `torch.onnx.export`, ResNet-18-style half width, T=20, batch 8 "
         "(shared machine)",
         f"{export['function/scan']['latency_ms'] / 1000:.2f} s vs {export['plain']['latency_ms'] / 1000:.2f} s per "
         "batch in ONNX Runtime"),
        ("fidelity, teacher-forced: PreAct-ResNet-18 LIF, T=20, three initialisations, direct and noise inputs, "
         "every format x backend",
         f"every neuron bit-exact given the same input in {fid_exact} of {len(fid)} runs"),
        ("fidelity end to end, same runs (AVX-512 EPYC)",
         f"TorchScript, pt2: identical; ONNX Runtime: input to the first neuron layer differs by up to "
         f"{fid_ort_input:.1e} (rel.), lowest layer spike agreement {100 * fid_ort_min:.1f} %, top-1 agreement "
         f"{100 * fid_top1:.0f} % ([docs/fidelity.md](docs/fidelity.md))"),
        int8_rows[0],
        int8_rows[1],
        (f"serving (PyTriton, loopback, shared machine): batch 1 / dynamic batching, "
         f"{serving['server_dynamic_batching']['clients']} clients",
         f"{serving['server_batch1']['req_per_s']:.0f} / {serving['server_dynamic_batching']['req_per_s']:.0f} "
         f"req/s; memory after 10,000 requests: +{mem['growth_percent']:.3f} % over after 100"),
    ]
    return "\n".join(f"| {a} | {c} |" for a, c in rows) + "\n"


def block_plugins_kernels(results: Path) -> str:
    k = _kernel_rows(results)
    i, lif, m = k["if"], k["lif"], k["machine"]
    T, B, *rest = i["shape"]
    load = m.get("load_average_1min_at_start")
    head = (f"### CPU numbers (benchmarks/bench_kernels.py, {m['date']}, T={T}, B={B}, {'x'.join(map(str, rest))} "
            f"{i['dtype']}, {m['logical_cpus']}-core {m['cpu']}" + (f", load {load:.1f}" if load is not None else "")
            + ")\n\n")
    rows = [
        ("", "IF", "LIF", "target"),
        ("---", "---", "---", "---"),
        ("kernel into a preallocated output vs memcpy (preallocated)", _x(i["kernel_vs_memcpy"]),
         _x(lif["kernel_vs_memcpy"]), "<= 1.5x (goal 1.2x)"),
        ("`torch.ops.dsr` op (allocates its output, recycled) vs memcpy (preallocated)", _x(i["op_vs_memcpy"]),
         _x(lif["op_vs_memcpy"]), "<= 1.5x (goal 1.2x)"),
        ("same, output recycling off (`DSR_DEPLOY_OUTPUT_CACHE_MB=0`: fresh memory each call)",
         _x(i["op_fresh_vs_memcpy"]), _x(lif["op_fresh_vs_memcpy"]), ""),
        ("ORT custom op vs memcpy (preallocated)", _x(i["ort_vs_memcpy"]), _x(lif["ort_vs_memcpy"]), "<= 2x"),
        ("ORT custom op speed-up over the model-local function fallback (unrolled body)", _x(i["ort_vs_fallback"]),
         _x(lif["ort_vs_fallback"]), ""),
        ("`torch.ops.dsr` op speed-up over SpikingJelly 2.0 eager", _x(i["op_vs_spikingjelly"]),
         _x(lif["op_vs_spikingjelly"]), ">= 10x"),
    ]
    return head + "\n".join("| " + " | ".join(r) + " |" for r in rows) + "\n"


def block_runtime_backends(results: Path) -> str:
    speed, batches, data = _backend_speedups(results)
    k = _kernel_rows(results)
    before = data["settings"].get("load_average", {}).get("before") or [None]
    load = f"load average {before[0]:.1f} at the start" if before[0] is not None else "load not recorded"
    first = data["settings"]["baseline"]
    lines = [f"{data['artifact']}, T={data['settings']['timesteps'][0]}, {data['machine']['cpu_cores']}-core "
             f"{data['machine']['cpu_model']}, {load} ({data['created'][:10]}); speed-up over {first}:", "",
             "| backend | " + " | ".join(f"batch {b}" for b in batches) + " |",
             "|---|" + "---|" * len(batches)]
    for label, by_batch in speed.items():
        if label == first:
            continue
        lines.append(f"| {label} | " + " | ".join(_x(by_batch[b]) if b in by_batch else "-" for b in batches) + " |")
    lines += ["", "The convolutions dominate this network, so the spike loop's own speed-up over SpikingJelly "
              f"(bench_kernels: {k['if']['op_vs_spikingjelly']:.1f}x IF, {k['lif']['op_vs_spikingjelly']:.1f}x LIF) "
              "shows only in part."]
    return "\n".join(lines) + "\n"


def block_serving_replicas(results: Path) -> str:
    """docs/serving.md: replicas behind nginx vs one direct (benchmarks/bench_serving_balancer.py)."""
    data = _load("serving_balancer.json", results)
    m, load = data["machine"], data["load_average"]
    rows = [("set-up", "streams: req/s [rounds' range] (p50 ms)",
             "multi-step, dynamic batching: req/s [rounds' range] (p50 ms)"), ("---",) * 3]

    def cell(key, work):
        r, per = data[key][work], [x[work]["req_per_s"] for x in data["rounds"][key]]
        return f"{r['req_per_s']:.0f} [{min(per):.0f}-{max(per):.0f}] ({r['p50_ms']:.1f})"

    for label, key in (("1 replica, direct", "direct_1"), ("1 replica behind nginx", "nginx_1"),
                       ("2 replicas behind nginx", "nginx_2")):
        rows.append((label, cell(key, "streaming"), cell(key, "multistep_dynamic_batching")))
    head = (f"Measured on {m['cores']} cores ({m['cpu']}, {data['nginx']}, {data['clients']} concurrent clients, "
            f"median of {data['rounds_n']} rounds; load {load['before'][0]:.1f} before, {load['after'][0]:.1f} "
            "after): on one 2-core machine this shows the balancer's cost, not scaling. Read a difference against "
            "the rounds' range: on this shared machine one within it is noise "
            "([results](../benchmarks/results/serving_balancer.md)).\n\n")
    return head + "\n".join("| " + " | ".join(r) + " |" for r in rows) + "\n"


def block_runtime_early_exit(results: Path) -> str:
    """docs/runtime.md: the digits model's early exit (benchmarks/bench_early_exit.py), one run."""
    d = _load("early_exit_digits_cpu.json", results)
    m, cal = d["machine"], d["early_exit_record"]["calibration"]
    load = d["load_average"]
    lines = [f"{d['model']}, T={d['T']}, {d['heldout_images']} held-out images; {m['cpu_cores']}-core "
             f"{m['cpu_model']}, {d['backend']}; 1-min load average {load['before'][0]:.1f} at the start, "
             f"{load['after'][0]:.1f} at the end ({d['created'][:10]}; benchmarks/results/early_exit_digits_cpu.md).",
             "", f"Rule chosen for `--max-drop {d['max_drop']:g}`: **{d['chosen_rule']}**, {cal['accuracy']:.2%} at "
             f"{cal['mean_steps']:.2f} mean steps (full T: {d['full_accuracy']:.2%}). Every image stopped at step t: "
             + ", ".join(f"{f['steps']}: {f['accuracy']:.1%}" for f in d["fixed_steps"]) + ".", "",
             "| run | batch | mean steps | p50 ms | p90 ms | images/s |", "|---|---|---|---|---|---|"]
    for b, rows in d["latency"].items():
        for r in rows:
            lines.append(f"| {r['entry']} | {b} | {r['mean_steps']:.2f} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} | "
                         f"{r['samples_per_s']:.0f} |")
    return "\n".join(lines) + "\n"


BLOCKS: dict[str, tuple[str, Callable[[Path], str]]] = {
    "measured": ("README.md", block_readme_measured),
    "kernels": ("plugins/README.md", block_plugins_kernels),
    "backends": ("docs/runtime.md", block_runtime_backends),
    "serving-replicas": ("docs/serving.md", block_serving_replicas),
    "early_exit": ("docs/runtime.md", block_runtime_early_exit),
}


def render(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- docs-numbers:{name} -->\n).*?(<!-- /docs-numbers:{name} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"docs-numbers: no <!-- docs-numbers:{name} --> block")
    return pattern.sub(lambda m: m.group(1) + "\n" + body + "\n" + m.group(2), text, count=1)


def main(argv: list[str] | None = None, root: Path = ROOT, results: Path = RESULTS) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a block is out of date")
    args = ap.parse_args(argv)
    stale = []
    for name, (rel, make) in BLOCKS.items():
        path = root / rel
        old = path.read_text()
        new = render(old, name, make(results))
        if new != old:
            stale.append(rel)
            if not args.check:
                path.write_text(new)
    if args.check and stale:
        print(f"docs-numbers: out of date in {', '.join(stale)}; run `make docs-numbers`", file=sys.stderr)
        return 1
    if not args.check:
        print(f"docs-numbers: {len(stale)} file(s) updated" + (f": {', '.join(stale)}" if stale else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
