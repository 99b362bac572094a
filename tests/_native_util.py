"""Helpers shared by the native-plugin tests: make sure the libraries are built, compare bit patterns."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from dsr_deploy import ops

_INT_VIEW = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16,
             torch.bfloat16: torch.int16}


def bits(t: torch.Tensor) -> torch.Tensor:
    """The bit pattern of a float tensor (so -0 vs 0 and NaN payloads count as differences)."""
    return t.contiguous().view(_INT_VIEW[t.dtype])


def assert_bit_equal(a: torch.Tensor, b: torch.Tensor, what: str = "") -> None:
    assert a.dtype == b.dtype, f"{what}: dtype {a.dtype} vs {b.dtype}"
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} vs {tuple(b.shape)}"
    if a.numel() == 0:
        return
    diff = bits(a) != bits(b)
    assert not bool(diff.any()), f"{what}: {int(diff.sum())} of {a.numel()} elements differ"


def ensure_torch_native() -> None:
    """Load libdsr_torch_ops.so, building it first (once, into the default folder) if it is missing.

    `make test` builds it before pytest; this covers a bare `pytest` run. A machine without cmake or a C++
    compiler cannot build it: that is the one reason to skip.
    """
    if ops.load_native():
        return
    if os.environ.get("DSR_DEPLOY_NATIVE", "1") == "0":
        pytest.skip("native kernels disabled by DSR_DEPLOY_NATIVE=0")
    from dsr_deploy import errors, plugins

    found = plugins.detect()
    if not (found["cmake"]["available"] and found["cxx"]["available"]):
        pytest.skip("cannot build the native torch op here: " + str(found["cmake"]["reason"] or found["cxx"]["reason"]))
    try:
        plugins.build(torch=True, cuda=False, ort=False, trt=False)
    except errors.UserError as exc:
        pytest.fail(f"building libdsr_torch_ops.so failed: {exc}")
    ops._native.update(loaded=False, path=None, reason="not looked for yet")  # look again now it exists
    assert ops.load_native(), ops.native_status()["reason"]


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
