#!/usr/bin/env python
"""Side-by-side latency of one PreAct-ResNet-18 (CIFAR, T=20) on every CPU backend, in one run.

Entries, in order (the first is the baseline of the `speedup` column):

1. SpikingJelly 2.0 eager: the same network and weights with ``spikingjelly...DSRIFNode/DSRLIFNode`` neurons;
2. dsr_deploy eager: our neuron modules (native ``libdsr_torch_ops.so`` kernels when built, else the Python
   reference: the result records which);
3. TorchScript, 4. torch.export (pt2): the artifacts ``dsr-deploy export`` writes;
5. ONNX Runtime, function fallback (the ``dsr`` nodes' model-local Scan functions);
6. ONNX Runtime with the dsr custom-op library ``libdsr_ort_ops.so`` (skipped, and said so, when not built);
7. (``--compile``) SpikingJelly under ``torch.compile`` (inductor; compiling takes minutes on 2 cores);
8. (``--int8``, default on) the ``export --precision int8`` model of the same network (calibrated on
   direct-encoded N(0, 1) images) in ONNX Runtime, function fallback and custom ops, with the quantised
   neuron ops (``int8_neuron="quantized"``), and channels-last for ONNX Runtime's CPU (``int8_layout="nhwc"``,
   function fallback and quantised neuron ops), and what ``--target onnxruntime-cpu`` exports (also the residual
   path in int8 and the first layer quantised); the notes add its top-1 agreement with the float32 export on
   direct-encoded inputs.

Every row also has the time of a memcpy of the same bytes, measured in the same run. Kept feasible on a
2-core machine: few iterations (``--iters``), batch 1 and 8.

    python benchmarks/bench_backends.py                       # writes benchmarks/results/bench_backends_cpu.*
    python benchmarks/bench_backends.py --neuron if --iters 5 --out /tmp/bench
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def spikingjelly_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The same network with SpikingJelly's DSR neurons (same effective parameters) in place of ours."""
    import copy

    from spikingjelly.activation_based.neuron import DSRIFNode as SJIF
    from spikingjelly.activation_based.neuron import DSRLIFNode as SJLIF

    from dsr_deploy.neuron import DSRIFNode, DSRLIFNode

    sj = copy.deepcopy(model)
    for name, m in list(sj.named_modules()):
        if isinstance(m, (DSRIFNode, DSRLIFNode)):
            vth = float(m.effective_threshold())
            common = dict(T=m.T, v_threshold=vth, alpha=m.alpha, v_threshold_training=False,
                          v_threshold_lower_bound=m.v_threshold_lower_bound, step_mode="m")
            new = SJIF(**common) if isinstance(m, DSRIFNode) else SJLIF(tau=m.tau, delta_t=m.delta_t, **common)
            parent = sj.get_submodule(name.rsplit(".", 1)[0]) if "." in name else sj
            setattr(parent, name.rsplit(".", 1)[-1], new)
    return sj.eval()


def direct_encoded(n: int, T: int, seed: int):
    """``n`` N(0, 1) CIFAR-sized images, each repeated over T: ``[T, n, 3, 32, 32]`` float32."""
    import numpy as np

    x = np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)
    return np.ascontiguousarray(np.broadcast_to(x[None], (T, *x.shape)))


def int8_export(model, float_export: Path, out: Path, T: int, samples: int, name: str) -> list[str]:
    """Write the int8 export and return notes: how long it took and its top-1 agreement (firing rate over T)
    with the float32 export on direct-encoded inputs (16 images not used for calibration)."""
    from dsr_deploy.export import Int8Options, export_model
    from dsr_deploy.runtime import load_runner

    t0 = time.monotonic()
    export_model(model, (T, 2, 3, 32, 32), out, formats=("onnx",), spec=f"zoo:{name}", precision="int8",
                 int8=Int8Options(calibration=direct_encoded(samples, T, seed=1)))
    took = time.monotonic() - t0
    x = direct_encoded(16, T, seed=2)
    rates = []
    for folder in (float_export, out):
        runner = load_runner(folder, backend="onnxruntime", custom_ops="off").load()
        rates.append(runner.infer({"input": x})["output"].sum(0))
        runner.release()
    agree = float((rates[0].argmax(-1) == rates[1].argmax(-1)).mean())
    spikes = float((rates[0] == rates[1]).mean())
    return [f"int8 export (`--precision int8`, calibrated on {samples} direct-encoded N(0, 1) images) took "
            f"{took:.0f} s; top-1 agreement with float32 on 16 other direct-encoded inputs (random weights): "
            f"{agree:.1%}; output spike counts equal: {spikes:.1%}"]


def markdown(result, notes: list[str]) -> str:
    m, lib = result.machine, result.libraries
    s = result.settings
    lines = [
        f"# Backend latency: PreAct-ResNet-18 (CIFAR, 32x32), T={s['timesteps'][0]}, "
        f"{'GPU ' + m['gpu'] if m['gpu'] and s.get('device', 'cpu') != 'cpu' else 'CPU'}",
        "",
        f"Written by `benchmarks/bench_backends.py` on {result.created}. One run; all entries measured in the same "
        "process, one after the other, on the same input.",
        "",
        f"* Machine: {m['cpu_model']}, {m['cpu_cores']} logical CPUs ({m['cpu_cores_usable']} usable), "
        f"{m['memory_gib']} GiB, GPU: {m['gpu'] or 'none'}; {m['os']}",
        f"* Libraries: torch {lib['torch']}, onnxruntime {lib['onnxruntime']}, onnx {lib['onnx']}, "
        f"spikingjelly {lib['spikingjelly']}, numpy {lib['numpy']}, python {lib['python']}",
        f"* Settings: batch {s['batches']}, T {s['timesteps']}, warm-up {s['warmup']}, timed iterations "
        f"{s['iters']}, threads {s.get('threads')}; neurons per sample per step {s['neurons_per_sample']}",
        *[f"* {n}" for n in notes],
        "",
        "| backend | batch | p50 ms | p90 ms | mean ms | min ms | samples/s | neuron-steps/s | speedup vs "
        f"{s['baseline']} | vs memcpy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result.rows:
        if not r["latency_ms"]:
            lines.append(f"| {r['label']} | {r['batch']} | {r['error']} | | | | | | | |")
            continue
        lat, thr = r["latency_ms"], r["throughput"]
        lines.append(
            f"| {r['label']} | {r['batch']} | {lat['p50']:.1f} | {lat['p90']:.1f} | {lat['mean']:.1f} | "
            f"{lat['min']:.1f} | {thr['samples_per_s']:.2f} | "
            f"{thr['neuron_steps_per_s']:.3g} | {r['speedup_vs_first']:.2f}x | {r['vs_memcpy']:.0f}x |"
            if thr["neuron_steps_per_s"] else
            f"| {r['label']} | {r['batch']} | {lat['p50']:.1f} | {lat['p90']:.1f} | {lat['mean']:.1f} | "
            f"{lat['min']:.1f} | {thr['samples_per_s']:.2f} | - | {r['speedup_vs_first']:.2f}x | "
            f"{r['vs_memcpy']:.0f}x |")
    lines += ["", "Runner descriptions (what actually ran):", ""]
    for label, d in result.entries.items():
        extra = ", ".join(f"{k}={v}" for k, v in d.items() if k not in ("backend", "artifact"))
        lines.append(f"* {label}: {d.get('backend')} ({extra})")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--neuron", choices=["if", "lif"], default="lif", help="neuron kind (authors' CIFAR runs: lif)")
    ap.add_argument("--T", type=int, default=20)
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch and ORT intra-op threads (default: library default)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_backends_cpu"),
                    help="output path without suffix (.json, .csv, .md are written)")
    ap.add_argument("--function-body", default="scan", choices=["scan", "unrolled"],
                    help="ONNX function fallback body the exporter writes")
    ap.add_argument("--int8", action=argparse.BooleanOptionalAction, default=True,
                    help="also the int8 (Q/DQ) export in ONNX Runtime")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                    help="also SpikingJelly under torch.compile (minutes of compiling per batch size)")
    ap.add_argument("--calibration-samples", type=int, default=8, help="int8: direct-encoded calibration images")
    ap.add_argument("--note", action="append", default=[], help="a line to add to the results' notes")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda: the same entries on the GPU (ORT CUDA EP with "
                    "I/O binding) plus TensorRT when installed. The cuda path has not run yet (no GPU here).")
    args = ap.parse_args(argv)
    if args.device != "cpu" and args.out == ap.get_default("out"):
        args.out = str(ROOT / "benchmarks" / "results" / "bench_backends_cuda")
    warnings.filterwarnings("ignore")

    from dsr_deploy import bench as B
    from dsr_deploy import models, ops
    from dsr_deploy.export import Int8Options, export_model
    from dsr_deploy.runtime import load_runner
    from dsr_deploy.runtime.onnxruntime import find_ort_library

    batches = B.parse_int_list(args.batch, "--batch")
    name = f"preact-resnet18-{args.neuron}"
    torch.manual_seed(0)
    model = models.build(name, pretrained=False, T=args.T).eval()
    shape = (args.T, 1, 3, 32, 32)
    neurons = B.count_neurons(model, shape)
    notes = [f"Model: zoo `{name}` (random weights, seed 0; latency does not depend on the weights' values, but for "
             "the event-driven int8 convolutions of `--target onnxruntime-cpu`, whose time follows the spike rate)",
             *args.note]
    native = ops.native_status()
    notes.append("dsr_deploy eager / pt2 neuron kernels: " + (f"native ({native['path']})" if native["loaded"]
                                                              else f"Python reference ({native['reason']})"))
    with tempfile.TemporaryDirectory(prefix="dsr-bench-") as tmp:
        export = Path(tmp) / "export"
        t0 = time.monotonic()
        # Export with batch 2: torch.export specialises a dimension whose example size is 1.
        export_model(model, (args.T, 2, 3, 32, 32), export, formats=("torchscript", "onnx", "pt2"), spec=f"zoo:{name}",
                     function_body=args.function_body)
        notes.append(f"Export (`dsr-deploy export`, ONNX function body: {args.function_body}) took "
                     f"{time.monotonic() - t0:.0f} s")
        opts = {"threads": args.threads} if args.threads else {}
        opts["device"] = args.device
        ort_opts = dict(opts, io_binding=True) if args.device.startswith("cuda") else opts
        entries = [
            B.BenchEntry("spikingjelly eager", load_runner(spikingjelly_copy(model), input_shape=shape,
                                                            reset_state=True, **opts)),
            B.BenchEntry("dsr_deploy eager", load_runner(model, input_shape=shape, **opts)),
            B.BenchEntry("torchscript", load_runner(export, backend="torchscript", **opts)),
            B.BenchEntry("pt2", load_runner(export, backend="pt2", **opts)),
            B.BenchEntry("onnxruntime function fallback", load_runner(export, backend="onnxruntime",
                                                                      custom_ops="off", **ort_opts)),
        ]
        if args.compile:
            entries.insert(1, B.BenchEntry("spikingjelly torch.compile", load_runner(
                torch.compile(spikingjelly_copy(model)), input_shape=shape, reset_state=True, **opts)))
        lib = find_ort_library()
        if lib is not None:
            entries.append(B.BenchEntry("onnxruntime custom ops", load_runner(export, backend="onnxruntime",
                                                                              custom_ops="require", **ort_opts)))
        else:
            notes.append("onnxruntime custom ops: NOT MEASURED, libdsr_ort_ops.so is not built "
                         "(`dsr-deploy plugins build`)")
        if args.int8:
            int8 = Path(tmp) / "export-int8"
            notes.extend(int8_export(model, export, int8, args.T, args.calibration_samples, name))
            entries.append(B.BenchEntry("onnxruntime int8 function fallback", load_runner(
                int8, backend="onnxruntime", custom_ops="off", **ort_opts)))
            # More int8 forms of the same network, each the same results bit for bit as the Q/DQ file
            # (tests/test_export_int8.py, tests/test_int8_layout.py): the quantised neuron ops (uint8 current in,
            # uint8 spike codes out, instead of Q/DQ around the float neuron) and the channels-last graph for
            # ONNX Runtime's CPU (`--int8-layout nhwc`: no transposes between layers).
            forms = [("onnxruntime int8 custom ops", None, "require")] if lib is not None else []
            forms.append(("onnxruntime int8 nhwc function fallback", {"layout": "nhwc"}, "off"))
            if lib is not None:
                forms += [("onnxruntime int8 quantized-neuron ops", {"neuron": "quantized"}, "require"),
                          ("onnxruntime int8 nhwc quantized-neuron ops",
                           {"neuron": "quantized", "layout": "nhwc"}, "require"),
                          # what `--target onnxruntime-cpu` exports: also the residual path in int8 (folded
                          # BatchNorms, QLinearAdd) and the first layer and readout quantised
                          ("onnxruntime int8 --target onnxruntime-cpu", {"target": "onnxruntime-cpu"}, "require")]
            for k, (label, options, custom_ops) in enumerate(forms):
                if options and (options.get("layout") == "nhwc" or "target" in options) and args.device != "cpu":
                    notes.append(f"{label}: not measured on {args.device} (ONNX Runtime's CPU provider only)")
                    continue
                folder = int8
                if options:
                    folder = Path(tmp) / f"export-int8-{k}"
                    forms_opts = {k: v for k, v in options.items() if k != "target"}
                    export_model(model, (args.T, 2, 3, 32, 32), folder, formats=("onnx",), spec=f"zoo:{name}",
                                 precision="int8", target=options.get("target", "portable"),
                                 int8=Int8Options(calibration=direct_encoded(args.calibration_samples, args.T, seed=1),
                                                  **forms_opts))
                entries.append(B.BenchEntry(label, load_runner(folder, backend="onnxruntime", custom_ops=custom_ops,
                                                               **ort_opts)))
        if args.device.startswith("cuda"):
            import importlib.util

            if importlib.util.find_spec("tensorrt") is None:
                notes.append("tensorrt: NOT MEASURED, TensorRT is not installed (pip install 'dsr-deploy[tensorrt]')")
            else:
                from dsr_deploy.engine import Range, build_engine

                top = max(batches)
                build_engine(export / "model.onnx", export / "model.plan", batch=Range(1, top, top),
                             timesteps=Range(args.T, args.T, args.T), log=lambda m: notes.append(m))
                entries.append(B.BenchEntry("tensorrt", load_runner(export / "model.plan")))
        load_avg = os.getloadavg()
        notes.append(f"Load average before the run: {load_avg[0]:.1f} / {load_avg[1]:.1f} / {load_avg[2]:.1f} "
                     "(the machine is shared; treat small differences as noise)")

        def progress(event, **info):
            if event == "row":
                print(f"  {info['label']:32s} batch={info['batch']:<3d} T={info['timesteps']}", end="", flush=True)
            elif event == "row_done":
                r = info["row"]
                print(f"  mean {r['latency_ms']['mean']:.1f} ms" if r["latency_ms"] else f"  {r['error']}")

        result = B.run_benchmark(entries, batches, [args.T], warmup=args.warmup, iters=args.iters,
                                 input_shape=shape, neurons=neurons, artifact=f"zoo:{name}",
                                 progress=progress,
                                 settings_extra={"threads": args.threads, "function_body": args.function_body,
                                                 "device": args.device,
                                                 "native_torch_ops": native,
                                                 "ort_ops_library": str(lib) if lib else None})
    after = os.getloadavg()
    notes.append(f"Load average after the run: {after[0]:.1f} / {after[1]:.1f} / {after[2]:.1f}")
    result.settings["load_average"] = {"before": list(load_avg), "after": list(after)}
    out = Path(args.out)
    B.write_json(result, out.with_suffix(".json"))
    B.write_csv(result, out.with_suffix(".csv"))
    from dsr_deploy.io import atomic_write_text

    atomic_write_text(out.with_suffix(".md"), markdown(result, notes))
    print(markdown(result, notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
