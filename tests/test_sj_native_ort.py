"""The ONNX Runtime custom-op library's SpikingJelly kernels (SJIFSpike / SJLIFSpike / SJPLIFSpike and the Step ops,
plugins/onnxruntime/dsr_ort_ops.cpp over plugins/core/dsr_sj_cpu.cpp) against dsr_deploy.functional.sj_forward, and
the function bodies (standard ops) against the same reference. The models carry no function for the library test,
so only the library's kernel can run them."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

from dsr_deploy import functional as F
from dsr_deploy import ops
from dsr_deploy.contract import DOMAIN, ORT_OPS_LIBRARY, SJ_SPIKE_OP_TYPES, SJ_STEP_OP_TYPES
from dsr_deploy.export.onnx_functions import function_proto, step_function_proto

ort = pytest.importorskip("onnxruntime")
CHARGE_KIND = {"if": "sj_if", "lif": "sj_lif", "plif": "sj_plif"}


def attrs(family, vth, v_reset, leak, decay_input):
    a = {"v_threshold": vth, "v_reset": 0.0 if v_reset is None else v_reset, "hard_reset": int(v_reset is not None)}
    if family != "if":
        a.update(leak=leak, decay_input=int(decay_input))
    return a


def model(family, a, step: bool, with_function: bool):
    kind = CHARGE_KIND[family]
    if step:
        node = helper.make_node(SJ_STEP_OP_TYPES[kind], ["x_t", "v"], ["y_t", "v_new"], domain=DOMAIN, **a)
        ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["B", "N"]) for n in ("x_t", "v")]
        outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["B", "N"]) for n in ("y_t", "v_new")]
        fns = [step_function_proto(kind, SJ_STEP_OP_TYPES[kind], 18)] if with_function else []
    else:
        node = helper.make_node(SJ_SPIKE_OP_TYPES[kind], ["x"], ["y"], domain=DOMAIN, **a)
        ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "B", "N"])]
        outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", "B", "N"])]
        fns = [function_proto(kind, "scan", 18)] if with_function else []
    g = helper.make_graph([node], "sj", ins, outs)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, 1)],
                          functions=fns)
    m.ir_version = 10
    return m.SerializeToString()


def session(data: bytes, library):
    so = ort.SessionOptions()
    if library is not None:
        so.register_custom_ops_library(str(library))
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def cases():
    gen = torch.Generator().manual_seed(21)
    for family, reset, decay_input in itertools.product(("if", "lif", "plif"), ("soft", "hard"), (True, False)):
        if family == "if" and not decay_input:
            continue
        vth = float(np.float32(torch.empty(()).uniform_(0.2, 2.0, generator=gen)))
        v_reset = None if reset == "soft" else float(np.float32(torch.empty(()).uniform_(-0.5, 0.3, generator=gen)))
        leak = float(np.float32(torch.empty(()).uniform_(1.1, 6.0, generator=gen))) if family == "lif" else \
            float(np.float32(torch.empty(()).uniform_(0.05, 0.95, generator=gen)))
        x = torch.randn(7, 3, 700, generator=gen) * vth * 2
        x[0, 0, :9] = vth
        yield family, v_reset, leak, decay_input, vth, x


@pytest.mark.parametrize("with_library", [True, False], ids=["custom-op library", "function body"])
def test_ort_sj_ops_match_reference(with_library):
    library = ops.find_library(ORT_OPS_LIBRARY) if with_library else None
    if with_library and library is None:
        pytest.skip(f"{ORT_OPS_LIBRARY} not built (dsr-deploy plugins build)")
    for family, v_reset, leak, decay_input, vth, x in cases():
        a = attrs(family, vth, v_reset, leak, decay_input)
        want, v_final = F.sj_forward(x, family, vth, v_reset, leak, decay_input, None, True)
        sess = session(model(family, a, step=False, with_function=not with_library), library)
        got = sess.run(None, {"x": x.numpy()})[0]
        assert np.array_equal(got, want.numpy()), (family, v_reset, decay_input)
        step = session(model(family, a, step=True, with_function=not with_library), library)
        v = np.full(x.shape[1:], 0.0 if v_reset is None else v_reset, dtype=np.float32)
        for t in range(x.shape[0]):
            y_t, v = step.run(None, {"x_t": x[t].numpy(), "v": v})
            assert np.array_equal(y_t, want[t].numpy()), (family, v_reset, decay_input, t)
        assert np.array_equal(v, v_final.numpy())


def test_ort_library_refuses_missing_attributes():
    library = ops.find_library(ORT_OPS_LIBRARY)
    if library is None:
        pytest.skip(f"{ORT_OPS_LIBRARY} not built (dsr-deploy plugins build)")
    bad = model("lif", {"v_threshold": 1.0, "v_reset": 0.0, "hard_reset": 0}, step=False, with_function=False)
    with pytest.raises(Exception, match="leak and decay_input are required"):
        session(bad, library).run(None, {"x": np.zeros((2, 3), np.float32)})
