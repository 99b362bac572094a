"""The CUDA kernel source, compiled as host C++ and run on the CPU: bit-exact with the reference.

No GPU runs on the development and CI machines. ``plugins/core/dsr_spike_cuda.cu`` is compiled here with g++
against a shim (``tests/cuda_emulation/cuda_host_emulation.h``) that runs a launch's grid as loops and the _rn
intrinsics as plain IEEE operations, then driven through the real C entry ``dsr_cuda_forward``. That checks the
kernel's own logic on every path, for all four dtypes, against the Python reference:

* thread and vector indexing, the 16-byte vector path and the scalar fallback, and the launcher's choice between
  them (a misaligned vector access, or a load or store outside the buffers, is reported as the GPU would fault);
* the T loop, the initial and final membrane, the 16-bit widening and the output bits.

The ONNX Runtime CUDA EP kernels (no SDK needed) and, with the TensorRT headers (DEVELOPERS.md), the TensorRT plugins'
``enqueue`` run over the same emulated core. What this cannot check is the GPU's arithmetic;
tests/test_cuda_codegen.py reads that from the generated PTX/SASS.
"""

from __future__ import annotations

import ctypes
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from _native_util import assert_bit_equal, dsr_node_model, f32, repo_root

from dsr_deploy import ops, plugins

CXX = shutil.which("g++") or shutil.which("c++")
pytestmark = pytest.mark.skipif(CXX is None, reason="no C++ compiler")

CORE = repo_root() / "plugins" / "core"
SHIM = repo_root() / "tests" / "cuda_emulation" / "cuda_host_emulation.h"
DTYPES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
VEC = {torch.float32: 4, torch.float64: 2, torch.float16: 8, torch.bfloat16: 8}
IF_PARAMS = (1.0, 0.5, 1.0, 1.0)
LIF_PARAMS = (1.3, 0.3, 2.0, 0.05)  # vth/dt where the float32 division and the reciprocal product differ


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    d = tmp_path_factory.mktemp("cuda_emu")
    flags = ["-std=c++17", "-O2", "-ffp-contract=off", "-fno-trapping-math", "-fPIC", "-DDSR_WITH_CUDA=1",
             f"-I{CORE}"]
    obj = d / "dsr_spike_cuda_emu.o"
    steps = [
        [CXX, *flags, "-DDSR_CUDA_HOST_EMULATION", "-include", str(SHIM), "-x", "c++", "-c",
         str(CORE / "dsr_spike_cuda.cu"), "-o", str(obj)],
        [CXX, *flags, "-shared", str(CORE / "dsr_spike_capi.cpp"), str(CORE / "dsr_spike_cpu.cpp"),
         str(CORE / "dsr_spike_conv_cpu.cpp"),
         str(CORE / "dsr_spike_cpu_baseline.cpp"), str(obj), "-o", str(d / "libdsr_cuda_emu.so"), "-pthread"],
    ]
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    lib = ctypes.CDLL(str(d / "libdsr_cuda_emu.so"))
    lib.emulated_object = obj  # the TensorRT check links the same object
    lib.dsr_cuda_forward.restype = ctypes.c_int
    lib.dsr_cuda_forward.argtypes = ([ctypes.c_int] + [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 2 + [ctypes.c_int]
                                     + [ctypes.c_double] * 4 + [ctypes.c_void_p])
    lib.dsr_cuda_error_string.restype = ctypes.c_char_p
    lib.dsr_emu_vector_accesses.restype = ctypes.c_long
    lib.dsr_emu_scalar_accesses.restype = ctypes.c_long
    lib.dsr_emu_set_regions.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
    lib.dsr_emu_set_device.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.dsr_emu_last_grid.restype = ctypes.c_long
    lib.dsr_cuda_launch_shape.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int, ctypes.c_void_p]
    quantized = ([ctypes.c_int] + [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 2 + [ctypes.c_int]
                 + [ctypes.c_double] * 4)
    lib.dsr_cuda_forward_quantized.argtypes = quantized + [ctypes.c_void_p]
    lib.dsr_cpu_forward_quantized.argtypes = quantized
    return lib


GUARD = 64  # elements of canary on each side of every output buffer


def run_emulated(lib, kind, x, params, v0=None, offset=0):
    """One dsr_cuda_forward call on host memory; x's rows start `offset` elements into a fresh buffer."""
    T, N = x.shape[0], math.prod(x.shape[1:])
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    xbuf = torch.zeros(offset + x.numel() + GUARD, dtype=x.dtype)
    xbuf[offset:offset + x.numel()] = x.reshape(-1)
    ybuf = torch.full((GUARD + offset + x.numel() + GUARD,), 7.0, dtype=x.dtype)
    vbuf = torch.full((GUARD + N + GUARD,), 7.0, dtype=ct)
    vin = None if v0 is None else v0.to(ct).contiguous()
    ptr = lambda t, i: t.data_ptr() + i * t.element_size()  # noqa: E731
    # streamed loads may only touch x's elements, stores y's
    nbytes = x.numel() * x.element_size()
    lo = (ctypes.c_size_t * 2)(ptr(xbuf, offset), ptr(ybuf, GUARD + offset))
    size = (ctypes.c_size_t * 2)(nbytes, nbytes)
    # The registry is process-wide (its symbols are GNU-unique, shared with the ORT library below): clear it after.
    lib.dsr_emu_set_regions(lo, size, 2)
    try:
        rc = lib.dsr_cuda_forward(DTYPES[x.dtype], ptr(xbuf, offset), ptr(ybuf, GUARD + offset),
                                  None if vin is None else vin.data_ptr(), ptr(vbuf, GUARD), T, N,
                                  0 if kind == "if" else 1, *params, None)
    finally:
        lib.dsr_emu_set_regions(None, None, 0)
    assert rc == 0, lib.dsr_cuda_error_string(rc).decode()
    # nothing written outside the output and the final membrane
    assert bool((ybuf[:GUARD + offset] == 7).all()) and bool((ybuf[GUARD + offset + x.numel():] == 7).all())
    assert bool((vbuf[:GUARD] == 7).all()) and bool((vbuf[GUARD + N:] == 7).all())
    y = ybuf[GUARD + offset:GUARD + offset + x.numel()].view(x.shape)
    return y, vbuf[GUARD:GUARD + N].view(x.shape[1:])


def reference(kind, x, params, v0=None, coefficients=(None, None)):
    if kind == "if":
        return ops.if_spike(x, *params[:2], v_init=v0, return_state=True, native=False)
    decay, gain = coefficients
    return ops.lif_spike(x, *params, v_init=v0, return_state=True, native=False, decay=decay, gain=gain)


@pytest.mark.parametrize("dtype", list(DTYPES), ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("kind", ["if", "lif"])
@pytest.mark.parametrize("T", [1, 4, 20])
@pytest.mark.parametrize("N", [1, 3, 8, 1000, 1024, 4099])
def test_emulated_kernel_is_bit_exact(emu, kind, dtype, T, N):
    gen = torch.Generator().manual_seed(T * 7919 + N)
    scale = 3.0 if kind == "if" else 1.5
    x = (torch.randn(T, N, generator=gen, dtype=torch.float64) * scale).to(dtype)
    v0 = torch.randn(N, generator=gen) * 0.5
    params = IF_PARAMS if kind == "if" else LIF_PARAMS
    for offset in (0, 1):  # an aligned base and a base one element off (no vector access may then happen)
        for init in (None, v0):
            y, v = run_emulated(emu, kind, x, params, init, offset)
            ry, rv = reference(kind, x, params, init)
            assert_bit_equal(y, ry, f"spikes offset={offset} v0={init is not None}")
            assert_bit_equal(v, rv, f"final membrane offset={offset} v0={init is not None}")


@pytest.mark.parametrize("dtype", list(DTYPES), ids=lambda d: str(d).split(".")[-1])
def test_the_launcher_takes_the_vector_path_exactly_when_it_is_safe(emu, dtype):
    vec = VEC[dtype]
    emu.dsr_emu_set_device(1, 1)  # a one-SM device: 1024 vectors already fill it (the large-N shape)
    try:
        for N, offset, vector in [(vec * 1024, 0, True), (vec * 1024 + 1, 0, False), (vec * 1024, 1, False)]:
            x = torch.randn(3, N).to(dtype)
            before_v, before_s = emu.dsr_emu_vector_accesses(), emu.dsr_emu_scalar_accesses()
            run_emulated(emu, "lif", x, LIF_PARAMS, None, offset)
            used_vector = emu.dsr_emu_vector_accesses() > before_v
            used_scalar = emu.dsr_emu_scalar_accesses() > before_s
            assert (used_vector, used_scalar) == (vector, not vector), (N, offset)
    finally:
        emu.dsr_emu_set_device(0, 0)


def launch_shape(lib, dtype, N, sms):
    out = (ctypes.c_int64 * 3)()
    assert lib.dsr_cuda_launch_shape(DTYPES[dtype], ctypes.c_int64(N), sms, out) == 0
    return tuple(out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["float32", "float16"])
def test_launch_shape_fills_the_sms_for_small_layers_and_keeps_the_large_path(emu, dtype):
    vec, sms = VEC[dtype], 132
    for N in (4096, 32768, 262144):  # the small-N rows of scripts/gpu_check.py
        v, block, grid = launch_shape(emu, dtype, N, sms)
        assert v == 1 and 32 <= block <= 256 and block % 32 == 0, N
        # Every SM gets a block, down to one warp per block (4096 neurons are only 128 warps).
        assert grid * block * v >= N and grid >= min(sms, N // 32), (N, v, block, grid)
    # Before: one thread per vector, blocks of 256, whatever the device: 32 blocks at N = 32K float32.
    assert launch_shape(emu, dtype, 32768, 0) == (vec, 256, 32768 // vec // 256)
    big = 64 * 1024 * 1024
    assert launch_shape(emu, dtype, big, sms) == (vec, 256, big // vec // 256)  # the bandwidth path, unchanged


@pytest.mark.parametrize("dtype", list(DTYPES), ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("N", [4096, 32768 + 3, 40000])
def test_small_layer_launch_shapes_are_bit_exact(emu, dtype, N):
    """The launches the small-N shapes make (one neuron per thread, blocks of 32-256) on a 132-SM device."""
    gen = torch.Generator().manual_seed(N)
    x = (torch.randn(4, N, generator=gen, dtype=torch.float64) * 2.0).to(dtype)
    v0 = torch.randn(N, generator=gen) * 0.5
    for kind, params in (("if", IF_PARAMS), ("lif", LIF_PARAMS)):
        y, v = run_emulated(emu, kind, x, params, v0)
        _v, block, grid = launch_shape(emu, dtype, N, 132)
        assert (emu.dsr_emu_last_block(), emu.dsr_emu_last_grid()) == (block, grid)
        ry, rv = reference(kind, x, params, v0)
        assert_bit_equal(y, ry, f"{kind} spikes N={N}")
        assert_bit_equal(v, rv, f"{kind} membrane N={N}")


LAUNCH_DTYPES = {"float32": (0, 4), "float64": (1, 2), "float16": (2, 8), "bfloat16": (3, 8), "uint8": (4, 16),
                 "int8": (5, 16)}  # dsr_cuda_launch_shape code, widest vector (16 bytes)
LAUNCH_N = sorted({1, 2, 3, 7, 31, 32, 33, 4095, 4096, 4099, 65536, 100003, 262144, 500_000, 524288, 1_000_000,
                   1_048_576, 1_500_000, 2_000_000, 2_162_688, 4_194_304, 8_388_608, 20_971_520, 33_554_432}
                  | {2 ** k * m for k in range(26) for m in (1, 3) if 2 ** k * m <= 32 * 2 ** 20})


@pytest.mark.parametrize("name", list(LAUNCH_DTYPES))
def test_launch_shape_for_n_from_1_to_32m(emu, name):
    """Every dtype, N from 1 to 32 M on a 132-SM device: a power-of-two vector dividing the 16-byte width and N,
    every neuron covered by one thread; the vector never narrows as N grows (multiples of the width); the largest
    layers take 16 bytes, and between one element per thread and 16-byte vectors the intermediate widths are used
    (a 0.5 M-neuron layer, a CIFAR ResNet layer at batch 8, no longer drops to one element per thread)."""
    code, max_vec = LAUNCH_DTYPES[name]
    sms, seen, last = 132, set(), 0
    for N in LAUNCH_N:
        out = (ctypes.c_int64 * 3)()
        assert emu.dsr_cuda_launch_shape(code, ctypes.c_int64(N), sms, out) == 0
        vec, block, grid = tuple(out)
        assert vec >= 1 and max_vec % vec == 0 and N % vec == 0, (N, vec)
        assert 32 <= block <= 256 and block % 32 == 0 and grid * block * vec >= N > (grid - 1) * block * vec, N
        if N % max_vec == 0:
            assert vec >= last, (N, vec, last)
            last = vec
        seen.add(vec)
    assert max_vec in seen and 1 in seen
    assert seen >= {v for v in (2, 4, 8) if v < max_vec}, seen  # every intermediate width occurs
    mid = (ctypes.c_int64 * 3)()
    emu.dsr_cuda_launch_shape(code, ctypes.c_int64(524288), sms, mid)
    assert max_vec == 2 or 1 < mid[0] < max_vec, tuple(mid)  # 0.5 M: an intermediate width


@pytest.mark.parametrize("dtype", list(DTYPES), ids=lambda d: str(d).split(".")[-1])
def test_intermediate_vector_widths_are_bit_exact(emu, dtype):
    """A one-SM device (1024 threads fill it): N = 1024 * v neurons take v-element vectors, every width from 2 to
    the 16-byte one; each launch is bit-exact with the reference, in bounds and aligned (the emulator checks)."""
    emu.dsr_emu_set_device(3, 1)
    try:
        v = 2
        while v <= VEC[dtype]:
            N = 1024 * v
            x = (torch.randn(3, N, generator=torch.Generator().manual_seed(v), dtype=torch.float64) * 2).to(dtype)
            v0 = torch.randn(N, generator=torch.Generator().manual_seed(v + 1)) * 0.5
            for kind, params in (("if", IF_PARAMS), ("lif", LIF_PARAMS)):
                y, vv = run_emulated(emu, kind, x, params, v0)
                assert emu.dsr_emu_last_grid() * emu.dsr_emu_last_block() * v == N, (v, N)
                ry, rv = reference(kind, x, params, v0)
                assert_bit_equal(y, ry, f"{kind} spikes vec={v}")
                assert_bit_equal(vv, rv, f"{kind} membrane vec={v}")
            v *= 2
    finally:
        emu.dsr_emu_set_device(0, 0)


def test_quantized_intermediate_vector_widths_and_null_zero_point(emu):
    """int8 codes at 2, 4, 8 and 16 codes per thread (a one-SM device) equal the definition; a null zero point
    (the TensorRT plugin's zero point given as float or int32: TensorRT's int8 is symmetric) reads as 0."""
    emu.dsr_emu_set_device(4, 1)
    try:
        for v in (2, 4, 8, 16):
            codes = random_codes(np.int8, 3, 1024 * v, v)
            got = run_quantized(emu, "lif", codes, 0.01, -2, LIF_PARAMS)
            assert emu.dsr_emu_last_grid() * emu.dsr_emu_last_block() * v == codes.shape[1], v
            assert np.array_equal(got, quantized_reference("lif", codes, 0.01, -2, LIF_PARAMS)), v
        codes = random_codes(np.int8, 4, 1001, 5)
        y = np.full(codes.shape, 7, np.int8)
        s = np.array([0.03], np.float32)
        rc = emu.dsr_cuda_forward_quantized(CODES[np.int8], codes.ctypes.data, y.ctypes.data, s.ctypes.data, None,
                                            4, 1001, 0, *IF_PARAMS, None)
        assert rc == 0 and np.array_equal(y, quantized_reference("if", codes, 0.03, 0, IF_PARAMS))
    finally:
        emu.dsr_emu_set_device(0, 0)


def same_bits_or_both_nan(a, b, what):
    # IEEE 754 leaves open which NaN an operation on NaNs returns (x86 keeps an operand's sign, a GPU returns the
    # canonical NaN), so NaN positions must agree and every other value must agree bit for bit.
    assert torch.equal(torch.isnan(a), torch.isnan(b)), what + ": NaN positions differ"
    keep = ~torch.isnan(a)
    assert_bit_equal(a[keep], b[keep], what)


def test_specials_follow_the_reference(emu):
    specials = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e-45, -1e-45, 3.4e38, 0.5, 2.0])
    x = specials.repeat(6, 8).view(6, 80)
    x[1::2] = x[1::2].flip(-1)
    for kind, params in (("if", IF_PARAMS), ("lif", LIF_PARAMS), ("if", (-1.0, 0.5, 1.0, 1.0)),
                         ("lif", (float("inf"), 0.3, 2.0, 0.05))):
        y, v = run_emulated(emu, kind, x, params)
        ry, rv = reference(kind, x, params)
        same_bits_or_both_nan(y, ry, f"{kind} {params} spikes")
        same_bits_or_both_nan(v, rv, f"{kind} {params} membrane")


def test_time_zero_keeps_the_initial_membrane(emu):
    x = torch.empty(0, 16)
    y, v = run_emulated(emu, "if", x, IF_PARAMS, torch.full((16,), 0.25))
    assert y.shape == (0, 16)
    assert torch.equal(v, torch.full((16,), 0.25))


def test_no_neurons_launches_nothing(emu):
    assert emu.dsr_cuda_forward(0, None, None, None, None, 5, 0, 0, *IF_PARAMS, None) == 0


# ---- the quantised ops (int8 exports): codes in, spike codes out ------------------------------------------------

CODES = {np.uint8: 0, np.int8: 1}


def quantized_reference(kind, codes, scale, zp, params):
    """The quantised op by definition: ONNX DequantizeLinear (float32(q - zp) * scale, one rounding), the Python
    reference neuron, spike codes = output != 0 (in the codes' type)."""
    current = (codes.astype(np.int32) - int(zp)).astype(np.float32) * np.float32(scale)
    y, _ = reference(kind, torch.from_numpy(current), params)
    return (y.numpy() != 0).astype(codes.dtype)


def run_quantized(lib, kind, codes, scale, zp, params, offset=0, device="cuda"):
    """One dsr_cuda_forward_quantized (emulated) or dsr_cpu_forward_quantized call; the codes start `offset` bytes
    into a fresh buffer, the output too, with canaries around it."""
    T, N = codes.shape[0], math.prod(codes.shape[1:])
    xbuf = np.zeros(offset + codes.size + GUARD, codes.dtype)
    xbuf[offset:offset + codes.size] = codes.reshape(-1)
    ybuf = np.full(GUARD + offset + codes.size + GUARD, 7, codes.dtype)
    s = np.array([scale], np.float32)
    z = np.array([zp], codes.dtype)
    ptr = lambda a, i: a.ctypes.data + i * a.itemsize  # noqa: E731
    args = (CODES[codes.dtype.type], ptr(xbuf, offset), ptr(ybuf, GUARD + offset), s.ctypes.data, z.ctypes.data, T,
            N, 0 if kind == "if" else 1, *params)
    if device == "cuda":
        lo = (ctypes.c_size_t * 2)(ptr(xbuf, offset), ptr(ybuf, GUARD + offset))
        size = (ctypes.c_size_t * 2)(codes.size, codes.size)
        lib.dsr_emu_set_regions(lo, size, 2)
        try:
            rc = lib.dsr_cuda_forward_quantized(*args, None)
        finally:
            lib.dsr_emu_set_regions(None, None, 0)
    else:
        rc = lib.dsr_cpu_forward_quantized(*args)
    assert rc == 0, lib.dsr_cuda_error_string(rc).decode() if device == "cuda" else rc
    assert (ybuf[:GUARD + offset] == 7).all() and (ybuf[GUARD + offset + codes.size:] == 7).all()
    return ybuf[GUARD + offset:GUARD + offset + codes.size].reshape(codes.shape)


def random_codes(dtype, T, N, seed):
    info = np.iinfo(dtype)
    return np.random.default_rng(seed).integers(info.min, info.max + 1, size=(T, N)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8], ids=["uint8", "int8"])
@pytest.mark.parametrize("kind", ["if", "lif"])
@pytest.mark.parametrize("T, N", [(1, 1), (4, 15), (4, 16), (20, 17), (3, 1000), (5, 4099)])
def test_emulated_quantized_kernel_is_bit_exact_with_the_cpu_op_and_the_reference(emu, dtype, kind, T, N):
    """Codes of either sign with zero points 0, mid-range and at the ends, odd N (the scalar tail path), aligned
    and unaligned bases: the CUDA kernel (emulated), the CPU quantised op and the definition agree code for code."""
    params = IF_PARAMS if kind == "if" else LIF_PARAMS
    codes = random_codes(dtype, T, N, T * 31 + N)
    zps = (0, 37, 255) if dtype == np.uint8 else (0, -5, 127)
    scale = 0.023 if kind == "if" else 0.1
    for zp in zps:
        want = quantized_reference(kind, codes, scale, zp, params)
        assert set(np.unique(want)) <= {0, 1}
        for offset in (0, 1):
            got = run_quantized(emu, kind, codes, scale, zp, params, offset)
            assert np.array_equal(got, want), f"cuda zp={zp} offset={offset}"
        assert np.array_equal(run_quantized(emu, kind, codes, scale, zp, params, device="cpu"), want), f"cpu zp={zp}"
    both = quantized_reference(kind, codes, scale, zps[1], params)
    assert T * N < 64 or (both == 1).any() and (both == 0).any()  # the inputs make the neurons fire, not always


@pytest.mark.parametrize("dtype, zp", [(np.uint8, 100), (np.int8, -7)], ids=["uint8", "int8"])
def test_quantized_dequantisation_rounds_once_at_the_threshold(emu, dtype, zp):
    """IF, alpha 1, one step: a neuron fires iff its dequantised current >= vth. With vth = the exact dequantised
    value of one code, that code must fire; with vth one float32 ulp above, it must not: any other rounding of
    float(q - zp) * scale (a product in another order, a reciprocal, a scale off by an ulp) flips one of the two."""
    scale = np.float32(0.0123)
    q0 = 150 if dtype == np.uint8 else 90
    x0 = np.float32(np.float32(q0 - zp) * scale)
    codes = np.arange(np.iinfo(dtype).min, np.iinfo(dtype).max + 1).astype(dtype)[None, :]
    for vth, fires in ((x0, True), (np.nextafter(x0, np.float32(np.inf)), False)):
        params = (float(vth), 1.0, 1.0, 1.0)
        for device in ("cuda", "cpu"):
            got = run_quantized(emu, "if", codes, float(scale), zp, params, device=device)
            assert got[0, q0 - np.iinfo(dtype).min] == fires, (device, float(vth))
            assert np.array_equal(got, quantized_reference("if", codes, float(scale), zp, params)), device


def test_quantized_kernel_takes_16_codes_per_thread_exactly_when_it_is_safe(emu):
    emu.dsr_emu_set_device(2, 1)  # a one-SM device: the large-N shape
    try:
        for N, offset, vector in [(16 * 1024, 0, True), (16 * 1024 + 1, 0, False), (16 * 1024, 1, False)]:
            codes = random_codes(np.int8, 3, N, N)
            before_v, before_s = emu.dsr_emu_vector_accesses(), emu.dsr_emu_scalar_accesses()
            got = run_quantized(emu, "lif", codes, 0.01, -2, LIF_PARAMS, offset)
            used = (emu.dsr_emu_vector_accesses() > before_v, emu.dsr_emu_scalar_accesses() > before_s)
            assert used == (vector, not vector), (N, offset)
            assert np.array_equal(got, quantized_reference("lif", codes, 0.01, -2, LIF_PARAMS))
    finally:
        emu.dsr_emu_set_device(0, 0)


def test_quantized_spike_codes_follow_the_float_op_for_special_thresholds(emu):
    """The code is the float op's output != 0: a NaN threshold fires never but its 'no spike' output is NaN (code
    1); a zero threshold's spikes are 0 (code 0). The kernel derives both codes the same way as the CPU op."""
    codes = random_codes(np.uint8, 6, 40, 1)
    for params in ((float("nan"), 0.5, 1.0, 1.0), (0.0, 0.5, 1.0, 1.0), (-1.0, 0.5, 1.0, 1.0)):
        want = quantized_reference("if", codes, 0.05, 128, params)
        assert np.array_equal(run_quantized(emu, "if", codes, 0.05, 128, params), want), params
        assert np.array_equal(run_quantized(emu, "if", codes, 0.05, 128, params, device="cpu"), want), params


# ---- the TensorRT plugins' runtime path on the emulated core ---------------------------------------------------

TRT = plugins.detect(trt_root=os.environ.get("TENSORRT_ROOT"))["trt"]
CUDA_ROOT = plugins._cuda_root(plugins._nvcc())
TRT_DTYPE = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}


@pytest.fixture(scope="module")
def trt_emu(emu, tmp_path_factory):
    if not TRT["available"]:
        pytest.skip(str(TRT.get("reason")))
    cuda_inc = [d for d in (Path(CUDA_ROOT or "/nonexistent") / "include",
                            Path(CUDA_ROOT or "/nonexistent") / "targets" / "x86_64-linux" / "include")
                if (d / "cuda_runtime_api.h").is_file()]
    if not cuda_inc:
        pytest.skip("CUDA headers (cuda_runtime_api.h, needed by NvInferRuntime.h) not found")
    d = tmp_path_factory.mktemp("trt_emu")
    exe, sj_obj = d / "trt_enqueue_emu", d / "dsr_sj_cuda_emu.o"
    src = repo_root() / "plugins"
    flags = ["-std=c++17", "-O2", "-ffp-contract=off", "-fno-trapping-math", "-DDSR_WITH_CUDA=1", f"-I{CORE}"]
    steps = [  # the SpikingJelly kernel under the emulation too: the creator list holds its plugins
        [CXX, *flags, "-DDSR_CUDA_HOST_EMULATION", "-include", str(SHIM), "-x", "c++", "-c",
         str(CORE / "dsr_sj_cuda.cu"), "-o", str(sj_obj)],
        [CXX, *flags, "-Wno-deprecated-declarations", f"-I{src / 'tensorrt'}", f"-I{TRT['include']}",
         f"-I{cuda_inc[0]}", str(repo_root() / "tests" / "cuda_emulation" / "trt_enqueue_emu.cpp"),
         str(src / "tensorrt" / "dsr_trt_plugin.cpp"), str(src / "tensorrt" / "dsr_trt_sj_plugin.cpp"),
         str(CORE / "dsr_spike_cpu.cpp"), str(CORE / "dsr_spike_cpu_baseline.cpp"), str(emu.emulated_object),
         str(sj_obj), "-o", str(exe), "-pthread"],
    ]
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return exe


def run_trt(exe, tmp_path, op, x, attrs, v=None):
    """attrs: v_threshold, alpha, tau, delta_t, decay, gain as the ONNX node carries them (None: field absent)."""
    T, N = (1, x.numel()) if v is not None else (x.shape[0], math.prod(x.shape[1:]))
    (tmp_path / "x.bin").write_bytes(x.contiguous().view(torch.int16 if x.element_size() == 2 else torch.int32)
                                     .numpy().tobytes())
    if v is not None:
        (tmp_path / "v.bin").write_bytes(v.contiguous().numpy().tobytes())
    args = [str(exe), op, TRT_DTYPE[x.dtype], str(T), str(N)]
    args += ["-" if a is None else repr(float(a)) for a in attrs] + [str(tmp_path)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    raw = np.frombuffer((tmp_path / "y.bin").read_bytes(), dtype=np.int16 if x.element_size() == 2 else np.int32)
    y = torch.from_numpy(raw.copy()).view(x.dtype).view(x.shape)
    v_new = None
    if v is not None:
        v_new = torch.from_numpy(np.frombuffer((tmp_path / "v_new.bin").read_bytes(), dtype=np.float32).copy())
        v_new = v_new.view(v.shape)
    return y, v_new


@pytest.mark.parametrize("dtype", list(TRT_DTYPE), ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("kind, coefficients", [("if", None), ("lif", "double"), ("lif", "float32"), ("lif", None)],
                         ids=["if", "lif-decay-gain-fields", "lif-float32-rule-fields", "lif-from-tau-dt"])
def test_tensorrt_spike_plugin_enqueue_matches_the_reference(trt_emu, tmp_path, kind, dtype, coefficients):
    from dsr_deploy.functional import lif_coefficients

    vth, alpha, tau, dt = f32(1.3), f32(0.3), f32(2.0), f32(0.05)
    decay, gain = (None, None)
    if coefficients:  # the fields carry the layer's rule (float32: the authors' arithmetic)
        decay, gain = (f32(c) for c in lif_coefficients(tau, dt, coefficients))
    attrs = [vth, alpha] + ([tau, dt, decay, gain] if kind == "lif" else [None] * 4)
    for T, N in [(20, 4096), (7, 1001), (1, 8)]:
        x = (torch.randn(T, N, dtype=torch.float64, generator=torch.Generator().manual_seed(T + N)) * 2).to(dtype)
        y, _ = run_trt(trt_emu, tmp_path, "DSRIFSpike" if kind == "if" else "DSRLIFSpike", x, attrs)
        ry, _ = reference(kind, x, (vth, alpha, tau, dt), coefficients=(decay, gain))
        assert_bit_equal(y, ry, f"{kind} {dtype} T={T} N={N}")


@pytest.mark.parametrize("kind", ["if", "lif"])
def test_tensorrt_step_plugin_enqueue_matches_the_reference(trt_emu, tmp_path, kind):
    vth, alpha, tau, dt = f32(1.3), f32(0.3), f32(2.0), f32(0.05)
    beta = math.exp(-dt / tau)
    attrs = [vth, alpha] + ([tau, dt, f32(beta), f32(1.0 - beta)] if kind == "lif" else [None] * 4)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 999, generator=gen) * 2
    v = torch.zeros(999)
    ys = []
    for t in range(x.shape[0]):  # a stream: each step's v_new is the next step's v
        y_t, v = run_trt(trt_emu, tmp_path, "DSRIFStep" if kind == "if" else "DSRLIFStep", x[t], attrs, v)
        ys.append(y_t)
    ry, rv = reference(kind, x, (vth, alpha, tau, dt))
    assert_bit_equal(torch.stack(ys), ry, f"{kind} step spikes")
    assert_bit_equal(v, rv, f"{kind} step final membrane")


# ---- the ONNX Runtime CUDA EP kernels on the emulated core -----------------------------------------------------

@pytest.fixture(scope="module")
def ort_cuda_emu(emu, tmp_path_factory):
    """libdsr_ort_ops built with its CUDA EP kernels registered for the CPU EP (and no CPU kernels), over the
    emulated core: the pip onnxruntime then runs the CUDA EP code path (stream query, shapes, Step I/O). No ONNX
    Runtime SDK: the library's own ABI declaration (plugins/onnxruntime/dsr_ort_abi.h)."""
    pytest.importorskip("onnxruntime")
    lib = tmp_path_factory.mktemp("ort_emu") / "libdsr_ort_ops_cuda_emu.so"
    cmd = [CXX, "-std=c++17", "-O2", "-ffp-contract=off", "-fno-trapping-math", "-fPIC", "-shared",
           "-DDSR_WITH_CUDA=1", "-DDSR_ORT_CUDA_KERNELS_ON_CPU_EP", f"-I{CORE}",
           str(repo_root() / "plugins" / "onnxruntime" / "dsr_ort_ops.cpp"),
           str(CORE / "dsr_spike_cpu.cpp"), str(CORE / "dsr_spike_cpu_baseline.cpp"), str(CORE / "dsr_sj_cpu.cpp"),
           str(emu.emulated_object), "-o", str(lib), "-pthread", "-Wl,--no-undefined"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return lib


def ort_session(lib, model):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.register_custom_ops_library(str(lib))
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["float32", "float16"])
@pytest.mark.parametrize("kind, rule", [("if", None), ("lif", "double"), ("lif", "float32")])
def test_ort_cuda_ep_spike_kernels_match_the_reference(ort_cuda_emu, kind, rule, dtype):
    from onnx import TensorProto

    from dsr_deploy.functional import lif_coefficients

    vth, alpha, tau, dt = f32(1.3), f32(0.3), f32(2.0), f32(0.05)
    attrs = dict(v_threshold=vth, alpha=alpha)
    decay = gain = None
    if kind == "lif":  # decay / gain by the layer's rule (float32: the authors' arithmetic)
        decay, gain = (f32(c) for c in lif_coefficients(tau, dt, rule))
        attrs.update(tau=tau, delta_t=dt, decay=decay, gain=gain)
    elem = TensorProto.FLOAT if dtype == torch.float32 else TensorProto.FLOAT16
    sess = ort_session(ort_cuda_emu, dsr_node_model("DSRIFSpike" if kind == "if" else "DSRLIFSpike", attrs, elem=elem))
    for shape in [(20, 4, 1024), (7, 3, 333), (1, 8)]:
        x = (torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(sum(shape))) * 2).to(dtype)
        (y,) = sess.run(None, {"x": x.numpy()})
        ry, _ = reference(kind, x, (vth, alpha, tau, dt), coefficients=(decay, gain))
        assert_bit_equal(torch.from_numpy(y), ry, f"{kind} {dtype} {shape}")


@pytest.mark.parametrize("kind", ["if", "lif"])
def test_ort_cuda_ep_step_kernels_chain_like_the_reference(ort_cuda_emu, kind):
    vth, alpha, tau, dt = f32(1.3), f32(0.3), f32(2.0), f32(0.05)
    attrs = dict(v_threshold=vth, alpha=alpha)
    if kind == "lif":
        attrs.update(tau=tau, delta_t=dt)  # decay/gain computed by the kernel from tau and delta_t
    sess = ort_session(ort_cuda_emu, dsr_node_model("DSRIFStep" if kind == "if" else "DSRLIFStep", attrs,
                                                    step=True))
    x = torch.randn(6, 5, 77, generator=torch.Generator().manual_seed(5)) * 2
    v = np.zeros((5, 77), dtype=np.float32)
    ys = []
    for t in range(x.shape[0]):
        y_t, v = sess.run(None, {"x": x[t].numpy(), "v": v})
        ys.append(torch.from_numpy(y_t))
    ry, rv = reference(kind, x, (vth, alpha, tau, dt))
    assert_bit_equal(torch.stack(ys), ry, f"{kind} step spikes")
    assert_bit_equal(torch.from_numpy(v), rv, f"{kind} step final membrane")


def quantized_node_model(op, attrs, elem):
    """One ``dsr::<op>`` quantised node (x codes, x_scale, x_zero_point -> spike codes) and no function body."""
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info("x", elem, None),
              helper.make_tensor_value_info("x_scale", TensorProto.FLOAT, []),
              helper.make_tensor_value_info("x_zero_point", elem, [])]
    outputs = [helper.make_tensor_value_info("y", elem, None)]
    node = helper.make_node(op, ["x", "x_scale", "x_zero_point"], ["y"], domain="dsr", **attrs)
    graph = helper.make_graph([node], "dsr_node", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("dsr", 1)],
                             ir_version=8)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8], ids=["uint8", "int8"])
@pytest.mark.parametrize("kind", ["if", "lif"])
def test_ort_cuda_ep_quantized_kernels_match_the_reference(ort_cuda_emu, kind, dtype):
    """The CUDA EP's DSRIFSpikeQ / DSRLIFSpikeQ (registered for the CUDA EP now; here over the emulated core): the
    scale and zero point reach the kernel as tensors (device memory on a GPU), codes of both signs."""
    from onnx import TensorProto

    vth, alpha, tau, dt = f32(1.3), f32(0.3), f32(2.0), f32(0.05)
    attrs = dict(v_threshold=vth, alpha=alpha)
    if kind == "lif":
        attrs.update(tau=tau, delta_t=dt)  # decay/gain from tau and delta_t: the double rule, as reference()
    elem = TensorProto.UINT8 if dtype == np.uint8 else TensorProto.INT8
    sess = ort_session(ort_cuda_emu, quantized_node_model("DSRIFSpikeQ" if kind == "if" else "DSRLIFSpikeQ", attrs,
                                                          elem))
    scale, zp = (0.03, 11) if kind == "if" else (0.2, -9 if dtype == np.int8 else 9)
    for shape in [(20, 4, 1024), (7, 3, 333), (1, 8)]:
        codes = random_codes(dtype, shape[0], math.prod(shape[1:]), sum(shape)).reshape(shape)
        (y,) = sess.run(None, {"x": codes, "x_scale": np.array(scale, np.float32), "x_zero_point": np.array(zp, dtype)})
        want = quantized_reference(kind, codes, scale, zp, (vth, alpha, tau, dt))
        assert y.dtype == dtype and np.array_equal(y, want), (kind, dtype, shape)
        assert codes.size < 100 or (want == 1).any() and (want == 0).any()


@pytest.mark.parametrize("kind", ["if", "lif"])
def test_tensorrt_quantized_plugin_enqueue_matches_the_reference(trt_emu, tmp_path, kind):
    """DSRIFSpikeQ / DSRLIFSpikeQ: int8 codes with a non-zero zero point, the scale and zero point as (device)
    inputs, odd N and an unaligned base: the plugin's enqueue on the emulated core gives the definition's codes."""
    vth, alpha, tau, dt = f32(1.3), f32(0.3), f32(2.0), f32(0.05)
    attrs = [vth, alpha] + ([tau, dt, None, None] if kind == "lif" else [None] * 4)
    scale, zp = (0.03, -3) if kind == "if" else (0.2, 5)
    (tmp_path / "scale.bin").write_bytes(np.array([scale], np.float32).tobytes())
    (tmp_path / "zp.bin").write_bytes(np.array([zp], np.int8).tobytes())
    for T, N, offset in [(20, 4096, 0), (7, 1001, 1), (1, 16, 1)]:
        codes = random_codes(np.int8, T, N, T + N)
        (tmp_path / "x.bin").write_bytes(codes.tobytes())
        args = [str(trt_emu), "DSRIFSpikeQ" if kind == "if" else "DSRLIFSpikeQ", "i8", str(T), str(N)]
        args += ["-" if a is None else repr(float(a)) for a in attrs] + [str(tmp_path), str(offset)]
        proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        got = np.frombuffer((tmp_path / "y.bin").read_bytes(), np.int8).reshape(T, N)
        want = quantized_reference(kind, codes, scale, zp, (vth, alpha, tau, dt))
        assert np.array_equal(got, want), (kind, T, N, offset)
