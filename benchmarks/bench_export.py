"""Export time and ONNX Runtime CPU latency of a PreAct-ResNet-18-style CIFAR network.

The network is built from SpikingJelly layers and SpikingJelly DSR-IF neurons (the authors' CIFAR layout:
conv3x3 stem, 4 stages of two pre-activation blocks BN -> neuron -> conv, 1x1 conv shortcut, head
BN -> neuron -> AvgPool(4) -> neuron -> Linear -> BN1d -> neuron), random weights with BN statistics set so
that layers fire. Compared side by side, in one run, for each T and batch:

* ``function/scan``, ``function/unrolled``: our export, one ``dsr`` node per neuron layer + the FunctionProto
  fallback (run here by a stock ONNX Runtime, i.e. the function bodies; the dsr custom-op library is timed by
  the runtime / plugins benchmarks);
* ``portable/scan``, ``portable/unrolled``: our export, bodies inlined (standard ops only);
* ``plain``: ``torch.onnx.export`` of the SpikingJelly model itself (dynamo exporter, defaults; static shapes,
  so one export per batch size).

Per variant: export time (s), model node count, ORT session creation time, median latency of ``run`` (ORT CPU,
``--threads`` intra-op threads) and its ratio to a memcpy of the same bytes (input + output), plus the
ratio to ``plain``. Usage::

    python benchmarks/bench_export.py [--T 4 20] [--batch 1 8] [--width 64] [--reps 5] \
        [--out benchmarks/results/bench_export]
    python benchmarks/bench_export.py --bodies     # scan vs unrolled body on one neuron layer
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn


def preact_resnet18_sj(T: int, width: int = 64, num_classes: int = 10) -> nn.Module:
    from spikingjelly.activation_based import layer, neuron

    def sn():
        return neuron.DSRIFNode(T=T, v_threshold=1.0, alpha=0.5, v_threshold_lower_bound=0.01)

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.bn1 = layer.BatchNorm2d(cin, step_mode="m")
            self.relu1 = sn()
            self.conv1 = layer.Conv2d(cin, cout, 3, stride, 1, step_mode="m")
            self.bn2 = layer.BatchNorm2d(cout, step_mode="m")
            self.relu2 = sn()
            self.conv2 = layer.Conv2d(cout, cout, 3, 1, 1, step_mode="m")
            self.shortcut = (layer.Conv2d(cin, cout, 1, stride, 0, step_mode="m")
                             if stride != 1 or cin != cout else nn.Identity())

        def forward(self, x):
            s = self.relu1(self.bn1(x))
            out = self.conv2(self.relu2(self.bn2(self.conv1(s))))
            return out + self.shortcut(s)

    torch.manual_seed(0)
    w = width
    blocks, cin = [], w
    for cout, stride in ((w, 1), (2 * w, 2), (4 * w, 2), (8 * w, 2)):
        for s in (stride, 1):
            blocks.append(Block(cin, cout, s))
            cin = cout
    net = nn.Sequential(
        layer.Conv2d(3, w, 3, 1, 1, bias=False, step_mode="m"),
        *blocks,
        layer.BatchNorm2d(8 * w, step_mode="m"), sn(),
        layer.AvgPool2d(4, step_mode="m"), sn(),
        layer.Flatten(step_mode="m"),
        layer.Linear(8 * w, num_classes, step_mode="m"),
        layer.BatchNorm1d(num_classes, step_mode="m"), sn(),
    )
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            with torch.no_grad():
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(2.0, 4.0)  # push membranes over the threshold now and then
    return net.eval()


def preact_resnet18_sj_small() -> nn.Module:
    """T=4, stem width 16: the verify figures' PreAct-ResNet-style net
    (``bench_export.py:preact_resnet18_sj_small``)."""
    return preact_resnet18_sj(4, 16)


@contextlib.contextmanager
def quiet():
    import logging

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        levels = {}
        for name in ("torch.onnx", "torch.export", "torch._export", "onnxscript"):
            levels[name] = logging.getLogger(name).level
            logging.getLogger(name).setLevel(logging.ERROR)
        try:
            yield
        finally:
            for name, lvl in levels.items():
                logging.getLogger(name).setLevel(lvl)


def export_ours(model, shape, lowering, body):
    from dsr_deploy.convert import find_neurons
    from dsr_deploy.export import ExportOptions
    from dsr_deploy.export.base import ExportContext
    from dsr_deploy.export.onnx_writer import export_onnx_model

    ctx = ExportContext(model=model, neurons=find_neurons(model), input_shape=shape,
                        options=ExportOptions(lowering=lowering, function_body=body))
    t0 = time.perf_counter()
    with quiet():
        proto = export_onnx_model(ctx)
    return proto, time.perf_counter() - t0


def export_plain(model, shape):
    import onnx

    x = torch.zeros(shape)
    t0 = time.perf_counter()
    with quiet(), tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "plain.onnx")
        torch.onnx.export(model, (x,), path, input_names=["input"], output_names=["output"])
        proto = onnx.load(path)
    return proto, time.perf_counter() - t0


def time_ort(proto, x, threads, reps):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    t0 = time.perf_counter()
    sess = ort.InferenceSession(proto.SerializeToString(), sess_options=so, providers=["CPUExecutionProvider"])
    create = time.perf_counter() - t0
    (y,) = sess.run(None, {"input": x})  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        sess.run(None, {"input": x})
        times.append(time.perf_counter() - t0)
    return create, statistics.median(times), y


def time_memcpy(nbytes, reps=20):
    src = np.ones(nbytes // 4 + 1, np.float32)
    dst = np.empty_like(src)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class _OneLayer(nn.Module):
    """A single SpikingJelly DSR neuron layer: the function body is the whole cost."""

    def __init__(self, kind: str, T: int):
        super().__init__()
        from spikingjelly.activation_based import neuron

        self.sn = (neuron.DSRIFNode(T=T, v_threshold=1.0, alpha=0.5) if kind == "if"
                   else neuron.DSRLIFNode(T=T, v_threshold=0.3, tau=1.0, delta_t=0.05, alpha=0.3))

    def forward(self, x):
        return self.sn(x)


def bench_bodies(args) -> None:
    """Scan vs unrolled function body on one neuron layer [T, B, 128, 16, 16] (the body dominates), ORT CPU."""
    rows = []
    for kind in ("if", "lif"):
        for T in args.T:
            for B in args.batch:
                shape = (T, B, 128, 16, 16)
                model = _OneLayer(kind, T).eval()
                x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
                with torch.no_grad():
                    ref = model(torch.from_numpy(x)).numpy()
                memcpy = time_memcpy(x.nbytes + ref.nbytes)
                for lowering, body in (("function", "scan"), ("function", "unrolled")):
                    proto, secs = export_ours(model, shape, lowering, body)
                    create, lat, y = time_ort(proto, x, args.threads, args.reps)
                    rows.append({"neuron": kind, "T": T, "batch": B, "body": body, "export_s": round(secs, 2),
                                 "session_create_s": round(create, 4), "latency_ms": round(lat * 1e3, 3),
                                 "vs_memcpy": round(lat / memcpy, 1), "bit_exact": bool(np.array_equal(y, ref))})
                    print(f"{kind} T={T} B={B} {body}: {lat * 1e3:.2f} ms", file=sys.stderr)
    out = Path(args.out + "_bodies")
    meta = _meta(args)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = ["# bench_export --bodies: ONNX function body on one DSR neuron layer [T, B, 128, 16, 16], ORT CPU "
             "(stock ORT: the function fallback)", "", "  ".join(f"{k}: {v}" for k, v in meta.items()), "",
             "| neuron | T | batch | body | export s | session s | latency ms | x memcpy | bit-exact |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['neuron']} | {r['T']} | {r['batch']} | {r['body']} | {r['export_s']} | "
                     f"{r['session_create_s']} | {r['latency_ms']} | {r['vs_memcpy']} | {r['bit_exact']} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _meta(args) -> dict:
    from dsr_deploy.machine import cpu_flags, cpu_model

    return {
        "machine": f"{cpu_model()} ({' '.join(cpu_flags())}), {os.cpu_count()} cores (shared with other jobs)",
        "load_avg": " ".join(f"{v:.1f}" for v in os.getloadavg()),
        "python": platform.python_version(), "torch": torch.__version__,
        "onnxruntime": __import__("onnxruntime").__version__, "threads": args.threads, "reps": args.reps,
        "width": args.width, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bodies", action="store_true", help="only the scan-vs-unrolled body benchmark on one layer")
    ap.add_argument("--T", type=int, nargs="+", default=[4, 20])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--width", type=int, default=64, help="stem width (64 = PreAct-ResNet-18)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/bench_export")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.bodies:
        bench_bodies(args)
        return
    rows = []
    variants = [("function", "scan"), ("function", "unrolled"), ("portable", "scan"), ("portable", "unrolled")]
    for T in args.T:
        model = preact_resnet18_sj(T, args.width)
        shape0 = (T, args.batch[0], 3, 32, 32)
        protos = {}
        for lowering, body in variants:
            proto, secs = export_ours(model, shape0, lowering, body)
            protos[f"{lowering}/{body}"] = (proto, secs)
            print(f"T={T} exported {lowering}/{body} in {secs:.1f}s ({len(proto.graph.node)} nodes)", file=sys.stderr)
        for B in args.batch:
            shape = (T, B, 3, 32, 32)
            x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
            with torch.no_grad():
                ref = model(torch.from_numpy(x)).numpy()
            plain, plain_secs = export_plain(model, shape)  # static shapes: one export per batch
            print(f"T={T} B={B} plain export in {plain_secs:.1f}s ({len(plain.graph.node)} nodes)", file=sys.stderr)
            memcpy = time_memcpy(x.nbytes + ref.nbytes)
            entries = {**protos, "plain": (plain, plain_secs)}
            timed = {}
            for name, (proto, secs) in entries.items():
                create, lat, y = time_ort(proto, x, args.threads, args.reps)
                timed[name] = lat
                rows.append({
                    "T": T, "batch": B, "variant": name, "export_s": round(secs, 3), "nodes": len(proto.graph.node),
                    "session_create_s": round(create, 4), "latency_ms": round(lat * 1e3, 3),
                    "vs_memcpy": round(lat / memcpy, 1), "max_abs_diff_vs_torch": float(np.abs(y - ref).max()),
                    "top1_equal": bool(np.array_equal(y.mean(0).argmax(-1), ref.mean(0).argmax(-1))),
                })
                print(f"T={T} B={B} {name}: {lat * 1e3:.2f} ms", file=sys.stderr)
            for r in rows:
                if r["T"] == T and r["batch"] == B:
                    r["vs_plain"] = round(timed[r["variant"]] / timed["plain"], 3)
                    r["memcpy_ms"] = round(memcpy * 1e3, 4)
    meta = _meta(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = ["# bench_export: PreAct-ResNet-18-style CIFAR net (SpikingJelly layers, DSR-IF), ONNX Runtime CPU", "",
             "  ".join(f"{k}: {v}" for k, v in meta.items()), "",
             "| T | batch | variant | export s | nodes | session s | latency ms | x memcpy | x plain "
             "| max abs diff | top-1 = |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['T']} | {r['batch']} | {r['variant']} | {r['export_s']} | {r['nodes']} | "
                     f"{r['session_create_s']} | {r['latency_ms']} | {r['vs_memcpy']} | {r['vs_plain']} | "
                     f"{r['max_abs_diff_vs_torch']:.3g} | {r['top1_equal']} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
