"""CPU spike-loop kernels side by side in one run: native vs a memcpy of the same bytes, the Python reference,
SpikingJelly's eager node, and (when libdsr_ort_ops.so is built) the ONNX Runtime custom op vs the function fallback.

    python benchmarks/bench_kernels.py [--shape 20 32 128 16 16] [--out benchmarks/results/bench_kernels_cpu.md]

Bytes per call = input read + output write; the copies move exactly that. Two memcpy floors:
* into a preallocated buffer (``dst.copy_(x)`` / ``memmove``, the faster one counts), paired with the kernel writing
  into a preallocated output (libdsr_kernels.so through ctypes): the kernel's own efficiency;
* into a fresh tensor (``x.clone()``), paired with ``torch.ops.dsr.*`` (which allocates its output): what a caller
  sees. A fresh 84 MB buffer costs page faults on first touch; PyTorch's THP_MEM_ALLOC_ENABLE=1 (transparent huge
  pages for large CPU tensors) cuts most of that; the run records whether it was set. The op's large outputs are
  2 MB-aligned huge-page mappings recycled when the tensor dies (plugins/README.md), so it is timed twice: as is
  (outputs dropped after each call, the usual inference loop: the mapping is reused) and, in a child process with
  DSR_DEPLOY_OUTPUT_CACHE_MB=0, with recycling off (each call maps and faults in a fresh output).
Each timing is the median of --repeats calls (slow peers: fewer). No assertion on speed: the numbers are reported.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dsr_deploy import functional as F  # noqa: E402
from dsr_deploy import ops, plugins  # noqa: E402
from dsr_deploy.io import atomic_write_text  # noqa: E402

IF_PARAMS = dict(v_threshold=6.0, alpha=0.5)  # the authors' IF settings
LIF_PARAMS = dict(v_threshold=0.3, alpha=0.3, tau=1.0, delta_t=0.05)  # the authors' CIFAR LIF settings


def median_time(fn, repeats, warmup=1):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def machine():
    from dsr_deploy.machine import cpu_flags, cpu_model

    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    import onnxruntime

    return dict(cpu=cpu_model(), cpu_vector_flags=" ".join(cpu_flags()), logical_cpus=os.cpu_count(),
                torch_threads=torch.get_num_threads(),
                torch=torch.__version__, onnxruntime=onnxruntime.__version__, python=platform.python_version(),
                platform=platform.platform(), thp_mem_alloc=os.environ.get("THP_MEM_ALLOC_ENABLE", "unset"),
                load_average_1min_at_start=load,
                date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))


# ---- ONNX models: one custom node, with a model-local function of the same name as the fallback body ------------

def onnx_model(kind: str, T: int):
    """A model with one dsr node and, as its fallback, an unrolled function body (fixed T) with the same numerics."""
    from onnx import TensorProto, helper

    p = IF_PARAMS if kind == "if" else LIF_PARAMS
    name = "DSRIFSpike" if kind == "if" else "DSRLIFSpike"
    nodes = []

    def const(out, value):
        nodes.append(helper.make_node("Constant", [], [out], value=helper.make_tensor(out, TensorProto.FLOAT, [],
                                                                                      [value])))
    vth32 = float(np.float32(p["v_threshold"]))
    const("vth", vth32)
    const("thr", float(np.float32(np.float32(p["alpha"]) * np.float32(vth32))))
    const("zero", 0.0)
    if kind == "lif":
        beta = math.exp(-p["delta_t"] / p["tau"])
        const("decay", float(np.float32(beta)))
        const("gain", float(np.float32(1.0 - beta)))
        const("dt", float(np.float32(p["delta_t"])))
    xs = [f"x_{t}" for t in range(T)]
    nodes.append(helper.make_node("Split", ["x"], xs, axis=0, num_outputs=T))
    nodes.append(helper.make_node("Shape", [xs[0]], ["step_shape"]))
    nodes.append(helper.make_node("ConstantOfShape", ["step_shape"], ["v_init"],
                                  value=helper.make_tensor("z", TensorProto.FLOAT, [1], [0.0])))
    v, ys = "v_init", []
    for t in range(T):
        if kind == "if":
            nodes.append(helper.make_node("Add", [v, xs[t]], [f"h_{t}"]))
        else:
            nodes.append(helper.make_node("Mul", ["decay", v], [f"leak_{t}"]))
            nodes.append(helper.make_node("Mul", ["gain", xs[t]], [f"drive_{t}"]))
            nodes.append(helper.make_node("Add", [f"leak_{t}", f"drive_{t}"], [f"h_{t}"]))
        nodes.append(helper.make_node("GreaterOrEqual", [f"h_{t}", "thr"], [f"fire_{t}"]))
        nodes.append(helper.make_node("Where", [f"fire_{t}", "vth", "zero"], [f"s_{t}"]))
        nodes.append(helper.make_node("Sub", [f"h_{t}", f"s_{t}"], [f"v_{t}"]))
        if kind == "lif":
            nodes.append(helper.make_node("Div", [f"s_{t}", "dt"], [f"y_{t}"]))
            ys.append(f"y_{t}")
        else:
            ys.append(f"s_{t}")
        v = f"v_{t}"
    nodes.append(helper.make_node("Concat", ys, ["y"], axis=0))
    opsets = [helper.make_opsetid("", 18)]
    function = helper.make_function("dsr", name, ["x"], ["y"], nodes, opsets)
    attrs = dict(p)
    if kind == "lif":
        beta = math.exp(-p["delta_t"] / p["tau"])
        attrs.update(decay=float(np.float32(beta)), gain=float(np.float32(1.0 - beta)))
    node = helper.make_node(name, ["x"], ["y"], domain="dsr", plugin_namespace="dsr", plugin_version="1", **attrs)
    graph = helper.make_graph([node], "bench", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=opsets + [helper.make_opsetid("dsr", 1)], functions=[function])
    return model


def op_time_without_recycling(kind, shape, repeats):
    """The torch op timed in a child process with its output pool off (DSR_DEPLOY_OUTPUT_CACHE_MB=0, read once per
    process): every call maps and faults in a fresh output. Same input recipe as main()."""
    code = f"""
import statistics, sys, time, torch
sys.path.insert(0, {str(ROOT)!r})
from dsr_deploy import ops
assert ops.load_native()
gen = torch.Generator().manual_seed(0)
x = torch.randn({list(shape)!r}, generator=gen) * 4.0
if {kind!r} == "lif":
    x = torch.randn({list(shape)!r}, generator=gen)
p = {(IF_PARAMS if kind == "if" else LIF_PARAMS)!r}
op = (lambda: ops.if_spike(x, **p)) if {kind!r} == "if" else (lambda: ops.lif_spike(x, **p))
op()
times = []
for _ in range({repeats}):
    t0 = time.perf_counter(); op(); times.append(time.perf_counter() - t0)
print(statistics.median(times))
"""
    env = dict(os.environ, DSR_DEPLOY_OUTPUT_CACHE_MB="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs="+", default=[20, 32, 128, 16, 16])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--slow-repeats", type=int, default=9,
                    help="calls per timing of the slow peers (SpikingJelly, the reference loop, the function "
                         "fallback); their times vary most")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_kernels_cpu.md")
    args = ap.parse_args()

    if not ops.load_native():
        raise SystemExit(f"native torch op not available: {ops.native_status()['reason']}")
    klib_path = ops.find_library(plugins.KERNELS_LIBRARY)
    if klib_path is None:
        raise SystemExit("libdsr_kernels.so not built: run `dsr-deploy plugins build`")
    klib = ctypes.CDLL(str(klib_path))
    klib.dsr_cpu_forward.restype = ctypes.c_int
    klib.dsr_cpu_forward.argtypes = [ctypes.c_int] + [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 2 + [ctypes.c_int] + \
        [ctypes.c_double] * 4 + [ctypes.c_int]
    klib.dsr_cpu_kernel_isa.restype = ctypes.c_char_p
    ort_lib = plugins.ort_library()
    try:
        from spikingjelly.activation_based import neuron as sj
    except ImportError:
        sj = None

    info = machine()
    info["kernel_isa"] = klib.dsr_cpu_kernel_isa().decode()
    shape = tuple(args.shape)
    T, N = shape[0], math.prod(shape[1:])
    gen = torch.Generator().manual_seed(0)
    results = []
    threads = torch.get_num_threads()
    for kind in ("if", "lif"):
        p = IF_PARAMS if kind == "if" else LIF_PARAMS
        x = torch.randn(shape, generator=gen) * (4.0 if kind == "if" else 1.0)
        nbytes = 2 * x.numel() * x.element_size()
        dst = torch.empty_like(x)
        row = dict(kind=kind, shape=list(shape), dtype="float32", bytes=nbytes)
        row["copy_prealloc_s"] = min(median_time(lambda: dst.copy_(x), args.repeats),
                                     median_time(lambda: ctypes.memmove(dst.data_ptr(), x.data_ptr(), nbytes // 2),
                                                 args.repeats))
        row["clone_s"] = median_time(lambda: x.clone(), args.repeats)
        y = torch.empty_like(x)
        neuron = 0 if kind == "if" else 1
        tau, dt = (1.0, 1.0) if kind == "if" else (p["tau"], p["delta_t"])
        # std::threads are started per call: on a loaded machine one thread can win; keep the faster setting.
        per_threads = {n: median_time(
            lambda: klib.dsr_cpu_forward(0, x.data_ptr(), y.data_ptr(), None, None, T, N, neuron, p["v_threshold"],
                                         p["alpha"], tau, dt, n), args.repeats) for n in sorted({1, threads})}
        row["kernel_prealloc_threads_s"] = per_threads
        row["kernel_prealloc_s"] = min(per_threads.values())
        op = (lambda: ops.if_spike(x, **p)) if kind == "if" else (lambda: ops.lif_spike(x, **p))
        row["torch_op_s"] = median_time(op, args.repeats)
        row["torch_op_fresh_s"] = op_time_without_recycling(kind, shape, max(args.repeats, 15))  # noisy: VM faults
        ref = ((lambda: F.if_forward(x, p["v_threshold"], p["alpha"])) if kind == "if" else
               (lambda: F.lif_forward(x, p["v_threshold"], p["alpha"], p["tau"], p["delta_t"])))
        row["reference_s"] = median_time(ref, args.slow_repeats)
        # Fidelity of what was timed: the op and the preallocated kernel give the reference's bits.
        y_ref = ref()[0]
        row["bit_exact"] = bool(torch.equal(op()[0].view(torch.int32), y_ref.view(torch.int32))
                                and torch.equal(y.view(torch.int32), y_ref.view(torch.int32)))
        row["spike_rate"] = float((y_ref != 0).float().mean())
        if sj is not None:
            node = (sj.DSRIFNode(T=T, **p) if kind == "if" else sj.DSRLIFNode(T=T, **p)).eval()
            with torch.no_grad():
                row["spikingjelly_s"] = median_time(lambda: node(x), args.slow_repeats)
        if ort_lib is not None:
            import onnxruntime as ort

            model = onnx_model(kind, T).SerializeToString()
            xn = x.numpy()
            custom_opts = ort.SessionOptions()
            custom_opts.register_custom_ops_library(str(ort_lib))
            custom = ort.InferenceSession(model, custom_opts, providers=["CPUExecutionProvider"])
            fallback = ort.InferenceSession(model, ort.SessionOptions(), providers=["CPUExecutionProvider"])
            yc = custom.run(None, {"x": xn})[0]
            yf = fallback.run(None, {"x": xn})[0]
            row["ort_bit_exact"] = bool(np.array_equal(yc.view(np.int32), y_ref.numpy().view(np.int32))
                                        and np.array_equal(yf.view(np.int32), y_ref.numpy().view(np.int32)))
            row["ort_custom_s"] = median_time(lambda: custom.run(None, {"x": xn}), args.repeats)
            row["ort_function_fallback_s"] = median_time(lambda: fallback.run(None, {"x": xn}), args.slow_repeats)
        results.append(row)
        print(json.dumps(row), flush=True)

    report = render(info, results, ort_lib is not None, sj is not None)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, report)
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(dict(machine=info, results=results), indent=2) + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")


def render(info, results, with_ort, with_sj):
    ms = lambda s: f"{s * 1e3:.1f}"  # noqa: E731
    lines = [f"# CPU spike-loop kernels ({info['date']})", "",
             f"Machine: {info['cpu']}, {info['logical_cpus']} logical CPUs (torch threads {info['torch_threads']}), "
             f"kernel ISA {info['kernel_isa']}; torch {info['torch']}, onnxruntime {info['onnxruntime']}; "
             f"THP_MEM_ALLOC_ENABLE={info['thp_mem_alloc']}; 1-min load average at start "
             f"{info['load_average_1min_at_start']} (the machine is shared: expect noise).", ""]
    for r in results:
        floor, clone = r["copy_prealloc_s"], r["clone_s"]
        lines += [f"## {r['kind'].upper()}, float32, shape {r['shape']} ({math.prod(r['shape']) / 1e6:.2f}M elements,"
                  f" {r['bytes'] / 1e6:.0f} MB moved), spike rate {r['spike_rate']:.3f}, "
                  f"bit-exact with the reference: {r['bit_exact']}", "",
                  "| implementation | ms | vs memcpy into a preallocated buffer "
                  "| vs memcpy into a fresh tensor (clone) |",
                  "|---|---|---|---|"]

        def add(label, s):
            lines.append(f"| {label} | {ms(s)} | {s / floor:.2f}x | {s / clone:.2f}x |")

        add("memcpy, preallocated (floor)", floor)
        add("memcpy into a fresh tensor (`x.clone()`)", clone)
        add("**native kernel, preallocated output** (libdsr_kernels)", r["kernel_prealloc_s"])
        add("**`torch.ops.dsr` native op** (allocates its output; dropped outputs' memory is reused)", r["torch_op_s"])
        if "torch_op_fresh_s" in r:
            add("`torch.ops.dsr` native op, output recycling off (fresh mapping each call)", r["torch_op_fresh_s"])
        if with_ort:
            add("ONNX Runtime + libdsr_ort_ops custom op", r["ort_custom_s"])
            add("ONNX Runtime, model-local function fallback (unrolled)", r["ort_function_fallback_s"])
        add("Python reference loop (eager)", r["reference_s"])
        if with_sj and "spikingjelly_s" in r:
            add("SpikingJelly 2.0 DSR node, eager", r["spikingjelly_s"])
        lines.append("")
        extra = []
        if with_sj and "spikingjelly_s" in r:
            extra.append(f"native op is {r['spikingjelly_s'] / r['torch_op_s']:.1f}x faster than SpikingJelly eager "
                         f"({r['spikingjelly_s'] / r['torch_op_fresh_s']:.1f}x with output recycling off)")
        extra.append(f"{r['reference_s'] / r['torch_op_s']:.1f}x faster than the Python reference")
        if with_ort:
            extra.append(f"ORT custom op is {r['ort_function_fallback_s'] / r['ort_custom_s']:.1f}x faster than the "
                         f"function fallback (outputs bit-exact: {r['ort_bit_exact']})")
        lines += ["- " + e for e in extra] + [""]
    if not with_ort:
        lines.append("ONNX Runtime rows absent: libdsr_ort_ops.so not built (needs ONNX Runtime headers).")
    lines.append("Targets: native <= 1.5x memcpy (goal 1.2x), >= 10x faster than SpikingJelly eager; "
                 "ORT custom op <= 2x memcpy.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
