"""Helpers shared by the native-plugin tests: make sure the libraries are built, compare bit patterns."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
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


def _build_native() -> None:
    """Build the CPU libraries (the torch op and the ONNX Runtime library; neither needs an SDK) into the default
    folder, once; skip only when this machine has no CMake or no C++ compiler."""
    from dsr_deploy import errors, plugin_build, plugins

    found = plugins.detect()
    if not (found["cmake"]["available"] and found["cxx"]["available"]):
        pytest.skip("cannot build the native libraries here: "
                    + str(found["cmake"]["reason"] or found["cxx"]["reason"]))
    try:
        plugin_build.build(torch=True, cuda=False, ort=True, trt=False)
    except errors.UserError as exc:
        pytest.fail(f"building the native libraries failed: {exc}")


def ensure_torch_native() -> None:
    """Load libdsr_torch_ops.so, building it first (once, into the default folder) if it is missing.

    `make test` builds it before pytest; this covers a bare `pytest` run. A machine without cmake or a C++
    compiler cannot build it: that is the one reason to skip.
    """
    if ops.load_native():
        return
    if os.environ.get("DSR_DEPLOY_NATIVE", "1") == "0":
        pytest.skip("native kernels disabled by DSR_DEPLOY_NATIVE=0")
    _build_native()
    ops._native.update(loaded=False, path=None, reason="not looked for yet")  # look again now it exists
    assert ops.load_native(), ops.native_status()["reason"]


def ensure_ort_library() -> Path:
    """libdsr_ort_ops.so, built first if it is missing (no ONNX Runtime SDK needed; see ensure_torch_native)."""
    from dsr_deploy import plugins

    path = plugins.ort_library()
    if path is None:
        _build_native()
        path = plugins.ort_library()
        assert path is not None, "the build did not install libdsr_ort_ops.so where dsr_deploy looks"
    return path


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def f32(v: float) -> float:
    """``v`` rounded to float32, as a Python float (what a float32 ONNX attribute or TensorRT field holds)."""
    return float(np.float32(v))


def dsr_node_model(op: str, attrs: dict, step: bool = False, elem: int | None = None):
    """An ONNX model of one ``dsr::<op>`` node and no function body: only a registered kernel can run it.

    Spike ops: ``x -> y``; Step ops: ``(x, v) -> (y, v_new)`` with a float32 membrane. ``elem``: the ONNX element
    type of x and y (default float32).
    """
    from onnx import TensorProto, helper

    elem = TensorProto.FLOAT if elem is None else elem
    inputs = [helper.make_tensor_value_info("x", elem, None)]
    outputs = [helper.make_tensor_value_info("y", elem, None)]
    if step:
        inputs.append(helper.make_tensor_value_info("v", TensorProto.FLOAT, None))
        outputs.append(helper.make_tensor_value_info("v_new", TensorProto.FLOAT, None))
    node = helper.make_node(op, [i.name for i in inputs], [o.name for o in outputs], domain="dsr",
                            plugin_namespace="dsr", plugin_version="1", **attrs)
    graph = helper.make_graph([node], "dsr_node", inputs, outputs)
    # IR version 8 (the first with opset 17): loads in every ONNX Runtime the library supports (1.18 and newer).
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("dsr", 1)],
                             ir_version=8)
