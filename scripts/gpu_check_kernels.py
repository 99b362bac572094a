"""The checks of scripts/gpu_check.py (the stages are run and reported there): CUDA spike kernels vs the reference.

Checks (fresh random inputs, several shapes, T in 1, 4, 20, 50): float32 spikes and final membrane bit-exact with
the Python reference run eagerly on the GPU; float16 / bfloat16 at least 99.9% of spikes equal (reported; they are
expected to be exact too: the membrane is float32 in both). The quantised ops' kernels (uint8 / int8 codes,
libdsr_kernels.so) code for code against the CPU quantised op and their definition. The TorchScript and torch.export
(pt2) forms of the neurons on the device. Timings (CUDA events, median of repeats): the kernel vs a device-to-device
copy of the same bytes at small, mid (0.5-2 M) and large (21 M) N for every dtype, and at T=20, B=32, 128x16x16 vs
SpikingJelly's eager node (if importable) and the reference loop. TensorRT (when importable): float32, float16 and
int8 engines of the digits model vs PyTorch.

The kernels are reached through torch.ops.dsr (libdsr_torch_ops.so built with CUDA); if that library has no CUDA
kernel (no CMake, or the torch CMake package could not be configured), through libdsr_kernels.so and ctypes, which
runs the same launcher.
"""

from __future__ import annotations

import ctypes
import math
import os
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
    lib.dsr_cuda_launch_shape({**DTYPE_CODE, torch.uint8: 4, torch.int8: 5}[dtype], ctypes.c_int64(n), sms, out)
    return list(out)


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
    """Where TensorRT is importable: the digits model (zoo:digits-cnn, shipped weights) exported as float32, float16
    and int8 (the TensorRT form: --int8-activations int8, quantised neuron ops), each built into an engine (the plugin
    when libdsr_trt_plugin*.so is built, else the function bodies) and run by the TensorRT runner on "cuda" against
    PyTorch's output on the same held-out images. Returns (rows, note)."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as exc:
        return [], f"not checked: tensorrt not importable ({exc})"
    if DEVICE == "cpu":
        return [], "not checked: dry run (no GPU)"
    import tempfile

    from dsr_deploy import engine as E
    from dsr_deploy import models
    from dsr_deploy.encoding import direct_encode
    from dsr_deploy.export import export_model
    from dsr_deploy.models.digits import load_digits_split
    from dsr_deploy.runtime import load_runner

    net = models.build("digits-cnn").eval()
    T = int(models.input_shape("digits-cnn")[0])
    data = load_digits_split()
    x = direct_encode(data.x_test[:64], T).float()
    cal = direct_encode(data.x_train[:256], T).float().numpy()
    with torch.no_grad():
        ref = net(x)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("float32", "float16", "int8"):
            rows.append(_tensorrt_row(E, export_model, load_runner, net, x, ref, cal, T, Path(tmp) / precision,
                                      precision))
    return rows, "ran"


def _tensorrt_row(E, export_model, load_runner, net, x, ref, cal, T, d, precision):
    from dsr_deploy.export import Int8Options

    try:
        # int8: the TensorRT form (signed codes, the neurons on the codes)
        export_model(net, tuple(x.shape), d, formats=("onnx",), precision=precision, target="tensorrt",
                     **({"int8": Int8Options(calibration=cal)} if precision == "int8" else {}))
        summary = E.build_engine(d / "model.onnx", d / "model.plan", batch=E.Range(1, x.shape[1], x.shape[1]),
                                 timesteps=E.Range(1, T, T), allow_function_fallback=True,
                                 log=lambda m: print(m, flush=True))
        runner = load_runner(d / "model.plan", backend="tensorrt")  # default device: "cuda"
        dt = torch.float16 if precision == "float16" else torch.float32
        y = torch.from_numpy(runner.infer({runner.inputs()[0].name: x.to(dt).numpy()})[runner.outputs()[0].name])
        agree = float((y.float() == ref.float()).float().mean())
        return dict(precision=precision, tensorrt=summary["tensorrt"], device=runner.device,
                    contents=summary["contents"], plugin_loading=summary["plugin_loading"], agreement=agree,
                    bit_exact=bool(torch.equal(y.float(), ref.float())))
    except Exception as exc:  # one engine failing does not hide the others
        return dict(precision=precision, error=f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}")


def torch_op_rows(gen):
    """The torch CUDA op (torch.ops.dsr on the device, libdsr_torch_ops.so) vs the reference: IF/LIF in every float
    dtype, an odd N. Returns (rows, note)."""
    if not ops.has_native_kernel(DEVICE):
        return [], f"not checked: no torch.ops.dsr kernel for {DEVICE} ({ops.native_status()['reason']})"
    rows = []
    for kind in ("if", "lif"):
        params = IF_PARAMS if kind == "if" else LIF_PARAMS
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            x = (torch.randn((20, 3, 1001), generator=gen, device=DEVICE) * 4.0).to(dtype)
            fn = ops.if_spike if kind == "if" else ops.lif_spike
            y, v = fn(x, *params, return_state=True, native=True)
            ry, rv = reference(kind, x, params, return_state=True)
            rows.append(dict(kind=kind, dtype=str(dtype).split(".")[-1], bit_exact=bool(
                torch.equal(bits(y), bits(ry)) and torch.equal(bits(v), bits(rv)))))
    return rows, "ran"


def pt2_rows(gen, aot=False):
    """torch.export (the pt2 path) of each neuron module on the device: the exported program's module, and with
    ``aot`` its AOTInductor package (inductor's generated kernels: the contraction risk), vs the reference."""
    rows = []
    for kind in ("if", "lif"):
        params = IF_PARAMS if kind == "if" else LIF_PARAMS
        module = _script_neuron(kind, params).to(DEVICE).eval()
        x = torch.randn((20, 32, 4096), generator=gen, device=DEVICE) * (4.0 if kind == "if" else 1.0)
        ry, _ = reference(kind, x, params)
        with torch.no_grad():
            ep = torch.export.export(module, (x,))
            y = ep.module()(x)
        rows.append(dict(kind=kind, form="torch.export module", bit_exact=bool(torch.equal(bits(y), bits(ry)))))
        if aot:
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                pkg = torch._inductor.aoti_compile_and_package(ep, package_path=str(Path(tmp) / "n.pt2"))
                y = torch._inductor.aoti_load_package(pkg)(x)
            rows.append(dict(kind=kind, form="AOTInductor package", bit_exact=bool(torch.equal(bits(y), bits(ry)))))
    return rows


SIZES = (("small", 20, 4096), ("small", 20, 32768), ("mid", 20, 524288), ("mid", 20, 1048576), ("mid", 20, 2097152),
         ("large", 4, 20971520))  # (class, T, N neurons per step); large: 21 M neurons
QUICK_SIZES = (("small", 3, 4096), ("mid", 2, 524288))


def quantized_launcher():
    """(lib, launch(codes, T, N, kind)) for the quantised CUDA entry of libdsr_kernels.so, or (None, reason)."""
    path = ops.find_library(plugins.KERNELS_LIBRARY)
    if path is None:
        return None, "libdsr_kernels.so not built"
    lib = ctypes.CDLL(str(path))
    if not hasattr(lib, "dsr_cuda_forward_quantized"):
        return None, f"{path.name} has no dsr_cuda_forward_quantized (built without CUDA?)"
    head = [ctypes.c_int] + [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 2 + [ctypes.c_int] + [ctypes.c_double] * 4
    lib.dsr_cuda_forward_quantized.argtypes = head + [ctypes.c_void_p]

    # scale and zero points made once: a host-to-device copy per call would be timed with the kernel
    scale = torch.tensor([0.03], dtype=torch.float32, device=DEVICE)
    zeros = {dt: torch.zeros(1, dtype=dt, device=DEVICE) for dt in (torch.uint8, torch.int8)}
    stream = torch.cuda.current_stream().cuda_stream

    def launch(x, y, T, N):
        code = 0 if x.dtype == torch.uint8 else 1
        lib.dsr_cuda_forward_quantized(code, x.data_ptr(), y.data_ptr(), scale.data_ptr(), zeros[x.dtype].data_ptr(),
                                       T, N, 0, 1.0, 0.5, 1.0, 1.0, stream)
    return launch, ""


def size_rows(run, gen, repeats, sizes=SIZES):
    """IF kernel time vs a device-to-device copy of the same bytes at each (T, N) for float32 / float16 / bfloat16
    and the quantised op's uint8 / int8 codes (CUDA only), with the launch shape the launcher picks."""
    qlaunch, qnote = quantized_launcher() if DEVICE != "cpu" else (None, "dry run")
    out = []
    for cls, T, n in sizes:
        for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.uint8, torch.int8):
            quant = dtype in (torch.uint8, torch.int8)
            if quant and qlaunch is None:
                out.append(dict(size=cls, T=T, N=n, dtype=str(dtype).split(".")[-1], note=f"not checked: {qnote}"))
                continue
            if quant:
                x = torch.randint(-100, 100, (T, n), generator=gen, device=DEVICE, dtype=torch.int32).to(dtype)
                y = torch.empty_like(x)
                fn = lambda: qlaunch(x, y, T, n)  # noqa: E731
            else:
                x = (torch.randn((T, n), generator=gen, device=DEVICE) * 4.0).to(dtype)
                fn = lambda: run("if", x, IF_PARAMS)  # noqa: E731
            dst = torch.empty_like(x)
            with torch.no_grad():
                t_kernel = time_cuda(fn, repeats)
                t_copy = time_cuda(lambda: dst.copy_(x), repeats)
            out.append(dict(size=cls, T=T, N=n, dtype=str(dtype).split(".")[-1], kernel_us=t_kernel * 1e6,
                            copy_us=t_copy * 1e6, kernel_over_copy=t_kernel / t_copy,
                            launch=launch_shape(dtype, n)))
    return out
