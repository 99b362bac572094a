"""``export --precision int8``: the Q/DQ graph (dsr_deploy/export/int8/) on tiny networks.

Structure (which tensors are quantised, spike scales = spike values with zero point 0, per-channel weight scales,
the analog first layer and the readout float32 by default), exactness of the spike quantisation in ONNX Runtime,
the same results with and without the custom-op library, and the calibration errors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from _cli_util import run_cli
from _native_util import ensure_ort_library
from onnx import numpy_helper

from dsr_deploy import functional as F
from dsr_deploy.errors import UserError
from dsr_deploy.export import Int8Options, export_model
from dsr_deploy.export.int8 import load_calibration, qparams, quantize_weight, spike_value
from dsr_deploy.neuron import DSRIFNode, DSRLIFNode
from dsr_deploy.runtime import load_runner

ort = pytest.importorskip("onnxruntime")

T, B = 4, 2
SHAPE = (T, B, 2, 6, 6)
LIF = dict(v_threshold=0.3, tau=1.0, delta_t=0.05, alpha=0.3)
IF = dict(v_threshold=0.5, alpha=0.5)


class Fold(torch.nn.Module):
    """A stateless layer on the folded [T*B, ...] batch."""

    def __init__(self, *mods):
        super().__init__()
        self.m = torch.nn.Sequential(*mods)

    def forward(self, x):
        y = self.m(x.flatten(0, 1))
        return y.reshape(x.shape[0], x.shape[1], *y.shape[1:])


def _net():
    torch.manual_seed(5)
    net = torch.nn.Sequential(
        Fold(torch.nn.Conv2d(2, 4, 3, padding=1)), DSRIFNode(T=None, **IF),                   # analog first layer
        Fold(torch.nn.Conv2d(4, 6, 3, padding=1), torch.nn.BatchNorm2d(6)), DSRLIFNode(T=None, **LIF),
        Fold(torch.nn.Conv2d(6, 5, 3, padding=1)), DSRIFNode(T=None, **IF),
        Fold(torch.nn.Flatten(), torch.nn.Linear(5 * 36, 3)), DSRIFNode(T=None, **IF),        # readout
    ).eval()
    with torch.no_grad():
        bn = net[2].m[1]
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 1.5)
        for conv in (net[0].m[0], net[2].m[0], net[4].m[0]):
            conv.weight.mul_(3.0)
        net[6].m[1].weight.mul_(8.0)
        net[6].m[1].bias.fill_(0.4)
    return net


def _calibration(n=6, seed=0):
    return (np.random.default_rng(seed).normal(size=(T, n, *SHAPE[2:])) * 2).astype(np.float32)


def int8_options(**kw):
    """Int8Options from export flags' names (int8_neuron=..., int8_all_layers=...)."""
    return Int8Options(**{k[5:] if k.startswith("int8_") else k: v for k, v in kw.items()})


def _export(tmp_path, name="e", **extra):
    manifest = export_model(_net(), SHAPE, tmp_path / name, formats=("onnx",), precision="int8",
                            int8=int8_options(calibration=_calibration(), **extra))
    return manifest, onnx.load(str(tmp_path / name / "model.onnx"))


def _inits(model):
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _producer(model):
    return {o: n for n in model.graph.node for o in n.output}


def test_graph_structure(tmp_path):
    manifest, model = _export(tmp_path)
    onnx.checker.check_model(model, full_check=True)
    art = manifest["artifacts"][0]
    assert art["precision"] == "int8" and manifest["dtype"] == "float32"
    q = art["quantization"]
    assert q["quantized_layers"] == 2 and sorted(q["float_layers"].values()) == ["analog input", "readout"]
    inits = _inits(model)
    prod = _producer(model)
    dsr = [n for n in model.graph.node if n.domain == "dsr"]
    assert [n.op_type for n in dsr] == ["DSRIFSpike", "DSRLIFSpike", "DSRIFSpike", "DSRIFSpike"]
    # Spikes of the neurons that feed a quantised layer: uint8, scale = the spike value, zero point 0.
    quantised_spikes = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] in {d.output[0] for d in dsr}:
            d = next(x for x in dsr if x.output[0] == node.input[0])
            scale, zp = inits[node.input[1]], inits[node.input[2]]
            assert zp.dtype == np.uint8 and int(zp) == 0
            assert scale.dtype == np.float32 and float(scale) == spike_value(d)
            quantised_spikes[d.op_type] = float(scale)
    assert quantised_spikes == {"DSRIFSpike": np.float32(0.5), "DSRLIFSpike": float(np.float32(0.3) / np.float32(0.05))}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    # The analog first conv and the readout keep float32 weights; the others read int8 per-channel weights.
    assert convs[0].input[1] in inits and inits[convs[0].input[1]].dtype == np.float32
    assert gemm.input[1] in inits and inits[gemm.input[1]].dtype == np.float32
    assert prod[convs[0].input[0]].op_type != "DequantizeLinear"
    for conv, cout in zip(convs[1:], (6, 5)):
        wdq = prod[conv.input[1]]
        assert wdq.op_type == "DequantizeLinear"
        codes, scales = inits[wdq.input[0]], inits[wdq.input[1]]
        assert codes.dtype == np.int8 and scales.shape == (cout,) and codes.shape[0] == cout
        assert [a.i for a in wdq.attribute if a.name == "axis"] == [0]
        assert np.abs(codes).max() == 127
        bias = prod[conv.input[2]]
        assert inits[bias.input[0]].dtype == np.int32
        # Its input is dequantised spikes (through a Reshape) and its output (the current) is quantised.
        x = conv.input[0]
        while prod[x].op_type == "Reshape":
            x = prod[x].input[0]
        assert prod[x].op_type == "DequantizeLinear"
        consumers = [n for n in model.graph.node if conv.output[0] in n.input]
        assert [n.op_type for n in consumers] == ["QuantizeLinear"]
        assert inits[consumers[0].input[2]].dtype == np.uint8
    # Every neuron after a quantised layer reads a dequantised current; the first and last read float ones.
    for d, quantised in zip(dsr, (False, True, True, False)):
        x = d.input[0]
        while prod[x].op_type == "Reshape":
            x = prod[x].input[0]
        assert (prod[x].op_type == "DequantizeLinear") == quantised, d.name


def test_all_layers_option_quantises_the_analog_layer_and_readout(tmp_path):
    manifest, model = _export(tmp_path, int8_all_layers=True)
    assert manifest["artifacts"][0]["quantization"]["float_layers"] == {}
    prod = _producer(model)
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            assert prod[node.input[1]].op_type == "DequantizeLinear", node.name


def _with_outputs(model, names):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for n in names:
        m.graph.output.append(onnx.helper.make_empty_tensor_value_info(n))
    return m


@pytest.mark.parametrize("activations", ["uint8", "int8"])
def test_spike_quantisation_is_exact(tmp_path, activations):
    """In ONNX Runtime: each neuron's spikes, quantised to uint8 / int8 codes and dequantised, equal its float32
    spikes bit for bit, and those equal the reference neuron's given the (dequantised) input current it read.
    (The Q/DQ neuron form, explicitly: the TensorRT form's default is the quantised ops, tested further down.)"""
    _, model = _export(tmp_path, int8_activations=activations, int8_neuron="qdq")
    dsr = [n for n in model.graph.node if n.domain == "dsr"]
    dq_of = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":
            dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == node.output[0])
            dq_of[node.input[0]] = dq.output[0]
    names = [t for d in dsr for t in (d.input[0], d.output[0])] + [dq_of[d.output[0]] for d in dsr
                                                                   if d.output[0] in dq_of]
    names = [n for n in dict.fromkeys(names) if n != "output"]
    sess = ort.InferenceSession(_with_outputs(model, names).SerializeToString(), providers=["CPUExecutionProvider"])
    x = _calibration(n=3, seed=7)
    outs = dict(zip(["output"] + names, sess.run(["output"] + names, {"input": x})))
    checked = 0
    for d in dsr:
        cur = torch.from_numpy(outs[d.input[0]])
        if d.op_type == "DSRIFSpike":
            want, _ = F.if_forward(cur, IF["v_threshold"], IF["alpha"])
        else:
            want, _ = F.lif_forward(cur, LIF["v_threshold"], LIF["alpha"], LIF["tau"], LIF["delta_t"])
        got = outs[d.output[0]]
        assert np.array_equal(got.view(np.int32), want.numpy().view(np.int32)), d.name
        if d.output[0] in dq_of:
            deq = outs[dq_of[d.output[0]]]
            assert np.array_equal(deq.view(np.int32), got.view(np.int32)), d.name
            assert (got != 0).any() and (got == 0).any()
            checked += 1
    assert checked == 2


@pytest.mark.parametrize("activations", ["uint8", "int8"])
def test_custom_op_library_and_function_fallback_agree(tmp_path, activations):
    ensure_ort_library()
    _export(tmp_path, int8_activations=activations)
    x = _calibration(n=3, seed=11)
    outs = {}
    for mode in ("off", "require"):
        runner = load_runner(tmp_path / "e", backend="onnxruntime", custom_ops=mode).load()
        try:
            outs[mode] = runner.infer({"input": x})["output"]
        finally:
            runner.release()
    assert outs["off"].shape == (T, 3, 3)
    assert np.array_equal(outs["off"].view(np.int32), outs["require"].view(np.int32))


def test_int8_close_to_float32(tmp_path):
    """Not bit-exact (weights and currents are quantised) but the same network: most spikes agree."""
    _export(tmp_path)
    x = _calibration(n=4, seed=3)
    with torch.no_grad():
        want = _net()(torch.from_numpy(x)).numpy()
    runner = load_runner(tmp_path / "e", backend="onnxruntime", custom_ops="off").load()
    got = runner.infer({"input": x})["output"]
    runner.release()
    assert (got == want).mean() >= 0.8


def test_calibration_required_and_checked(tmp_path):
    with pytest.raises(UserError, match="--precision int8 needs calibration data: pass --calibration"):
        export_model(_net(), SHAPE, tmp_path / "a", formats=("onnx",), precision="int8")
    with pytest.raises(UserError, match=r"calibration data \(--calibration\) has shape \[4, 6, 3, 6, 6\]"):
        export_model(_net(), SHAPE, tmp_path / "b", formats=("onnx",), precision="int8",
                     int8=Int8Options(calibration=np.zeros((T, 6, 3, 6, 6), np.float32)))
    bad = _calibration()
    bad[0, 0, 0, 0, 0] = np.nan
    with pytest.raises(UserError, match="NaN"):
        export_model(_net(), SHAPE, tmp_path / "c", formats=("onnx",), precision="int8",
                     int8=Int8Options(calibration=bad))
    with pytest.raises(UserError, match="--precision int8 is written for onnx only"):
        export_model(_net(), SHAPE, tmp_path / "d", formats=("onnx", "torchscript"), precision="int8",
                     int8=Int8Options(calibration=_calibration()))
    with pytest.raises(UserError, match="ships no calibration data"):
        load_calibration(None, "zoo:cnn-small", SHAPE)
    assert not any((tmp_path / n).exists() for n in "abcd")


def test_calibration_file_and_zoo_default(tmp_path):
    np.save(tmp_path / "cal.npy", _calibration())
    assert load_calibration(tmp_path / "cal.npy", None, SHAPE).shape == (T, 6, *SHAPE[2:])
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(UserError, match="is not a readable .npy array"):  # read by dsr_deploy.input_files
        load_calibration(tmp_path / "bad.npy", None, SHAPE)
    digits = load_calibration(None, "zoo:digits-cnn", (8, 1, 1, 8, 8))
    assert digits.shape[0] == 8 and digits.shape[2:] == (1, 8, 8) and digits.shape[1] > 1000  # the training split
    assert load_calibration(None, "zoo:digits-cnn", (8, 1, 1, 8, 8), encode="direct").shape[1:] == (1, 8, 8)


def test_quantisation_helpers():
    w = np.array([[1.0, -2.0], [0.5, 0.25], [0.0, 0.0]], np.float32)
    codes, scales = quantize_weight(w, 0)
    assert codes.dtype == np.int8 and list(codes[0]) == [64, -127] and list(codes[1]) == [127, 64]
    assert np.allclose(scales, [2 / 127, 0.5 / 127, 1.0])
    v = np.random.default_rng(0).laplace(size=200000).astype(np.float32)  # light tails: MSE clips them
    scale, zp = qparams(v)
    assert 100 < zp < 155 and scale * (255 - zp) < 0.9 * float(v.max())
    scale, zp = qparams(np.linspace(-1, 3, 1021).astype(np.float32))  # uniform: the full range
    assert zp in (63, 64) and np.isclose(scale, 4 / 255, rtol=0.01)
    assert qparams(np.zeros(10, np.float32)) == (1.0, 0)


def _stream(folder, manifest, x):
    """The streaming export in ``folder`` fed ``x`` ([T, B, ...]) one step at a time from zero membranes."""
    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    states = manifest["states"]
    v = {s["input"]: np.zeros((x.shape[1], *s["shape"]), np.float32) for s in states}
    got = []
    for step in x:
        outs = sess.run([manifest["outputs"][0]] + [s["output"] for s in states], {manifest["inputs"][0]: step, **v})
        got.append(outs[0])
        v = {s["input"]: o for s, o in zip(states, outs[1:])}
    return np.stack(got)


def test_streaming_int8_step_equals_multistep_int8(tmp_path):
    from dsr_deploy.export import export_model

    cal = _calibration()
    export_model(_net(), SHAPE, tmp_path / "m", formats=("onnx",), precision="int8",
                 int8=Int8Options(calibration=cal))
    manifest = export_model(_net(), SHAPE, tmp_path / "s", mode="streaming", formats=("onnx",), precision="int8",
                                int8=Int8Options(calibration=cal))
    art = manifest["artifacts"][0]
    assert art["precision"] == "int8" and art["quantization"]["quantized_layers"] == 2
    step = onnx.load(str(tmp_path / "s" / "model.onnx"))
    assert any(n.op_type == "QuantizeLinear" for n in step.graph.node)
    x = _calibration(n=3, seed=9)
    multi = ort.InferenceSession(str(tmp_path / "m" / "model.onnx"), providers=["CPUExecutionProvider"])
    want = multi.run(["output"], {"input": x})[0]
    got = _stream(tmp_path / "s", manifest, x)
    assert (want != 0).any()
    assert np.array_equal(got.view(np.int32), want.view(np.int32))
    with pytest.raises(UserError, match="needs calibration data"):
        export_model(_net(), SHAPE, tmp_path / "s2", mode="streaming", formats=("onnx",), precision="int8")


def test_cli_int8_export_errors_and_bench_compare(tmp_path, capsys):
    code, _, err = run_cli(capsys, "export", "zoo:mlp", "--format", "onnx", "--precision", "int8",
                        "--input-shape", "2,1,1,28,28", "--out", str(tmp_path / "x"))
    assert code == 2 and "needs calibration data" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "export", "zoo:mlp", "--format", "onnx", "--calibration", str(tmp_path / "c.npy"),
                        "--out", str(tmp_path / "y"))
    assert code == 2 and "apply to --precision int8" in err
    code, _, err = run_cli(capsys, "export", "zoo:digits-cnn", "--format", "onnx", "--precision", "int8",
                           "--int8-neuron", "int4", "--out", str(tmp_path / "z"))
    assert code == 2 and "unknown --int8-neuron" in err
    _export(tmp_path, "q")
    export_model(_net(), SHAPE, tmp_path / "f", formats=("onnx",))
    code, out, _ = run_cli(capsys, "bench", str(tmp_path / "f"), "--compare", str(tmp_path / "q"), "--backend",
                        "onnxruntime", "--batch", "1", "--iters", "1", "--warmup", "0", "--no-memcpy")
    assert code == 0
    assert "onnxruntime (float32)" in out and "onnxruntime (int8)" in out


@pytest.mark.parametrize("activations", ["uint8", "int8"])
def test_quantized_neuron_ops_match_qdq_around_the_float_op(tmp_path, activations):
    """``int8_neuron="quantized"``: DSRIFSpikeQ / DSRLIFSpikeQ take the current codes (uint8, or int8) and give spike
    codes of that type (no DequantizeLinear before, no QuantizeLinear after); the custom-op library and the function
    body give the Q/DQ-around-the-float-op model's outputs bit for bit."""
    ensure_ort_library()
    _export(tmp_path, "qdq", int8_activations=activations)
    manifest, model = _export(tmp_path, "qop", int8_neuron="quantized", int8_activations=activations)
    assert manifest["artifacts"][0]["quantization"]["neuron"] == "quantized"
    prod = _producer(model)
    inits = _inits(model)
    qops = [n for n in model.graph.node if n.op_type.endswith("SpikeQ")]
    assert sorted(n.op_type for n in qops) == ["DSRIFSpikeQ", "DSRLIFSpikeQ"]
    assert {f.name for f in model.functions} >= {"DSRIFSpikeQ", "DSRLIFSpikeQ"}
    for n in qops:
        x = n.input[0]
        while prod[x].op_type == "Reshape":
            x = prod[x].input[0]
        assert prod[x].op_type == "QuantizeLinear"
        consumers = [c for c in model.graph.node if n.output[0] in c.input]
        assert consumers and all(c.op_type == "DequantizeLinear" for c in consumers)
        assert all(float(inits[c.input[1]]) == spike_value(n) and int(inits[c.input[2]]) == 0 for c in consumers)
        assert all(inits[c.input[2]].dtype == np.dtype(activations) for c in consumers)
        assert inits[n.input[2]].dtype == np.dtype(activations)
    x = _calibration(n=3, seed=5)
    outs = {}
    for name, mode in (("qdq", "off"), ("qop", "off"), ("qop", "require")):
        runner = load_runner(tmp_path / name, backend="onnxruntime", custom_ops=mode).load()
        try:
            outs[(name, mode)] = runner.infer({"input": x})["output"]
        finally:
            runner.release()
    want = outs[("qdq", "off")]
    assert (want != 0).any()
    for k, got in outs.items():
        assert np.array_equal(got.view(np.int32), want.view(np.int32)), k
    with pytest.raises(UserError, match="unknown --int8-neuron"):
        _export(tmp_path, "bad", int8_neuron="int4")


@pytest.mark.parametrize("custom_ops, activations", [("off", "uint8"), ("require", "uint8"), ("require", "int8")])
def test_verify_checks_the_quantized_neuron_ops_and_catches_a_tampered_one(tmp_path, custom_ops, activations):
    """verify's teacher-forced check on ``--int8-neuron quantized``: each quantised op is run alone on the
    reference's current (quantised with the op's own scale) and compared with the reference neuron fed the current
    the op integrated; exact. One op's spike scale off by one ulp, or its threshold moved, fails that layer only."""
    from dsr_deploy.export.onnx_neurons import neuron_sites
    from dsr_deploy.verify import Reference, Run
    from dsr_deploy.verify.checks import run_neuron_check

    if custom_ops == "require":
        ensure_ort_library()
    _, model = _export(tmp_path, "qop", int8_neuron="quantized", int8_activations=activations)
    quantized = [s for s in neuron_sites(model) if s.quantized]
    assert len(quantized) == 2
    ref = Reference(_net())
    x = _calibration(n=3, seed=7)
    out, calls = ref.run(x)
    infos = {n.index: n for n in ref.infos}

    def check(path):
        run = Run("model.onnx", "onnx", "onnxruntime", precision="int8")
        with load_runner(path, backend="onnxruntime", custom_ops=custom_ops) as runner:
            run_neuron_check(run, runner, [("x", x, out, calls)], infos, ref.neurons())
        assert run.neuron_checked, run.neuron_note
        return {layer.index: layer for layer in run.layers}

    layers = check(tmp_path / "qop" / "model.onnx")
    assert all(layer.neuron_equal == layer.neuron_total > 0 for layer in layers.values())
    target = next(n for n in model.graph.node if n.op_type == "DSRLIFSpikeQ")
    layer = next(s.layer for s in quantized if s.node == target.name)
    # The spike value lives in the DequantizeLinear after the op: one ulp off there changes every spike's value.
    scale = next(c.input[1] for c in model.graph.node
                 if c.op_type == "DequantizeLinear" and target.output[0] in c.input)
    tampered = onnx.ModelProto()
    tampered.CopyFrom(model)
    init = next(i for i in tampered.graph.initializer if i.name == scale)
    value = numpy_helper.to_array(init)
    init.CopyFrom(numpy_helper.from_array(np.nextafter(value, np.float32(np.inf)).astype(np.float32), scale))
    onnx.save(tampered, str(tmp_path / "scale.onnx"))
    layers = check(tmp_path / "scale.onnx")
    assert [i for i, la in layers.items() if la.neuron_equal != la.neuron_total] == [layer]
    # A threshold moved by 5 %: the op fires at other steps than the reference neuron.
    for a in target.attribute:
        if a.name == "v_threshold":
            a.f = float(np.float32(a.f * 1.05))
    onnx.save(model, str(tmp_path / "threshold.onnx"))
    layers = check(tmp_path / "threshold.onnx")
    assert [i for i, la in layers.items() if la.neuron_equal != la.neuron_total] == [layer]


# ---- --int8-activations int8: the signed, symmetric form TensorRT takes -------------------------------------------

def test_signed_activations_are_int8_symmetric_and_tensorrt_valid(tmp_path):
    """Every activation Q/DQ is int8 with zero point 0 (currents: a calibrated scale; spikes: scale = the spike
    value), weights int8 per channel, biases float32 (TensorRT's DequantizeLinear takes no int32), the manifest
    records it and validates, and build-engine's check finds nothing to refuse; the uint8 export it refuses."""
    from dsr_deploy.engine import tensorrt_quantization_problem
    from dsr_deploy.manifest import read_manifest

    manifest, model = _export(tmp_path, int8_activations="int8")
    onnx.checker.check_model(model, full_check=True)
    q = manifest["artifacts"][0]["quantization"]
    assert q["activations"] == "int8" and q["quantized_layers"] == 2
    assert read_manifest(tmp_path / "e")["artifacts"][0]["quantization"]["activations"] == "int8"
    inits = _inits(model)
    dsr_out = {n.output[0]: n for n in model.graph.node if n.domain == "dsr"}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(qdq) >= 8
    currents = 0
    for n in qdq:
        assert len(n.input) == 3, n.name
        zp, scale = inits[n.input[2]], inits[n.input[1]]
        assert zp.dtype == np.int8 and not zp.any(), n.name
        assert n.input[0] not in inits or inits[n.input[0]].dtype == np.int8, n.name  # no int32 bias DQ
        if n.op_type == "QuantizeLinear" and n.input[0] in dsr_out:
            assert float(scale) == spike_value(dsr_out[n.input[0]])
        elif n.op_type == "QuantizeLinear":
            currents += 1
            assert scale.dtype == np.float32 and scale.shape == () and 0 < float(scale) < 10
    assert currents == q["currents"] == 2
    for conv in (n for n in model.graph.node if n.op_type == "Conv"):
        assert conv.input[2] in inits and inits[conv.input[2]].dtype == np.float32
    assert tensorrt_quantization_problem(model) is None
    _, unsigned = _export(tmp_path, "u")
    assert "uses uint8 codes" in tensorrt_quantization_problem(unsigned)


def test_manifest_refuses_an_unknown_activation_type(tmp_path):
    import json

    from dsr_deploy.manifest import read_manifest

    _export(tmp_path, int8_activations="int8")
    path = tmp_path / "e" / "manifest.json"
    m = json.loads(path.read_text())
    m["artifacts"][0]["quantization"]["activations"] = "int4"
    path.write_text(json.dumps(m))
    with pytest.raises(UserError, match=r"quantization\.activations: expected one of uint8, int8"):
        read_manifest(tmp_path / "e")


def test_signed_qparams_are_symmetric_mse():
    v = np.random.default_rng(0).laplace(size=200000).astype(np.float32)
    scale, zp = qparams(v, signed=True)
    assert zp == 0 and scale * 127 < 0.9 * float(np.abs(v).max())  # light tails: MSE clips them
    scale, zp = qparams(np.linspace(-1, 3, 1021).astype(np.float32), signed=True)  # uniform: the full range
    assert zp == 0 and np.isclose(scale, 3 / 127, rtol=0.01)
    assert qparams(np.zeros(10, np.float32), signed=True) == (1.0, 0)


def test_signed_int8_is_verified_teacher_forced(tmp_path):
    """``dsr-deploy verify`` on a signed export: every neuron equal to the reference given its input (both
    neuron forms; the quantised ops through the custom-op library and through their function body)."""
    from dsr_deploy.export.onnx_neurons import neuron_sites
    from dsr_deploy.verify import Reference, Run
    from dsr_deploy.verify.checks import run_neuron_check

    ensure_ort_library()
    ref = Reference(_net())
    x = _calibration(n=2, seed=4)
    out, calls = ref.run(x)
    infos = {n.index: n for n in ref.infos}
    for name, neuron in (("qdq", "qdq"), ("qop", "quantized")):
        _, model = _export(tmp_path, name, int8_activations="int8", int8_neuron=neuron)
        assert sum(s.quantized for s in neuron_sites(model)) == (2 if neuron == "quantized" else 0)
        for custom_ops in ("off", "require"):
            run = Run("model.onnx", "onnx", "onnxruntime", precision="int8")
            with load_runner(tmp_path / name, backend="onnxruntime", custom_ops=custom_ops) as runner:
                run_neuron_check(run, runner, [("x", x, out, calls)], infos, ref.neurons())
            assert run.neuron_checked, run.neuron_note
            assert len(run.layers) == 4
            assert all(la.neuron_equal == la.neuron_total > 0 for la in run.layers), (name, custom_ops)


def test_streaming_signed_int8_step_equals_multistep_signed_int8(tmp_path):
    from dsr_deploy.export import export_model

    cal = _calibration()
    opts = {"calibration": cal, "activations": "int8"}
    export_model(_net(), SHAPE, tmp_path / "m", formats=("onnx",), precision="int8", int8=Int8Options(**opts))
    manifest = export_model(_net(), SHAPE, tmp_path / "s", mode="streaming", formats=("onnx",), precision="int8",
                                int8=Int8Options(**opts))
    assert manifest["artifacts"][0]["quantization"]["activations"] == "int8"
    step = onnx.load(str(tmp_path / "s" / "model.onnx"))
    zps = [i for i in step.graph.initializer if i.name.endswith("_zp") and not i.name.startswith("int8_onnx")]
    assert zps and all(z.data_type == onnx.TensorProto.INT8 and not numpy_helper.to_array(z).any() for z in zps)
    x = _calibration(n=3, seed=9)
    want = ort.InferenceSession(str(tmp_path / "m" / "model.onnx"),
                                providers=["CPUExecutionProvider"]).run(["output"], {"input": x})[0]
    got = _stream(tmp_path / "s", manifest, x)
    assert (want != 0).any()
    assert np.array_equal(got.view(np.int32), want.view(np.int32))


def test_cli_int8_activations_option(tmp_path, capsys):
    code, _, err = run_cli(capsys, "export", "zoo:mlp", "--format", "onnx", "--int8-activations", "int8",
                           "--out", str(tmp_path / "a"))
    assert code == 2 and "apply to --precision int8" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "export", "zoo:digits-cnn", "--format", "onnx", "--precision", "int8",
                           "--int8-activations", "int4", "--out", str(tmp_path / "b"))
    assert code == 2 and "unknown --int8-activations 'int4'; choose from uint8, int8" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    code, out, err = run_cli(capsys, "export", "zoo:digits-cnn", "--format", "onnx", "--precision", "int8",
                             "--int8-activations", "int8", "--input-shape", "4,1,1,8,8", "--json",
                             "--out", str(tmp_path / "c"))
    assert code == 0, err
    import json

    assert json.loads(out)["artifacts"][0]["quantization"]["activations"] == "int8"


def test_signed_activations_and_the_onnx_runtime_layout_are_exclusive():
    """``--int8-layout nhwc`` (ONNX Runtime's channels-last int8 graph, another branch) with the TensorRT form: one
    line asking to choose."""
    cal = _calibration()
    with pytest.raises(UserError, match="--int8-activations int8 is the TensorRT form.*choose one"):
        Int8Options(cal, activations="int8", layout="nhwc").resolved()
    with pytest.raises(UserError, match="--int8-activations int8 is the TensorRT form.*choose one"):
        Int8Options(cal, activations="int8").resolved("onnxruntime-cpu")  # the target's nhwc with the flag's int8
    assert Int8Options(cal, activations="int8").resolved().activations == "int8"


def test_tensorrt_form_defaults_to_the_quantised_neuron_ops(tmp_path, capsys):
    """--int8-activations int8 (the TensorRT form) without --int8-neuron: the quantised neuron ops (input -> Q ->
    plugin -> DQ: TensorRT never fuses a float node between Q and DQ into a plugin); uint8 keeps qdq; an explicit
    --int8-neuron is kept either way. Before: qdq for both."""
    cal = _calibration()
    assert Int8Options(cal, activations="int8").resolved().neuron == "quantized"
    assert Int8Options(cal).resolved().neuron == "qdq"
    assert Int8Options(cal, activations="int8", neuron="qdq").resolved().neuron == "qdq"
    manifest, model = _export(tmp_path, int8_activations="int8")
    q = manifest["artifacts"][0]["quantization"]
    assert q["neuron"] == "quantized" and q["quantized_neurons"] == 2
    assert {n.op_type for n in model.graph.node if n.domain == "dsr"} >= {"DSRIFSpikeQ"}
    code, _, err = run_cli(capsys, "export", "zoo:mlp", "--format", "onnx", "--int8-neuron", "qdq",
                           "--out", str(tmp_path / "a"))
    assert code == 2 and "apply to --precision int8" in err
