"""dsr::SpikeQLinearConv (plugins/core/dsr_spike_conv*.{h,cpp}, plugins/onnxruntime/dsr_ort_conv.cpp): the
event-driven int8 convolution on spike codes gives ONNX Runtime's own channels-last QLinearConv bit for bit, and its
function body (that op) runs where the library is not loaded."""

from __future__ import annotations

import numpy as np
import pytest
from _native_util import ensure_ort_library

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from dsr_deploy.export.int8.spike_conv import OP_TYPE, spike_conv_function  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def ort_lib():
    return ensure_ort_library()


def conv_model(op: str, w, w_scale, bias, *, x_scale=0.5, x_zp=0, y_scale=0.37, y_zp=128, **attrs):
    """One channels-last quantised convolution: com.microsoft.QLinearConv or dsr.SpikeQLinearConv (with its
    function body, so stock ONNX Runtime runs it too)."""
    inits = [numpy_helper.from_array(np.array(x_scale, np.float32), "xs"),
             numpy_helper.from_array(np.array(x_zp, np.uint8), "xz"),
             numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.asarray(w_scale, np.float32), "ws"),
             numpy_helper.from_array(np.zeros(np.shape(w_scale), np.int8), "wz"),
             numpy_helper.from_array(np.array(y_scale, np.float32), "ys"),
             numpy_helper.from_array(np.array(y_zp, np.uint8), "yz")]
    inputs = ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias, "b"))
        inputs.append("b")
    domain = "com.microsoft" if op == "QLinearConv" else "dsr"
    node = helper.make_node(op, inputs, ["y"], domain=domain, channels_last=1, **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.UINT8, None)],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, None)], inits)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1), helper.make_opsetid("dsr", 1)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=8)
    if op == OP_TYPE:
        model.functions.append(spike_conv_function())
    return model


def run(model, x, lib=None, threads=2):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    if lib is not None:
        so.register_custom_ops_library(str(lib))
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def case(rng, N, H, W, C, M, k, rate, per_channel=True, bias=True):
    x = (rng.random((N, H, W, C)) < rate).astype(np.uint8)
    w = rng.integers(-127, 128, (M, C, k, k)).astype(np.int8)
    ws = (rng.random(M) * 0.02 + 1e-3).astype(np.float32) if per_channel else np.float32(0.011)
    b = rng.integers(-3000, 3000, M).astype(np.int32) if bias else None
    return x, w, ws, b


GEOMETRIES = [  # (N, H, W, C, M, k, attrs): ResNet's 3x3 / 1x1 / strided shapes, odd channel counts and a dilation
    (3, 8, 8, 64, 64, 3, dict(pads=[1, 1, 1, 1], strides=[1, 1])),
    (2, 9, 7, 40, 24, 3, dict(pads=[1, 1, 1, 1], strides=[2, 2])),
    (2, 8, 8, 33, 130, 1, dict(strides=[2, 2])),
    (1, 5, 6, 17, 10, 3, dict(pads=[0, 2, 1, 0], dilations=[2, 1])),
    (2, 4, 4, 256, 512, 3, dict(pads=[1, 1, 1, 1])),
]


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: f"{g[3]}to{g[4]}k{g[5]}")
@pytest.mark.parametrize("rate", [0.0, 0.1, 0.5, 1.0])
def test_equals_onnxruntime_qlinearconv_bit_for_bit(ort_lib, geometry, rate):
    N, H, W, C, M, k, attrs = geometry
    x, w, ws, b = case(np.random.default_rng(hash((C, M, k, rate)) % 2**32), N, H, W, C, M, k, rate)
    want = run(conv_model("QLinearConv", w, ws, b, kernel_shape=[k, k], **attrs), x)
    got = run(conv_model(OP_TYPE, w, ws, b, kernel_shape=[k, k], **attrs), x, ort_lib)
    assert got.shape == want.shape
    assert np.array_equal(got, want), f"{np.count_nonzero(got != want)} of {got.size} codes differ"
    # the output really depends on the spikes (not a constant the check would pass trivially)
    assert rate == 0.0 or len(np.unique(got)) > 2


@pytest.mark.parametrize("per_channel,bias", [(False, False), (True, False), (False, True)])
def test_per_tensor_scales_and_no_bias(ort_lib, per_channel, bias):
    x, w, ws, b = case(np.random.default_rng(1), 2, 6, 6, 20, 12, 3, 0.3, per_channel, bias)
    want = run(conv_model("QLinearConv", w, ws, b, pads=[1, 1, 1, 1]), x)
    assert np.array_equal(run(conv_model(OP_TYPE, w, ws, b, pads=[1, 1, 1, 1]), x, ort_lib), want)


def test_codes_other_than_one_spike_are_exact(ort_lib):
    """Inputs that are not 0/1 (a nonzero zero point, counts of summed spikes, any code) add (code - zp) times
    their weights: the exact integer sum, then the same requantisation (checked against numpy in int64)."""
    rng = np.random.default_rng(2)
    x = rng.integers(0, 6, (2, 5, 5, 24)).astype(np.uint8)
    w = rng.integers(-127, 128, (16, 24, 3, 3)).astype(np.int8)
    ws = (rng.random(16) * 0.01 + 1e-3).astype(np.float32)
    b = rng.integers(-500, 500, 16).astype(np.int32)
    xs, ys, yz, xz = np.float32(0.25), np.float32(0.9), 100, 2
    got = run(conv_model(OP_TYPE, w, ws, b, x_scale=xs, x_zp=xz, y_scale=ys, y_zp=yz, pads=[1, 1, 1, 1]), x, ort_lib)
    xp = np.pad(x.astype(np.int64) - xz, ((0, 0), (1, 1), (1, 1), (0, 0)))
    acc = np.zeros((2, 5, 5, 16), np.int64)
    for ky in range(3):
        for kx in range(3):
            acc += np.einsum("nhwc,mc->nhwm", xp[:, ky:ky + 5, kx:kx + 5], w[:, :, ky, kx].astype(np.int64))
    scale = (xs * ws) / ys  # float32, as ONNX Runtime computes it
    f = (acc + b).astype(np.float32) * scale
    want = np.clip(np.rint(np.clip(f, -yz, 255 - yz)), -yz, 255 - yz).astype(np.int64) + yz
    assert np.array_equal(got, want.astype(np.uint8))


def test_function_body_runs_without_the_library():
    x, w, ws, b = case(np.random.default_rng(3), 2, 6, 6, 16, 8, 3, 0.2)
    want = run(conv_model("QLinearConv", w, ws, b, pads=[1, 1, 1, 1]), x)
    assert np.array_equal(run(conv_model(OP_TYPE, w, ws, b, pads=[1, 1, 1, 1]), x), want)


def test_changed_weights_are_not_served_from_the_cache(ort_lib):
    """The kernel keeps its re-laid weights; a weight fed as a graph input that changes between runs is re-laid."""
    x, w, ws, b = case(np.random.default_rng(4), 1, 5, 5, 8, 8, 3, 0.4)
    model = conv_model(OP_TYPE, w, ws, b, pads=[1, 1, 1, 1])
    g = model.graph
    g.initializer.remove(next(i for i in g.initializer if i.name == "w"))
    g.input.append(helper.make_tensor_value_info("w", TensorProto.INT8, None))
    so = ort.SessionOptions()
    so.register_custom_ops_library(str(ort_lib))
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    for k in range(3):
        wk = np.roll(w, k, axis=0)
        want = run(conv_model("QLinearConv", wk, ws, b, pads=[1, 1, 1, 1]), x)
        assert np.array_equal(sess.run(None, {"x": x, "w": wk})[0], want)


@pytest.mark.parametrize("attrs,message", [
    (dict(group=2), "group 1"),
    (dict(auto_pad="SAME_UPPER"), "auto_pad"),
    (dict(channels_last=0), "channels_last=1"),
])
def test_unsupported_forms_are_one_clear_error(ort_lib, attrs, message):
    x, w, ws, b = case(np.random.default_rng(5), 1, 4, 4, 8, 8, 3, 0.4)
    model = conv_model(OP_TYPE, w, ws, b)
    node = model.graph.node[0]
    for a in list(node.attribute):
        if a.name in attrs:
            node.attribute.remove(a)
    node.attribute.extend(helper.make_attribute(k, v) for k, v in attrs.items())
    with pytest.raises(Exception, match=message):
        run(model, x, ort_lib)


def test_nonzero_weight_zero_point_is_refused(ort_lib):
    x, w, ws, b = case(np.random.default_rng(6), 1, 4, 4, 8, 8, 3, 0.4)
    model = conv_model(OP_TYPE, w, ws, b)
    wz = next(i for i in model.graph.initializer if i.name == "wz")
    wz.CopyFrom(numpy_helper.from_array(np.ones(8, np.int8), "wz"))
    with pytest.raises(Exception, match="w_zero_point 0"):
        run(model, x, ort_lib)


def test_the_portable_loop_gives_the_same_codes(ort_lib):
    """DSR_SPIKE_CONV_ISA=baseline runs the portable loop (what a CPU without AVX2 runs): the bit-exact tests above
    pass with it too, in a fresh process (the loop is chosen once per process)."""
    import ctypes
    import os
    import subprocess
    import sys

    from dsr_deploy import ops, plugins

    env = {**os.environ, "DSR_SPIKE_CONV_ISA": "baseline"}
    kernels = ops.find_library(plugins.KERNELS_LIBRARY)  # built beside the ORT library by `plugins build`
    assert kernels is not None, "libdsr_kernels.so is built with every `dsr-deploy plugins build`"
    # the switch itself, read through the C entry point in a fresh process
    probe = (f"import ctypes; lib = ctypes.CDLL({str(kernels)!r}); lib.dsr_spike_conv_isa.restype = "
             "ctypes.c_char_p; print(lib.dsr_spike_conv_isa().decode())")
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "baseline", out.stderr
    lib = ctypes.CDLL(str(kernels))
    lib.dsr_spike_conv_isa.restype = ctypes.c_char_p
    assert lib.dsr_spike_conv_isa() in (b"avx2", b"baseline")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
                          "equals_onnxruntime or codes_other or per_tensor"], env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0 and " passed" in run.stdout, run.stdout[-2000:] + run.stderr[-2000:]


def test_a_kernel_too_large_for_the_loop_is_refused(ort_lib):
    """The loop addresses weight rows with int32 offsets: a file whose KH * KW * C passes 2^25 is refused in one
    line rather than read out of bounds."""
    C = (1 << 25) + 1
    w = np.zeros((1, C, 1, 1), np.int8)
    x = np.zeros((1, 1, 1, C), np.uint8)
    with pytest.raises(Exception, match="too large"):
        run(conv_model(OP_TYPE, w, np.float32(0.01), None), x, ort_lib)
