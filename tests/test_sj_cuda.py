"""The SpikingJelly neurons' CUDA kernel (plugins/core/dsr_sj_cuda.cu) without a GPU: compiled as host C++ against
the emulation header (grid as loops, _rn intrinsics as IEEE operations) and checked bit-exact with
dsr_deploy.functional.sj_forward; and, with nvcc, its PTX: no FMA, no flush-to-zero, every add / sub / mul / div
explicitly rounded (so nvcc's default -fmad cannot contract PLIF's product and sum)."""

from __future__ import annotations

import ctypes
import itertools
import re
import shutil
import subprocess

import pytest
import torch
from _native_util import repo_root

from dsr_deploy import functional as F
from dsr_deploy import plugins

CXX = shutil.which("g++") or shutil.which("c++")
NVCC = plugins._nvcc()
CORE = repo_root() / "plugins" / "core"
SHIM = repo_root() / "tests" / "cuda_emulation" / "cuda_host_emulation.h"
SOURCE = CORE / "dsr_sj_cuda.cu"
CHARGES = {"if": 0, "lif": 1, "plif": 2}


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    if CXX is None:
        pytest.skip("no C++ compiler")
    d = tmp_path_factory.mktemp("sj_cuda_emu")
    lib = d / "libdsr_sj_cuda_emu.so"
    cmd = [CXX, "-std=c++17", "-O2", "-ffp-contract=off", "-fno-trapping-math", "-fPIC", "-shared",
           "-DDSR_CUDA_HOST_EMULATION", f"-I{CORE}", "-include", str(SHIM), "-x", "c++", str(SOURCE), "-o", str(lib)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    so = ctypes.CDLL(str(lib))
    so.dsr_sj_cuda_forward.restype = ctypes.c_int
    so.dsr_sj_cuda_forward.argtypes = ([ctypes.c_int] * 4 + [ctypes.c_double] * 3 + [ctypes.c_void_p] * 4
                                       + [ctypes.c_int64] * 2 + [ctypes.c_void_p])
    return so


def run(so, x, family, vth, v_reset, leak, decay_input, v0=None):
    T, N = x.shape[0], x[0].numel()
    y = torch.full_like(x, 7.0)
    v = torch.full(x.shape[1:], 7.0, dtype=x.dtype)
    rc = so.dsr_sj_cuda_forward(0 if x.dtype == torch.float32 else 1, CHARGES[family], int(decay_input),
                                int(v_reset is not None), vth, 0.0 if v_reset is None else v_reset, leak,
                                x.data_ptr(), y.data_ptr(), None if v0 is None else v0.data_ptr(), v.data_ptr(), T, N,
                                None)
    assert rc == 0
    return y, v


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_emulated_sj_kernel_is_bit_exact(emu, dtype):
    gen = torch.Generator().manual_seed(31)
    for family, hard, decay_input in itertools.product(CHARGES, (False, True), (True, False)):
        vth = float(torch.empty(()).uniform_(0.2, 2.0, generator=gen))
        v_reset = float(torch.empty(()).uniform_(-0.5, 0.3, generator=gen)) if hard else None
        leak = float(torch.empty(()).uniform_(1.1, 6.0, generator=gen)) if family == "lif" else \
            float(torch.empty(()).uniform_(0.05, 0.95, generator=gen).float())
        x = (torch.randn(9, 2, 300, generator=gen, dtype=torch.float64) * vth * 2).to(dtype)
        x[0, 0, :9] = vth
        v0 = torch.randn(2, 300, generator=gen, dtype=torch.float64).to(dtype)
        for init in (None, v0):
            want_y, want_v = F.sj_forward(x, family, vth, v_reset, leak, decay_input, init, True)
            y, v = run(emu, x, family, vth, v_reset, leak, decay_input, init)
            assert torch.equal(y, want_y) and torch.equal(v, want_v), (family, hard, decay_input, init is None)


FLOAT_OP = re.compile(r"^\s*(?:@%p\d+\s+)?(add|sub|mul|fma|div|setp\.\w+)\.([a-z0-9.]+)\s", re.MULTILINE)


@pytest.mark.skipif(NVCC is None, reason="nvcc not found (CUDA toolkit not installed)")
def test_sj_kernel_ptx_has_no_fma_and_rounds_every_op(tmp_path):
    out = tmp_path / "dsr_sj_cuda.ptx"
    # nvcc's defaults (-fmad=true, no ftz flag): the intrinsics must keep the arithmetic exact even so
    proc = subprocess.run([NVCC, "-ptx", "-arch=sm_90", "-O3", "-std=c++17", "-I", str(CORE), str(SOURCE), "-o",
                           str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ptx = out.read_text()
    ops = [(m.group(1), m.group(2)) for m in FLOAT_OP.finditer(ptx) if m.group(2).split(".")[-1] in ("f32", "f64")]
    assert ops, "no floating-point instruction found"
    assert not [o for o in ops if o[0] == "fma"], "an FMA in the SpikingJelly kernel"
    assert not [o for o in ops if "ftz" in o[1]], "flush-to-zero in the SpikingJelly kernel"
    arith = [o for o in ops if o[0] in ("add", "sub", "mul", "div")]
    assert arith and all(o[1].startswith("rn.") for o in arith), sorted(set(arith))
    assert any(o[0] == "div" for o in arith) and any(o[0] == "mul" for o in arith)
