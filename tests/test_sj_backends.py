"""Issue 25's acceptance matrix in every backend available here: for each SpikingJelly family (IFNode, LIFNode,
ParametricLIFNode) x reset (soft, hard) x decay_input (LIF / PLIF), with random v_threshold, v_reset, tau and a
trained-looking w, and inputs exactly at the threshold, one multi-step forward of a network holding that node is
bit-exact against SpikingJelly 2.0's torch reference (``spikingjelly/_ops/*/reference.py``):

* float32 and float64: the dsr op in eager PyTorch (native CPU kernel when built), the scripted reference loop;
* float32: the exported TorchScript, pt2 and ONNX artifacts, ONNX run as the function fallback and with the
  custom-op library and as the portable lowering, and the streaming export stepped over T (ONNX Runtime and
  TorchScript; the membranes start where the manifest says: v_reset for a hard reset).

ONNX has no float64 activations here (the dsr op type constraint is float32 / float16 / bfloat16), so the float64
rows are PyTorch's. The CUDA kernel (host-emulated, tests/test_sj_cuda.py) and the TensorRT plugins (emulated
enqueue, tests/test_native_trt.py) have their own matrices; the ORT kernels on hand-made nodes
tests/test_sj_native_ort.py."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from dsr_deploy import convert, plugins
from dsr_deploy.export import export_model
from dsr_deploy.runtime import load_runner
from dsr_deploy.runtime.stream import StreamSession

sj_neuron = pytest.importorskip("spikingjelly.activation_based.neuron", reason="SpikingJelly 2.0 (the test oracle)")
ref_if = pytest.importorskip("spikingjelly._ops.if_.reference")
ref_lif = pytest.importorskip("spikingjelly._ops.lif.reference")
ref_plif = pytest.importorskip("spikingjelly._ops.plif.reference")
from spikingjelly.activation_based import functional as sjf  # noqa: E402

T, SHAPE = 8, (2, 37)
CASES = [c for c in itertools.product(("if", "lif", "plif"), ("soft", "hard"), (True, False))
         if not (c[0] == "if" and not c[2])]


def _id(case) -> str:
    family, reset, decay_input = case
    return f"{family}-{reset}" + ("" if family == "if" else f"-decay_input={decay_input}")


def heaviside(x):
    return (x >= 0).to(x.dtype)


def make_case(case, seed: int):
    """(net, oracle(x) -> spikes, x float64): a one-neuron-layer SJ network with random parameters."""
    family, reset, decay_input = case
    gen = torch.Generator().manual_seed(seed)
    vth = float(np.float32(torch.empty(()).uniform_(0.2, 2.0, generator=gen)))
    v_reset = None if reset == "soft" else float(np.float32(torch.empty(()).uniform_(-0.5, 0.3, generator=gen)))
    tau = float(np.float32(torch.empty(()).uniform_(1.1, 6.0, generator=gen)))
    if family == "if":
        node = sj_neuron.IFNode(v_threshold=vth, v_reset=v_reset)
    elif family == "lif":
        node = sj_neuron.LIFNode(tau=tau, decay_input=decay_input, v_threshold=vth, v_reset=v_reset)
    else:
        node = sj_neuron.ParametricLIFNode(init_tau=2.0, decay_input=decay_input, v_threshold=vth, v_reset=v_reset)
        with torch.no_grad():
            node.w.copy_(torch.empty(()).uniform_(-3.0, 3.0, generator=gen))  # a trained w
    net = torch.nn.Sequential(node)
    sjf.set_step_mode(net, "m")
    gain = {"if": 1.0, "lif": 1 / tau, "plif": float(node.w.detach().sigmoid()) if family == "plif" else 1.0}[family]
    x = torch.randn((T, *SHAPE), generator=gen, dtype=torch.float64) * vth * 2 / (gain if decay_input else 1.0)
    x[0, 0, :5] = vth  # at the threshold (an IF layer's first h is exactly vth: it fires)
    x[:, 1, :4] = vth / 2

    def oracle(xs: torch.Tensor) -> torch.Tensor:
        v0 = torch.full(xs.shape[1:], 0.0 if v_reset is None else v_reset, dtype=xs.dtype)
        if family == "if":
            return ref_if.multi_step(xs, v0, vth, v_reset, heaviside, True)[0]
        if family == "lif":
            return ref_lif.multi_step(xs, v0, tau, decay_input, vth, v_reset, heaviside, True)[0]
        return ref_plif.multi_step(xs, v0, node.w.detach(), decay_input, vth, v_reset, heaviside, True)[0]
    return net.eval(), oracle, x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_pytorch_paths_match_the_sj_reference(case, dtype):
    net, oracle, x = make_case(case, seed=CASES.index(case))
    x = x.to(dtype)
    want = oracle(x)
    assert want.any() and not want.all()
    with torch.no_grad():
        op = convert.inference_copy(net, "op")(x)
        scripted = torch.jit.script(convert.inference_copy(net, "script"))(x)
    assert op.dtype == dtype and torch.equal(op, want)
    assert torch.equal(scripted, want)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Per case: the multi-step export (TorchScript, ONNX with function fallback, pt2), the portable ONNX lowering
    and the streaming export (ONNX, TorchScript)."""
    root = tmp_path_factory.mktemp("sj_backends")
    out = {}
    for i, case in enumerate(CASES):
        net, oracle, x = make_case(case, seed=100 + i)
        d = root / _id(case)
        export_model(net, (T, *SHAPE), d / "multi", formats=("torchscript", "onnx", "pt2"))
        export_model(net, (T, *SHAPE), d / "portable", formats=("onnx",), lowering="portable")
        export_model(net, (T, *SHAPE), d / "stream", formats=("onnx", "torchscript"), mode="streaming")
        out[case] = (d, oracle, x.float())
    return out


def _variants():
    why = plugins.missing_reason("ort")
    lib = pytest.mark.skipif(why is not None, reason=f"dsr ORT custom-op library not built here: {why}")
    return [("multi", "torchscript", {}), ("multi", "pt2", {}), ("multi", "onnxruntime", {"custom_ops": "off"}),
            pytest.param("multi", "onnxruntime", {"custom_ops": "require"}, marks=lib),
            ("portable", "onnxruntime", {"custom_ops": "off"})]


@pytest.mark.parametrize("folder, backend, opts", _variants(),
                         ids=["torchscript", "pt2", "onnx-function", "onnx-custom-op", "onnx-portable"])
def test_exported_artifacts_match_the_sj_reference(exports, folder, backend, opts):
    for case, (d, oracle, x) in exports.items():
        want = oracle(x).numpy()
        with load_runner(d / folder, backend, **opts) as r:
            got = r.infer({r.inputs()[0].name: x.numpy()})
        assert np.array_equal(next(iter(got.values())), want), (_id(case), folder, backend, opts)


@pytest.mark.parametrize("backend", ["onnxruntime", "torchscript"])
def test_streaming_export_stepped_matches_the_sj_reference(exports, backend):
    for case, (d, oracle, x) in exports.items():
        with load_runner(d / "stream", backend) as r:
            got = StreamSession.from_manifest(r, d / "stream").run(x.numpy())
        assert np.array_equal(got, oracle(x).numpy()), (_id(case), backend)
