"""ONNX export: one dsr node per neuron layer with its function fallback, Scan / unrolled bodies, the portable
lowering, dynamic batch and T, metadata, and numerics in a stock ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from export_nets import (
    NEURON_SHAPE,
    OURS_CONV_SHAPE,
    SJ_CONV_SHAPE,
    exported,
    ours_conv_net,
    ours_neuron_net,
    sj_conv_net,
    sj_neuron_net,
    spiky_input,
)

from dsr_deploy.convert import find_neurons
from dsr_deploy.export.onnx_writer import dsr_nodes

FACTORIES = {"sj_conv_net": (sj_conv_net, SJ_CONV_SHAPE), "ours_conv_net": (ours_conv_net, OURS_CONV_SHAPE),
             "sj_neuron_net": (sj_neuron_net, NEURON_SHAPE), "ours_neuron_net": (ours_neuron_net, NEURON_SHAPE)}


def _onnx(factory: str, **options):
    shape = FACTORIES[factory][1]
    # The default export (every format) is shared with the other test modules; variants export ONNX only.
    formats = ("torchscript", "onnx", "pt2") if not options else ("onnx",)
    return exported(factory, shape, formats=formats, **options) / "model.onnx"


def _session(path):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def _attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def test_function_lowering_structure():
    path = _onnx("sj_conv_net")
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    infos = find_neurons(sj_conv_net())
    nodes = dsr_nodes(model)
    # Exactly one node per neuron layer, in domain dsr, with the contract's op types.
    assert [n.op_type for n in nodes] == [i.op_type for i in infos] == ["DSRIFSpike", "DSRLIFSpike", "DSRIFSpike"]
    assert all(n.domain == "dsr" for n in nodes)
    assert sum(1 for n in model.graph.node if n.op_type in ("Scan", "Loop", "Greater", "GreaterOrEqual")) == 0
    assert {(f.domain, f.name) for f in model.functions} == {("dsr", "DSRIFSpike"), ("dsr", "DSRLIFSpike")}
    assert any(o.domain == "dsr" and o.version == 1 for o in model.opset_import)
    assert next(o.version for o in model.opset_import if o.domain == "") >= 17
    a0, a1 = _attrs(nodes[0]), _attrs(nodes[1])
    assert a0["v_threshold"] == np.float32(0.6)  # stored 0.25, below the bound: exported clamped
    assert a0["alpha"] == np.float32(0.5)
    assert a0["plugin_namespace"] == b"dsr" and a0["plugin_version"] == b"1"
    for key in ("tau", "delta_t", "decay", "gain"):
        assert a1[key] == np.float32(getattr(infos[1], key)), key
    assert a1["plugin_namespace"] == b"dsr" and a1["plugin_version"] == b"1"
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["dsr_deploy.T"] == "4" and meta["dsr_deploy.neurons"] == "3"
    assert meta["dsr_deploy.lowering"] == "function" and meta["dsr_deploy.input_layout"] == "TB..."
    assert "dsr_deploy.version" in meta
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == "input" and out.name == "output"
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["T", "batch", 3, 8, 8]


NEURON_CASES = [("sj_neuron_net", dict()), ("sj_neuron_net", dict(function_body="unrolled")),
                ("sj_neuron_net", dict(lowering="portable")), ("sj_neuron_net", dict(opset=17)),
                ("sj_neuron_net", dict(lowering="portable", function_body="unrolled")),
                ("ours_neuron_net", dict()), ("ours_neuron_net", dict(lowering="portable", function_body="unrolled"))]


@pytest.mark.parametrize("factory,options", NEURON_CASES, ids=[f"{f}-{o}" for f, o in NEURON_CASES])
def test_neuron_only_nets_bit_exact_in_stock_onnxruntime(factory, options):
    path = _onnx(factory, **options)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    if options.get("lowering") == "portable":
        assert not dsr_nodes(model) and not model.functions
        assert all(o.domain != "dsr" for o in model.opset_import)
    else:
        assert len(dsr_nodes(model)) == 2
    net = FACTORIES[factory][0]()
    sess = _session(path)
    T = NEURON_SHAPE[0]
    variants = [(T, 1), (T, 3), (T, 8)] + ([(T + 3, 3)] if options.get("function_body") != "unrolled" else [])
    for k, (t, b) in enumerate(variants):
        x = spiky_input((t, b) + NEURON_SHAPE[2:], seed=k)
        (y,) = sess.run(None, {"input": x})
        with torch.no_grad():
            ref = net(torch.from_numpy(x)).numpy()
        np.testing.assert_array_equal(y, ref)
        assert np.count_nonzero(ref)


def test_unrolled_body_has_static_T_scan_has_dynamic_T():
    scan = onnx.load(str(_onnx("sj_neuron_net")))
    unrolled = onnx.load(str(_onnx("sj_neuron_net", function_body="unrolled")))
    dim0 = lambda m: m.graph.input[0].type.tensor_type.shape.dim[0]  # noqa: E731
    assert dim0(scan).dim_param == "T"
    assert dim0(unrolled).dim_value == NEURON_SHAPE[0]
    assert {n.op_type for f in scan.functions for n in f.node} >= {"Scan"}
    assert {n.op_type for f in unrolled.functions for n in f.node} >= {"Split", "Concat"}
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument):  # "Got invalid dimensions for input"
        _session(_onnx("sj_neuron_net", function_body="unrolled")).run(
            None, {"input": spiky_input((NEURON_SHAPE[0] + 1,) + NEURON_SHAPE[1:])})


def test_static_batch():
    path = _onnx("sj_neuron_net", static_batch=True)
    model = onnx.load(str(path))
    assert model.graph.input[0].type.tensor_type.shape.dim[1].dim_value == NEURON_SHAPE[1]
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["dsr_deploy.dynamic_batch"] == "false"


@pytest.mark.parametrize("factory", ["sj_conv_net", "ours_conv_net"])
@pytest.mark.parametrize("lowering", ["function", "portable"])
def test_conv_nets_neurons_exact_on_ort_own_inputs(factory, lowering):
    # ORT may round convolutions differently from PyTorch depending on the CPU, so the end-to-end spikes are not
    # asserted. What holds everywhere: each neuron layer, given the input ORT itself computed for it (the probe's
    # currents_k), gives exactly the spikes the PyTorch training neuron gives for that input.
    from dsr_deploy.convert import find_neuron_modules
    from dsr_deploy.export.onnx_writer import add_probe_outputs

    net, shape = FACTORIES[factory]
    path = _onnx(factory, lowering=lowering)
    probe = add_probe_outputs(onnx.load(str(path)))
    names = [o.name for o in probe.graph.output]
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    model = net().eval()
    neurons = list(find_neuron_modules(model).values())
    for k, b in enumerate((1, 3, 8)):
        x = spiky_input((shape[0], b) + shape[2:], seed=k)
        outs = dict(zip(names, sess.run(None, {"input": x})))
        calls = [n for n in names if n.startswith("spikes_")]
        assert len(calls) == len(neurons)
        for j, neuron in enumerate(neurons):  # one call per layer in these nets, in layer order
            current, got = outs[f"currents_{j}"], outs[f"spikes_{j}"]
            with torch.no_grad():
                want = neuron(torch.from_numpy(current)).numpy()
            assert got.shape == want.shape and np.array_equal(got, want), (factory, lowering, b, j)


def test_dsr_nodes_run_on_the_ort_custom_op_library_bit_exact():
    # The node attributes are the contract the ONNX Runtime library (plugins branch) reads.
    from _native_util import ensure_ort_library

    from dsr_deploy.runtime import load_runner

    ensure_ort_library()  # no SDK needed: built here when missing
    path = _onnx("sj_neuron_net")
    net = sj_neuron_net()
    with load_runner(path, "onnxruntime", custom_ops="require") as runner:
        assert "custom-op library" in runner.describe()["dsr_ops"]
        for k, b in enumerate((1, 3, 8)):
            x = spiky_input((NEURON_SHAPE[0], b) + NEURON_SHAPE[2:], seed=k)
            with torch.no_grad():
                ref = net(torch.from_numpy(x)).numpy()
            np.testing.assert_array_equal(runner.infer({"input": x})["output"], ref)
