"""The GPU half of scripts/gpu_check.sh: CUDA spike kernels vs PyTorch CUDA eager, then timings.

Checks (fresh random inputs, several shapes, T in 1, 4, 20, 50): float32 spikes and final membrane bit-exact with
the Python reference run eagerly on the GPU; float16 / bfloat16 at least 99.9% of spikes equal (reported; they are
expected to be exact too: the membrane is float32 in both). Timings (CUDA events, median of repeats) at
T=20, B=32, 128x16x16: the kernel vs a device-to-device copy of the same bytes (read x, write y), vs SpikingJelly's
eager node (if importable) and the reference loop. The quantised ops' kernels (int8 exports, through
libdsr_kernels.so) code for code against the CPU quantised op and their definition.

The kernels are reached through torch.ops.dsr (libdsr_torch_ops.so built with CUDA); if that library has no CUDA
kernel (for example the torch CMake package could not be configured), through libdsr_kernels.so and ctypes,
which runs the same launcher. The table says which.
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
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dsr_deploy import ops, plugins  # noqa: E402  (needs ROOT on sys.path, inserted just above)

DTYPE_CODE = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
DEVICE = "cuda"  # --dry-run-cpu switches to "cpu" to exercise this script's logic without a GPU
TIMING_SHAPE = (20, 32, 128, 16, 16)
IF_PARAMS = (6.0, 0.5)  # authors' IF: vth 6, alpha 0.5
LIF_PARAMS = (0.3, 0.3, 1.0, 0.05)  # authors' CIFAR LIF: vth 0.3, alpha 0.3, tau 1, dt 0.05


class CtypesKernels:
    """libdsr_kernels.so through ctypes (the same launcher and constants as the torch op)."""

    def __init__(self, path: Path):
        self.lib = ctypes.CDLL(str(path))
        if not hasattr(self.lib, "dsr_cuda_forward"):
            raise SystemExit(f"{path} was built without CUDA (no dsr_cuda_forward)")
        f = self.lib.dsr_cuda_forward
        f.restype = ctypes.c_int
        f.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                      ctypes.c_int64, ctypes.c_int64, ctypes.c_int, ctypes.c_double, ctypes.c_double,
                      ctypes.c_double, ctypes.c_double, ctypes.c_void_p]
        self.lib.dsr_cuda_error_string.restype = ctypes.c_char_p

    def __call__(self, kind, x, params, v_init=None, return_state=False):
        x = x.contiguous()
        y = torch.empty_like(x)
        ct = torch.float64 if x.dtype == torch.float64 else torch.float32
        vi = None if v_init is None else v_init.to(x.device, ct).contiguous()
        vo = torch.empty(x.shape[1:], dtype=ct, device=x.device) if return_state else None
        if kind == "if":
            vth, alpha = params
            tau, dt, neuron = 1.0, 1.0, 0
        else:
            vth, alpha, tau, dt = params
            neuron = 1
        n = x[0].numel() if x.shape[0] else math.prod(x.shape[1:])
        err = self.lib.dsr_cuda_forward(
            DTYPE_CODE[x.dtype], x.data_ptr(), y.data_ptr(), vi.data_ptr() if vi is not None else None,
            vo.data_ptr() if vo is not None else None, x.shape[0], n, neuron, vth, alpha, tau, dt,
            torch.cuda.current_stream().cuda_stream)
        if err:
            raise RuntimeError(self.lib.dsr_cuda_error_string(err).decode())
        return y, (vo if vo is not None else torch.empty(0, dtype=ct, device=x.device))


def pick_kernels():
    if ops.has_native_kernel(DEVICE):
        def run(kind, x, params, v_init=None, return_state=False):
            fn = ops.if_spike if kind == "if" else ops.lif_spike
            return fn(x, *params, v_init=v_init, return_state=return_state, native=True)
        return run, f"torch.ops.dsr (libdsr_torch_ops.so {DEVICE.upper()} kernels)"
    path = ops.find_library(plugins.KERNELS_LIBRARY)
    if path is None:
        raise SystemExit("no CUDA kernels: neither libdsr_torch_ops.so with CUDA nor libdsr_kernels.so was built")
    return CtypesKernels(path), (f"ctypes {path.name} "
                                 f"(torch adapter without CUDA kernel: {ops.native_status()['reason']})")


def reference(kind, x, params, v_init=None, return_state=False):
    fn = ops.if_spike if kind == "if" else ops.lif_spike
    return fn(x, *params, v_init=v_init, return_state=return_state, native=False)


def bits(t):
    return t.contiguous().view({torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16,
                                torch.bfloat16: torch.int16}[t.dtype])


CHECK_SHAPES = [(1, 1000), (8, 4096), (3, 7, 33), (32, 128, 16, 16)]
CHECK_T = (1, 4, 20, 50)


def check(run, gen):
    rows, failures = [], []
    shapes = CHECK_SHAPES
    for kind in ("if", "lif"):
        params = IF_PARAMS if kind == "if" else LIF_PARAMS
        scale = 4.0 if kind == "if" else 1.0
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            for T in CHECK_T:
                for step in shapes:
                    if T == 50 and math.prod(step) > 200_000 and dtype != torch.float32:
                        continue  # keep the run short; float32 covers the big shape at T=50
                    x = (torch.randn((T, *step), generator=gen, device=DEVICE) * scale).to(dtype)
                    v0 = torch.randn(step, generator=gen, device=DEVICE) * params[0]
                    y, v = run(kind, x, params, v_init=v0, return_state=True)
                    ry, rv = reference(kind, x, params, v_init=v0, return_state=True)
                    spikes_equal = float(((y != 0) == (ry != 0)).float().mean())
                    exact = bool(torch.equal(bits(y), bits(ry)) and torch.equal(bits(v), bits(rv)))
                    # The reference is device-independent (functional.py): the GPU result equals the CPU one.
                    same_as_cpu = None
                    if dtype == torch.float32:
                        cy, cv = reference(kind, x.cpu(), params, v_init=v0.cpu(), return_state=True)
                        same_as_cpu = bool(torch.equal(bits(y.cpu()), bits(cy))
                                           and torch.equal(bits(v.cpu()), bits(cv)))
                    ok = (exact and same_as_cpu) if dtype == torch.float32 else spikes_equal >= 0.999
                    rows.append(dict(kind=kind, dtype=str(dtype).split(".")[-1], T=T, shape=list(step),
                                     bit_exact=exact, same_as_cpu=same_as_cpu, spikes_equal=spikes_equal, ok=ok,
                                     spike_rate=float((ry != 0).float().mean())))
                    if not ok:
                        failures.append(rows[-1])
        # Odd layouts once per neuron: a non-contiguous input and an unaligned base (scalar kernel path).
        x = (torch.randn(20, 64, 130, generator=gen, device=DEVICE) * scale)
        for name, xv in (("non-contiguous", x.transpose(1, 2)),
                         ("unaligned", x.flatten()[1:].view(-1)[: 20 * 999].view(20, 999))):
            y, _ = run(kind, xv, params)
            ry, _ = reference(kind, xv, params)
            exact = bool(torch.equal(bits(y), bits(ry)))
            rows.append(dict(kind=kind, dtype="float32", T=20, shape=name, bit_exact=exact, spikes_equal=None,
                             ok=exact, spike_rate=float((ry != 0).float().mean())))
            if not exact:
                failures.append(rows[-1])
    return rows, failures


def torchscript_rows(gen):
    """The TorchScript export's neuron (functional.py scripted) on the device, vs the eager reference.

    TorchScript's GPU fuser (NNC) compiles fused kernels with NVRTC's default --fmad=true, so the LIF update may
    become an FMA; the torchscript runner turns GPU fusion off on CUDA. Both settings are measured: each scripted
    module is called 4 times (the profiling executor optimises, and fuses, from the third call on) and every call's
    output is compared with the reference.
    """
    rows = []
    if DEVICE == "cpu":
        settings = [("default (CPU fuser off)", None)]
    else:
        settings = [("GPU fusion on (TorchScript default)", True), ("GPU fusion off (dsr-deploy runner)", False)]
    previous = torch._C._jit_can_fuse_on_gpu()
    try:
        for label, fuse in settings:
            if fuse is not None:
                torch._C._jit_override_can_fuse_on_gpu(fuse)
            for kind in ("if", "lif"):
                params = IF_PARAMS if kind == "if" else LIF_PARAMS
                module = torch.jit.script(_script_neuron(kind, params)).to(DEVICE).eval()
                exact = True
                for _ in range(4):
                    x = torch.randn((20, 32, 4096), generator=gen, device=DEVICE) * (4.0 if kind == "if" else 1.0)
                    with torch.no_grad():
                        y = module(x)
                    ry, _ = reference(kind, x, params)
                    exact = exact and bool(torch.equal(bits(y), bits(ry)))
                rows.append(dict(kind=kind, setting=label, bit_exact=exact))
    finally:
        if DEVICE != "cpu":
            torch._C._jit_override_can_fuse_on_gpu(previous)
    return rows


def _script_neuron(kind, params):
    from dsr_deploy import DSRIFNode, DSRLIFNode
    from dsr_deploy.convert import IFSpikeScript, LIFSpikeScript, find_neurons

    # the NeuronInfo the exporter reads from a training neuron with these parameters (bound below the threshold)
    if kind == "if":
        node = DSRIFNode(T=None, v_threshold=params[0], alpha=params[1], v_threshold_lower_bound=1e-6)
    else:
        node = DSRLIFNode(T=None, v_threshold=params[0], alpha=params[1], tau=params[2], delta_t=params[3],
                          v_threshold_lower_bound=1e-6)
    info = find_neurons(node)[0]
    return IFSpikeScript(info) if kind == "if" else LIFSpikeScript(info)


def time_cuda(fn, repeats, calls=10):
    """Median seconds per call. Each measurement queues `calls` back-to-back calls between two CUDA events, so the
    host's per-call overhead (Python, dispatcher: tens of microseconds, close to one kernel's run time on a fast
    GPU) overlaps the GPU work instead of being counted as idle GPU time."""
    if DEVICE == "cpu":
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            times.append((time.perf_counter() - t0) / calls)
        return statistics.median(times)
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / calls)
    return statistics.median(times)


def load_spikingjelly():
    try:
        from spikingjelly.activation_based import neuron  # noqa: F401

        return neuron, "installed"
    except ImportError:
        pass
    wheel_dirs = [Path(p) for p in os.environ.get("DSR_WHEELS", "").split(os.pathsep) if p]
    wheel_dirs += [ROOT / "build" / "wheels", ROOT / "wheels"]
    wheels = [w for d in wheel_dirs if d.is_dir() for w in sorted(d.glob("*.whl"))]
    if not any(w.name.startswith("spikingjelly-") for w in wheels):
        return None, ("spikingjelly not installed and no wheel found (pip download --no-deps spikingjelly==2.0.0 "
                      "loguru -d build/wheels, then carry build/wheels)")
    for w in wheels:  # pure-python wheels import straight from the zip
        sys.path.append(str(w))
    try:
        from spikingjelly.activation_based import neuron

        return neuron, "from wheel " + ", ".join(w.name for w in wheels)
    except ImportError as exc:
        return None, f"spikingjelly wheel found but import failed: {exc}"


def timings(run, gen, repeats):
    sj, sj_note = load_spikingjelly()
    shape = TIMING_SHAPE
    out = []
    for kind in ("if", "lif"):
        params = IF_PARAMS if kind == "if" else LIF_PARAMS
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            x = (torch.randn(shape, generator=gen, device=DEVICE) * (4.0 if kind == "if" else 1.0)).to(dtype)
            dst = torch.empty_like(x)
            nbytes = 2 * x.numel() * x.element_size()
            with torch.no_grad():
                t_copy = time_cuda(lambda: dst.copy_(x), repeats)
                t_kernel = time_cuda(lambda: run(kind, x, params), repeats)
                t_ref = time_cuda(lambda: reference(kind, x, params), max(3, repeats // 4), calls=1)
                t_sj = None
                if sj is not None and dtype == torch.float32:
                    node = (sj.DSRIFNode(T=shape[0], v_threshold=params[0], alpha=params[1]) if kind == "if" else
                            sj.DSRLIFNode(T=shape[0], v_threshold=params[0], alpha=params[1], tau=params[2],
                                          delta_t=params[3])).to(DEVICE).eval()
                    t_sj = time_cuda(lambda: node(x), max(3, repeats // 4), calls=1)
            out.append(dict(kind=kind, dtype=str(dtype).split(".")[-1], shape=list(shape), bytes=nbytes,
                            kernel_s=t_kernel, copy_s=t_copy, reference_s=t_ref, spikingjelly_s=t_sj,
                            kernel_GBps=nbytes / t_kernel / 1e9, copy_GBps=nbytes / t_copy / 1e9,
                            fraction_of_copy_bandwidth=t_copy / t_kernel))
    return out, sj_note


SMALL_N = (4096, 32768, 262144)  # neurons of one layer at batch 1: where one thread per 16-byte vector underfills


def launch_shape(dtype, n):
    """(neurons per thread, block, grid) the launcher picks on this device, or None without libdsr_kernels.so."""
    path = ops.find_library(plugins.KERNELS_LIBRARY)
    if path is None or DEVICE == "cpu":
        return None
    lib = ctypes.CDLL(str(path))
    if not hasattr(lib, "dsr_cuda_launch_shape"):
        return None
    out = (ctypes.c_int64 * 3)()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    lib.dsr_cuda_launch_shape(DTYPE_CODE[dtype], ctypes.c_int64(n), sms, out)
    return list(out)


def small_n_rows(run, gen, repeats, T=20):
    """Latency of one call at small N (T=20, float32 and float16), with the launch shape, against a copy."""
    out = []
    for n in SMALL_N:
        for dtype in (torch.float32, torch.float16):
            x = (torch.randn((T, n), generator=gen, device=DEVICE) * 4.0).to(dtype)
            dst = torch.empty_like(x)
            with torch.no_grad():
                exact = bool(torch.equal(bits(run("if", x, IF_PARAMS)[0]), bits(reference("if", x, IF_PARAMS)[0])))
                t_kernel = time_cuda(lambda: run("if", x, IF_PARAMS), repeats)
                t_copy = time_cuda(lambda: dst.copy_(x), repeats)
            out.append(dict(N=n, T=T, dtype=str(dtype).split(".")[-1], kernel_us=t_kernel * 1e6,
                            copy_us=t_copy * 1e6, launch=launch_shape(dtype, n), bit_exact=exact))
    return out


def quantized_rows(gen):
    """The quantised ops' CUDA kernels (libdsr_kernels.so: dsr_cuda_forward_quantized) on this GPU vs the CPU
    quantised op (dsr_cpu_forward_quantized) and the definition (float32(q - zp) * scale, the reference neuron,
    y != 0): uint8 and int8 codes, zero points 0 and not, odd N, an unaligned base. Returns (rows, note)."""
    path = ops.find_library(plugins.KERNELS_LIBRARY)
    if DEVICE == "cpu":
        return [], "not on the CPU dry run (the CUDA entry takes device pointers)"
    if path is None:
        return [], "libdsr_kernels.so not built"
    lib = ctypes.CDLL(str(path))
    if not hasattr(lib, "dsr_cuda_forward_quantized"):
        return [], f"{path.name} has no dsr_cuda_forward_quantized (built without CUDA?)"
    head = [ctypes.c_int] + [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 2 + [ctypes.c_int] + [ctypes.c_double] * 4
    lib.dsr_cuda_forward_quantized.argtypes = head + [ctypes.c_void_p]
    lib.dsr_cpu_forward_quantized.argtypes = head
    lib.dsr_cuda_error_string.restype = ctypes.c_char_p
    rows = []
    for dtype, code, zps in ((torch.uint8, 0, (0, 131)), (torch.int8, 1, (0, -7))):
        lo, hi = (0, 256) if dtype == torch.uint8 else (-128, 128)
        for kind, params, scale in (("if", (1.0, 0.5, 1.0, 1.0), 0.03), ("lif", (1.3, 0.3, 2.0, 0.05), 0.2)):
            for T, N, offset in ((20, 4096 * 16, 0), (7, 100003, 1), (1, 17, 0)):
                codes = torch.randint(lo, hi, (T * N + offset,), generator=torch.Generator().manual_seed(T + N),
                                      dtype=torch.int32).to(dtype)
                for zp in zps:
                    x_gpu = codes.to(DEVICE)
                    y_gpu = torch.empty_like(x_gpu)
                    s_gpu = torch.tensor([scale], dtype=torch.float32, device=DEVICE)
                    z_gpu = torch.tensor([zp], dtype=dtype, device=DEVICE)
                    args = (T, N, 0 if kind == "if" else 1, *params)
                    err = lib.dsr_cuda_forward_quantized(
                        code, x_gpu.data_ptr() + offset, y_gpu.data_ptr() + offset, s_gpu.data_ptr(),
                        z_gpu.data_ptr(), *args, torch.cuda.current_stream().cuda_stream)
                    torch.cuda.synchronize()
                    if err:
                        raise RuntimeError(lib.dsr_cuda_error_string(err).decode())
                    y_cpu = torch.empty_like(codes)
                    s_cpu, z_cpu = torch.tensor([scale], dtype=torch.float32), torch.tensor([zp], dtype=dtype)
                    lib.dsr_cpu_forward_quantized(code, codes.data_ptr() + offset, y_cpu.data_ptr() + offset,
                                                  s_cpu.data_ptr(), z_cpu.data_ptr(), *args)
                    q = codes[offset:].view(T, N)
                    current = (q.to(torch.int32) - zp).to(torch.float32) * torch.tensor(scale, dtype=torch.float32)
                    ref = reference(kind, current, params[:2] if kind == "if" else params)[0]
                    want = (ref != 0).to(dtype)
                    got = y_gpu[offset:].cpu().view(T, N)
                    rows.append(dict(codes=str(dtype).split(".")[-1], kind=kind, T=T, N=N, zero_point=zp,
                                     offset=offset, equal_cpu_op=bool(torch.equal(got, y_cpu[offset:].view(T, N))),
                                     equal_definition=bool(torch.equal(got, want)),
                                     firing=float(want.float().mean())))
    return rows, ""


def tensorrt_rows(gen):
    """First contact with TensorRT when it is installed: a neuron-only ONNX export built into an engine (the plugin
    when libdsr_trt_plugin*.so is built, else the function bodies), run by the TensorRT runner with its default
    device "cuda", compared with the reference; what the engine holds is read from the built network."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return [], "tensorrt not installed (pip install 'dsr-deploy[tensorrt]')"
    if DEVICE == "cpu":
        return [], "dry run"
    import tempfile

    from dsr_deploy import engine as E
    from dsr_deploy.export import export_model
    from dsr_deploy.neuron import DSRIFNode, DSRLIFNode
    from dsr_deploy.runtime import load_runner

    rows = []
    net = torch.nn.Sequential(DSRIFNode(T=None, v_threshold=IF_PARAMS[0] / 4, alpha=IF_PARAMS[1]),
                              DSRLIFNode(T=None, v_threshold=LIF_PARAMS[0], alpha=LIF_PARAMS[1], tau=LIF_PARAMS[2],
                                         delta_t=LIF_PARAMS[3])).eval()
    shape = (20, 4, 64)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 2
    with torch.no_grad():
        ref = net(x)
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("float32", "float16"):
            d = Path(tmp) / precision
            try:
                export_model(net, shape, d, formats=("onnx",), precision=precision)
                summary = E.build_engine(d / "model.onnx", d / "model.plan", batch=E.Range(1, 4, 8),
                                         timesteps=E.Range(1, 20, 20), allow_function_fallback=True,
                                         log=lambda m: print(m, flush=True))
                runner = load_runner(d / "model.plan", backend="tensorrt")  # default device: "cuda"
                xin = x.to(getattr(torch, precision)).numpy()
                y = torch.from_numpy(runner.infer({runner.inputs()[0].name: xin})[runner.outputs()[0].name])
                want = ref if precision == "float32" else net(x.to(torch.float16).float()).to(torch.float16)
                agree = float((y.float() == want.float()).float().mean())
                rows.append(dict(precision=precision, tensorrt=summary["tensorrt"], device=runner.device,
                                 contents=summary["contents"], plugin_loading=summary["plugin_loading"],
                                 agreement=agree, bit_exact=bool(torch.equal(y.float(), want.float()))))
            except Exception as exc:  # report and go on: one command, degrading gracefully
                rows.append(dict(precision=precision, error=f"{type(exc).__name__}: {str(exc).splitlines()[0]}"))
    return rows, "ran"


def render(meta, rows, failures, times, sj_note, ts_rows=(), small=(), trt=((), ""), quant=((), "")):
    lines = [f"# GPU check: DSR spike kernels ({meta['date']})", ""]
    lines.append(f"GPU: **{meta['gpu']}** (CUDA {meta['cuda']}, driver capability {meta['capability']}); torch "
                 f"{meta['torch']}; kernels via {meta['kernels']}.")
    lines.append("")
    n_ok = sum(r["ok"] for r in rows)
    lines.append("## Correctness vs PyTorch CUDA eager (the Python reference on the GPU): "
                 f"{n_ok}/{len(rows)} cases pass")
    lines.append("")
    for dtype in ("float32", "float16", "bfloat16"):
        sel = [r for r in rows if r["dtype"] == dtype]
        exact = sum(r["bit_exact"] for r in sel)
        worst = min((r["spikes_equal"] for r in sel if r["spikes_equal"] is not None), default=None)
        lines.append(f"- {dtype}: {exact}/{len(sel)} bit-exact (spikes and final membrane)"
                     + (f", worst spike agreement {worst:.6f}" if worst is not None else ""))
    same = [r for r in rows if r.get("same_as_cpu") is not None and r["dtype"] == "float32"]
    if same:
        lines.append(f"- float32 equal to the reference run on the CPU (device independence): "
                     f"{sum(r['same_as_cpu'] for r in same)}/{len(same)}")
    for f in failures:
        lines.append(f"- FAIL: {f}")
    if ts_rows:
        lines += ["", "## TorchScript export's neurons on this device vs the eager reference (4 calls each)", "",
                  "| neuron | setting | bit-exact |", "|---|---|---|"]
        lines += [f"| {r['kind'].upper()} | {r['setting']} | {'yes' if r['bit_exact'] else '**no**'} |"
                  for r in ts_rows]
    shape = times[0]["shape"] if times else []
    lines += ["", f"## Timing, shape {shape} ({math.prod(shape) / 1e6:.2f}M elements), median of CUDA-event timings "
              "(10 back-to-back calls per measurement for the kernel and the copy)", ""]
    lines.append("| neuron | dtype | kernel ms | d2d copy ms | kernel GB/s | copy GB/s | % of copy bandwidth | "
                 "reference eager ms | SpikingJelly eager ms | SJ / kernel |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for t in times:
        sj = f"{t['spikingjelly_s'] * 1e3:.3f}" if t["spikingjelly_s"] else "n/a"
        sjr = f"{t['spikingjelly_s'] / t['kernel_s']:.1f}x" if t["spikingjelly_s"] else "n/a"
        lines.append(f"| {t['kind'].upper()} | {t['dtype']} | {t['kernel_s'] * 1e3:.3f} | {t['copy_s'] * 1e3:.3f} | "
                     f"{t['kernel_GBps']:.0f} | {t['copy_GBps']:.0f} | {100 * t['fraction_of_copy_bandwidth']:.1f}% | "
                     f"{t['reference_s'] * 1e3:.3f} | {sj} | {sjr} |")
    lines += ["", f"SpikingJelly: {sj_note}. Bytes per call = input read + output write (the copy moves the same).",
              "Target: >= 80% of the copy bandwidth (goal 85%) in float32 and float16.", ""]
    if small:
        lines += ["## Small layers (batch-1 latency), T=20, IF", "",
                  "| N | dtype | kernel us | d2d copy us | launch (neurons/thread, block, grid) | bit-exact |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['N']} | {r['dtype']} | {r['kernel_us']:.1f} | {r['copy_us']:.1f} | {r['launch']} | "
                  f"{'yes' if r['bit_exact'] else '**no**'} |" for r in small]
        lines.append("")
    q_rows, q_note = quant
    lines += ["## Quantised ops (int8 exports): CUDA kernel vs the CPU quantised op and the definition", ""]
    if not q_rows:
        lines.append(f"skipped: {q_note}")
    else:
        ok = sum(r["equal_cpu_op"] and r["equal_definition"] for r in q_rows)
        lines.append(f"{ok}/{len(q_rows)} cases equal code for code (uint8 / int8 codes, zero points, odd N, an "
                     "unaligned base)")
        lines += [f"- FAIL: {r}" for r in q_rows if not (r["equal_cpu_op"] and r["equal_definition"])]
    lines.append("")
    trt_rows, trt_note = trt
    lines += ["## TensorRT (build-engine, the TensorRT runner with device \"cuda\")", ""]
    if not trt_rows:
        lines.append(f"skipped: {trt_note}")
    for r in trt_rows:
        lines.append(f"- {r}")
    lines.append("")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="markdown report (a .json lands beside it)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--seed", type=int, default=None, help="default: fresh from the clock")
    ap.add_argument("--dry-run-cpu", action="store_true",
                    help="run the whole script on the CPU kernels (checks the script itself; no GPU numbers)")
    ap.add_argument("--shape", type=int, nargs="+", default=[20, 32, 128, 16, 16], help="timing shape [T, ...]")
    ap.add_argument("--quick", action="store_true",
                    help="two small shapes, T in 1 and 4 (with --dry-run-cpu: a smoke test)")
    args = ap.parse_args()
    global DEVICE, TIMING_SHAPE, CHECK_SHAPES, CHECK_T
    TIMING_SHAPE = tuple(args.shape)
    if args.quick:
        CHECK_SHAPES, CHECK_T = [(1, 1000), (3, 7, 33)], (1, 4)
    if args.dry_run_cpu:
        DEVICE = "cpu"
    elif not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible to torch")
    seed = args.seed if args.seed is not None else int(time.time())
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    run, how = pick_kernels()
    if DEVICE == "cpu":
        name, capability = "CPU DRY RUN (not a GPU result)", "-"
    else:
        props = torch.cuda.get_device_properties(0)
        name, capability = props.name, f"{props.major}.{props.minor}"
    meta = dict(date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                gpu=name, capability=capability, cuda=torch.version.cuda,
                torch=torch.__version__, kernels=how, seed=seed, host=platform.node())
    t0 = time.time()
    rows, failures = check(run, gen)
    print(f"correctness: {sum(r['ok'] for r in rows)}/{len(rows)} cases pass ({time.time() - t0:.1f} s)", flush=True)
    ts_rows = torchscript_rows(gen)
    print(f"torchscript: {ts_rows}", flush=True)
    times, sj_note = timings(run, gen, args.repeats)
    small = small_n_rows(run, gen, args.repeats)
    print(f"small N: {small}", flush=True)
    try:
        quant = quantized_rows(gen)
    except Exception as exc:  # reported, and counted as a failure below
        quant = ([], f"failed: {type(exc).__name__}: {exc}")
    print(f"quantised ops: {sum(r['equal_cpu_op'] and r['equal_definition'] for r in quant[0])}/{len(quant[0])} "
          f"equal {quant[1]}", flush=True)
    try:
        trt = tensorrt_rows(gen)
    except Exception as exc:  # never lose the kernel results to the optional TensorRT step
        trt = ([], f"failed: {type(exc).__name__}: {exc}")
    report = render(meta, rows, failures, times, sj_note, ts_rows, small, trt, quant)
    failures = list(failures) + [f"quantised op {r}" for r in quant[0]
                                 if not (r["equal_cpu_op"] and r["equal_definition"])]
    if quant[1].startswith("failed"):
        failures.append(f"quantised ops {quant[1]}")
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from dsr_deploy.io import atomic_write_text

    atomic_write_text(args.out, report)
    atomic_write_text(args.out.with_suffix(".json"),
                      json.dumps(dict(meta=meta, correctness=rows, torchscript=ts_rows, timings=times,
                                      spikingjelly=sj_note, small_n=small, tensorrt=trt[0],
                                      tensorrt_note=trt[1], quantized=quant[0], quantized_note=quant[1]),
                                 indent=2))
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
