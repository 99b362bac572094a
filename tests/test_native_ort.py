"""libdsr_ort_ops.so in the pip onnxruntime: hand-built ONNX models with dsr custom nodes vs the Python reference.

The library is built only when ONNX Runtime headers are given (`dsr-deploy plugins build --ort-root DIR`; the
wheel ships none, see plugins/README.md), so these tests skip when it is not built.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dsr_deploy import ops, plugins

from _native_util import dsr_node_model, f32

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto  # noqa: E402

LIB = plugins.ort_library()
pytestmark = pytest.mark.skipif(
    LIB is None, reason="libdsr_ort_ops.so not built (needs ONNX Runtime headers: dsr-deploy plugins build --ort-root)"
)


def lif_attrs(vth, alpha, tau, dt, with_coefficients=True):
    attrs = dict(v_threshold=vth, alpha=alpha, tau=tau, delta_t=dt)
    if with_coefficients:
        beta = math.exp(-dt / tau)
        attrs.update(decay=float(np.float32(beta)), gain=float(np.float32(1.0 - beta)))
    return attrs


def session(model, threads=0):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    assert plugins.register_ort_custom_ops(so)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def reference(kind, x, attrs, v_init=None):
    xt = torch.from_numpy(x)
    vi = None if v_init is None else torch.from_numpy(v_init)
    if kind == "if":
        y, v = ops.if_spike(xt, attrs["v_threshold"], attrs["alpha"], vi, True, native=False)
    else:
        y, v = ops.lif_spike(xt, attrs["v_threshold"], attrs["alpha"], attrs["tau"], attrs["delta_t"], vi, True,
                             native=False)
    return y.numpy(), v.numpy()


def assert_bits(a, b, what):
    assert a.dtype == b.dtype and a.dtype in (np.float32, np.float16) and a.shape == b.shape, what
    ints = np.int32 if a.dtype == np.float32 else np.int16
    diff = a.view(ints) != b.view(ints)
    assert not diff.any(), f"{what}: {int(diff.sum())} of {a.size} differ"


@settings(max_examples=12, deadline=None)
@given(
    kind=st.sampled_from(["if", "lif"]),
    T=st.integers(1, 25),
    step_shape=st.lists(st.integers(1, 30), min_size=0, max_size=3),
    vth=st.floats(0.05, 8.0).map(f32),
    alpha=st.floats(0.05, 1.0).map(f32),
    tau=st.floats(0.2, 5.0).map(f32),
    dt=st.floats(0.01, 1.0).map(f32),
    seed=st.integers(0, 2**31 - 1),
)
def test_spike_ops_bit_exact(kind, T, step_shape, vth, alpha, tau, dt, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal([T, *step_shape]) * vth * 1.5).astype(np.float32)
    if kind == "if":
        attrs = dict(v_threshold=vth, alpha=alpha)
        model = dsr_node_model("DSRIFSpike", attrs)
    else:
        attrs = lif_attrs(vth, alpha, tau, dt)
        model = dsr_node_model("DSRLIFSpike", attrs)
    (y,) = session(model).run(None, {"x": x})
    assert_bits(y, reference(kind, x, attrs)[0], f"{kind} {x.shape}")


def test_lif_without_coefficients_computes_them_in_double():
    attrs = lif_attrs(f32(0.3), f32(0.3), f32(1.0), f32(0.05), with_coefficients=False)
    x = (np.random.default_rng(0).standard_normal((20, 3, 77)) * 0.5).astype(np.float32)
    (y,) = session(dsr_node_model("DSRLIFSpike", attrs)).run(None, {"x": x})
    ref = reference("lif", x, attrs)[0]
    assert_bits(y, ref, "lif without decay/gain")
    assert (y != 0).any()


@pytest.mark.parametrize("kind", ["if", "lif"])
def test_threads_and_large_inputs(kind):
    # Large enough to go through ORT's thread pool; one thread and two give the same bits.
    attrs = dict(v_threshold=6.0, alpha=0.5) if kind == "if" else lif_attrs(f32(0.3), f32(0.3), 1.0, f32(0.05))
    op = "DSRIFSpike" if kind == "if" else "DSRLIFSpike"
    x = (np.random.default_rng(1).standard_normal((20, 8, 4097)) * (4 if kind == "if" else 1)).astype(np.float32)
    ref = reference(kind, x, attrs)[0]
    for threads in (1, 2):
        (y,) = session(dsr_node_model(op, attrs), threads).run(None, {"x": x})
        assert_bits(y, ref, f"{kind} threads={threads}")


@pytest.mark.parametrize("kind", ["if", "lif"])
def test_step_ops_chain_equals_sequence(kind):
    attrs = dict(v_threshold=1.0, alpha=0.5) if kind == "if" else lif_attrs(f32(0.3), f32(0.3), 1.0, f32(0.05))
    op = "DSRIFStep" if kind == "if" else "DSRLIFStep"
    x = (np.random.default_rng(2).standard_normal((9, 2, 5, 3)) * 2).astype(np.float32)
    v0 = np.random.default_rng(3).standard_normal((2, 5, 3)).astype(np.float32)
    sess = session(dsr_node_model(op, attrs, step=True))
    v, ys = v0, []
    for t in range(x.shape[0]):
        y_t, v = sess.run(None, {"x": x[t], "v": v})
        ys.append(y_t)
    ref_y, ref_v = reference(kind, x, attrs, v0)
    assert_bits(np.stack(ys), ref_y, f"{op} outputs")
    assert_bits(v, ref_v, f"{op} final membrane")


def test_nan_inf_and_empty_time():
    attrs = dict(v_threshold=1.0, alpha=0.5)
    sess = session(dsr_node_model("DSRIFSpike", attrs))
    x = np.random.default_rng(4).standard_normal((6, 40)).astype(np.float32)
    x[0, :3] = np.nan
    x[1, 3:6] = np.inf
    x[2, 6:9] = -np.inf
    (y,) = sess.run(None, {"x": x})
    assert_bits(y, reference("if", x, attrs)[0], "NaN/inf")
    (y,) = sess.run(None, {"x": np.zeros((0, 4, 5), np.float32)})
    assert y.shape == (0, 4, 5)


def test_missing_attribute_is_a_clear_error():
    with pytest.raises(Exception, match="v_threshold and alpha are required"):
        session(dsr_node_model("DSRIFSpike", dict(alpha=0.5))).run(None, {"x": np.zeros((2, 3), np.float32)})


def test_step_shape_mismatch_is_a_clear_error():
    sess = session(dsr_node_model("DSRIFStep", dict(v_threshold=1.0, alpha=0.5), step=True))
    with pytest.raises(Exception, match="v has shape"):
        sess.run(None, {"x": np.zeros((2, 3), np.float32), "v": np.zeros((3, 2), np.float32)})


@pytest.mark.parametrize("kind", ["if", "lif"])
def test_float16_inputs(kind):
    # float16 x / y with a float32 membrane, as the reference computes float16 inputs.
    attrs = dict(v_threshold=1.0, alpha=0.5) if kind == "if" else lif_attrs(f32(0.3), f32(0.3), 1.0, f32(0.05))
    x = (np.random.default_rng(5).standard_normal((11, 3, 129)) * 2).astype(np.float16)
    name = "DSRIFSpike" if kind == "if" else "DSRLIFSpike"
    (y,) = session(dsr_node_model(name, attrs, elem=TensorProto.FLOAT16)).run(None, {"x": x})
    ref_y, ref_v = reference(kind, x, attrs)
    assert_bits(y, ref_y, f"{name} float16")
    step = session(dsr_node_model(name.replace("Spike", "Step"), attrs, step=True, elem=TensorProto.FLOAT16))
    v = np.zeros(x.shape[1:], np.float32)
    ys = []
    for t in range(x.shape[0]):
        y_t, v = step.run(None, {"x": x[t], "v": v})
        ys.append(y_t)
    assert_bits(np.stack(ys), ref_y, "float16 steps")
    assert_bits(v, ref_v, "float16 steps final membrane")
