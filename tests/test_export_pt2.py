"""pt2 export: torch.export program with one dsr op per neuron call, dynamic T and batch, bit-exact; and one
AOTInductor package (compiling takes ~30-60 s on 2 cores, so only one tiny model)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from export_nets import NEURON_SHAPE, SJ_CONV_SHAPE, exported, ours_neuron_net, sj_conv_net, sj_neuron_net, spiky_input

import dsr_deploy.ops  # noqa: F401  (registers torch.ops.dsr before loading a program)


@pytest.mark.parametrize("factory,model_fn,shape", [("sj_conv_net", sj_conv_net, SJ_CONV_SHAPE),
                                                    ("sj_neuron_net", sj_neuron_net, NEURON_SHAPE)])
def test_pt2_program_dynamic_and_bit_exact(factory, model_fn, shape):
    folder = exported(factory, shape)
    art = next(a for a in json.loads((folder / "manifest.json").read_text())["artifacts"] if a["format"] == "pt2")
    assert art["dynamic_T"] and art["dynamic_batch"]
    ep = torch.export.load(str(folder / "model.pt2"))
    calls = [n.target for n in ep.graph.nodes if n.op == "call_function" and str(n.target).startswith("dsr.")]
    n_neurons = len(json.loads((folder / "manifest.json").read_text())["neurons"])
    assert len(calls) == n_neurons == art["dsr_nodes"]  # one op per neuron layer, not an unrolled loop
    module = ep.module()
    model = model_fn()
    for k, (T, B) in enumerate([(shape[0], 1), (shape[0], 3), (shape[0], 8), (shape[0] + 2, 3)]):
        x = torch.from_numpy(spiky_input((T, B) + tuple(shape[2:]), seed=k))
        with torch.no_grad():
            assert torch.equal(module(x), model(x))


@pytest.mark.slow
def test_aot_inductor_package_loads_and_is_bit_exact():
    folder = exported("ours_neuron_net", NEURON_SHAPE, formats=("pt2",), aot=True)
    arts = {a["format"]: a for a in json.loads((folder / "manifest.json").read_text())["artifacts"]}
    assert set(arts) == {"pt2", "aoti"}
    runner = torch._inductor.aoti_load_package(str(folder / arts["aoti"]["path"]))
    model = ours_neuron_net()
    for k, (T, B) in enumerate([(NEURON_SHAPE[0], 1), (NEURON_SHAPE[0], 3), (NEURON_SHAPE[0] + 1, 8)]):
        x = torch.from_numpy(spiky_input((T, B) + NEURON_SHAPE[2:], seed=k))
        got = runner(x)
        got = got[0] if isinstance(got, (list, tuple)) else got
        with torch.no_grad():
            ref = model(x)
        # Neurons and elementwise ops only: the dsr op runs the same kernel; inductor's fused
        # elementwise code must round the same as eager.
        np.testing.assert_array_equal(got.numpy(), ref.numpy())


def test_example_shape_with_T_and_batch_of_one_still_exports_dynamic():
    # torch.export cannot keep a dimension of size 1 symbolic; the writers trace with 2 and stay dynamic.
    import onnxruntime as ort

    folder = exported("sj_neuron_net", (1, 1) + NEURON_SHAPE[2:], formats=("onnx", "pt2"))
    model = sj_neuron_net()
    module = torch.export.load(str(folder / "model.pt2")).module()
    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    for k, (T, B) in enumerate([(1, 1), (3, 4)]):
        x = torch.from_numpy(spiky_input((T, B) + NEURON_SHAPE[2:], seed=k))
        with torch.no_grad():
            ref = model(x)
        assert torch.equal(module(x), ref)
        np.testing.assert_array_equal(sess.run(None, {"input": x.numpy()})[0], ref.numpy())
