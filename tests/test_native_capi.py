"""libdsr_kernels.so (the core behind C functions, used by the benchmarks through ctypes) vs the reference."""

from __future__ import annotations

import ctypes

import pytest
import torch
from _native_util import assert_bit_equal, ensure_torch_native

from dsr_deploy import ops, plugins

CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}


@pytest.fixture(scope="module")
def lib():
    ensure_torch_native()  # builds everything `plugins build` makes by default, libdsr_kernels.so included
    path = ops.find_library(plugins.KERNELS_LIBRARY)
    assert path is not None, "libdsr_kernels.so is built with every `dsr-deploy plugins build`"
    lib = ctypes.CDLL(str(path))
    lib.dsr_cpu_forward.restype = ctypes.c_int
    lib.dsr_cpu_forward.argtypes = [ctypes.c_int] + [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 2 + [ctypes.c_int] + \
        [ctypes.c_double] * 4 + [ctypes.c_int]
    lib.dsr_cpu_kernel_isa.restype = ctypes.c_char_p
    return lib


@pytest.mark.parametrize("dtype", list(CODES))
@pytest.mark.parametrize("kind", ["if", "lif"])
def test_c_entry_matches_reference(lib, kind, dtype):
    x = (torch.randn(12, 3001, dtype=torch.float64) * 2).to(dtype)
    v0 = torch.randn(3001, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    y = torch.empty_like(x)
    v = torch.empty_like(v0)
    params = (1.0, 0.5, 1.0, 1.0) if kind == "if" else (0.3, 0.3, 1.0, 0.05)
    rc = lib.dsr_cpu_forward(CODES[dtype], x.data_ptr(), y.data_ptr(), v0.data_ptr(), v.data_ptr(), 12, 3001,
                             0 if kind == "if" else 1, *params, 2)
    assert rc == 0
    fn = ops.if_spike if kind == "if" else ops.lif_spike
    ry, rv = fn(x, *(params[:2] if kind == "if" else params), v_init=v0, return_state=True, native=False)
    assert_bit_equal(y, ry, "spikes")
    assert_bit_equal(v, rv, "final membrane")
    assert lib.dsr_cpu_kernel_isa() in (b"avx2", b"baseline")


def test_c_entry_rejects_bad_codes(lib):
    x = torch.zeros(2, 3)
    assert lib.dsr_cpu_forward(7, x.data_ptr(), x.data_ptr(), None, None, 2, 3, 0, 1.0, 0.5, 1.0, 1.0, 1) != 0
