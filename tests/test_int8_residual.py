"""The residual path of int8 exports in int8 (dsr_deploy/export/int8/residual.py) and the first layer quantised by
default for ``--target onnxruntime-cpu``.

Structure: every BatchNorm fed by convolutions (or a residual Add of convolutions and spikes) folded, the shortcut
add ``com.microsoft.QLinearAdd`` in the channels-last form, Q/DQ around the Add in the portable / TensorRT form,
no float ``Conv`` / ``Add`` / ``BatchNormalization`` left in the CPU form. Fidelity: the channels-last file gives
the portable file's outputs bit for bit (same kernels on the same codes), the neurons are exact teacher-forced,
and verify's int8 rule (every layer's current within a few steps of its recorded scale) passes on a
pre-activation ResNet in the CPU target's form."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from _native_util import ensure_ort_library
from onnx import numpy_helper
from test_export_int8 import SHAPE, _calibration
from test_int8_layout import Net, assert_nhwc_equals_nchw

from dsr_deploy.engine import tensorrt_quantization_problem
from dsr_deploy.export import Int8Options, export_model
from dsr_deploy.export.int8.residual import fold_batchnorms

ort = pytest.importorskip("onnxruntime")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import authors_nets as A  # noqa: E402

NETS = Path(__file__).resolve().parent / "authors_nets.py"


def _export(tmp_path, name, target="onnxruntime-cpu", **kw):
    manifest = export_model(Net(), SHAPE, tmp_path / name, formats=("onnx",), precision="int8", target=target,
                            int8=Int8Options(calibration=_calibration(), **kw))
    return manifest["artifacts"][0]["quantization"], onnx.load(str(tmp_path / name / "model.onnx"))


def _ops(model):
    return [(n.domain, n.op_type) for n in model.graph.node]


def test_cpu_target_folds_the_batchnorms_and_quantises_the_add_and_first_layer(tmp_path):
    record, model = _export(tmp_path, "cpu")
    assert record["layout"] == "nhwc" and record["all_layers"] is True and record["float_layers"] == {}
    # bn1 after c1, bn2 after the residual Add (c2 + the spikes s0: a depthwise 1x1 scale on the spikes)
    assert record["folded_batchnorms"] == 2 and record["spike_scale_convs"] == 1
    ops = _ops(model)
    assert ops.count(("com.microsoft", "QLinearAdd")) == 1 and record["channels_last"]["qlinear_adds"] == 1
    # c0 (the analog first layer), c1, c2, the spike scale, c3
    # the three convolutions on spikes event-driven (dsr::SpikeQLinearConv, the same codes: tests/test_spike_conv.py)
    assert ops.count(("com.microsoft", "QLinearConv")) + ops.count(("dsr", "SpikeQLinearConv")) == 5 \
        == record["channels_last"]["qlinear_convs"]
    assert ops.count(("dsr", "SpikeQLinearConv")) == record["event_convs"] == 3
    assert not {op for _, op in ops} & {"BatchNormalization", "Add", "Conv"}, ops
    assert len([n for n in model.graph.node if n.op_type == "Transpose"]) == 2  # the input's, the readout's


def test_portable_and_tensorrt_forms_put_qdq_around_the_add(tmp_path):
    for target in ("portable", "tensorrt"):
        record, model = _export(tmp_path, target, target=target)
        assert record["all_layers"] is False and record["folded_batchnorms"] == 2
        g = {o: n for n in model.graph.node for o in n.output}
        add = [n for n in model.graph.node if n.op_type == "Add"]
        assert len(add) == 1 and not any(n.op_type == "BatchNormalization" for n in model.graph.node)
        assert all(g[i].op_type == "DequantizeLinear" for i in add[0].input), target
        users = [n for n in model.graph.node if add[0].output[0] in n.input]
        assert [n.op_type for n in users] == ["QuantizeLinear"], target
        zp = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}[users[0].input[2]]
        assert zp.dtype == (np.int8 if target == "tensorrt" else np.uint8) and (target != "tensorrt" or zp == 0)
        # the TensorRT form stays what its explicit quantisation takes (signed codes, zero points 0, float biases)
        assert (tensorrt_quantization_problem(model) is None) == (target == "tensorrt")


def test_cpu_form_gives_the_nchw_forms_outputs_bit_for_bit(tmp_path):
    ensure_ort_library()
    _export(tmp_path, "nhwc")
    _export(tmp_path, "nchw", layout="nchw")
    assert_nhwc_equals_nchw(tmp_path)


def _bn_graph(after_add: bool):
    """x -> Conv a (+ Conv b) -> BatchNorm -> y, float32, shapes recorded."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(3)
    c = 3
    arrays = {"wa": rng.normal(size=(c, 2, 3, 3)), "ba": rng.normal(size=c), "wb": rng.normal(size=(c, 2, 1, 1)),
              "s": rng.uniform(0.5, 1.5, c) * np.array([1, -1, 1]), "b": rng.normal(size=c),
              "m": rng.normal(size=c), "v": rng.uniform(0.5, 1.5, c)}
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in arrays.items()]
    nodes = [helper.make_node("Conv", ["x", "wa", "ba"], ["a"], pads=[1, 1, 1, 1])]
    bn_in = "a"
    if after_add:
        nodes += [helper.make_node("Conv", ["x", "wb"], ["bb"]), helper.make_node("Add", ["a", "bb"], ["r"])]
        bn_in = "r"
    nodes.append(helper.make_node("BatchNormalization", [bn_in, "s", "b", "m", "v"], ["y"], epsilon=1e-3))
    vi = lambda n, ch: helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, ch, 4, 4])  # noqa: E731
    graph = helper.make_graph(nodes, "g", [vi("x", 2)], [vi("y", c)], inits,
                              value_info=[vi(t, c) for t in ("a", "bb", "r")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("after_add", [False, True])
def test_folding_computes_the_same_function(after_add):
    """BN(conv_a + conv_b) == (g conv_a + shift) + g conv_b: the folded float32 graph, up to float rounding."""
    model = _bn_graph(after_add)
    x = np.random.default_rng(4).normal(size=(2, 2, 4, 4)).astype(np.float32)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(  # noqa
        None, {"x": x})[0]
    want = run(model)
    counts = fold_batchnorms(model)
    assert counts == {"folded_batchnorms": 1, "spike_scale_convs": 0, "batchnorm_convs": 0}
    assert "BatchNormalization" not in [n.op_type for n in model.graph.node]
    got = run(model)
    assert np.allclose(got, want, rtol=1e-5, atol=1e-5), np.abs(got - want).max()


def test_verify_int8_rule_passes_on_a_preact_resnet_in_the_cpu_form(tmp_path):
    """The authors' PreAct ResNet in the CPU target's form (BatchNorms folded or depthwise convs, QLinearAdd's
    Q/DQ, first layer quantised):
    every layer teacher-forced (nchw: verify cannot force the channels-last file's spike codes; it gives the same
    outputs bit for bit, above), spikes exact, every current within a few steps of its recorded scale."""
    from dsr_deploy.verify import verify_folder

    x = np.random.default_rng(1).standard_normal((32,) + A.CIFAR_SHAPE[1:]).astype(np.float32)
    folder = tmp_path / "resnet"
    manifest = export_model(A.resnet_lif(), A.CIFAR_SHAPE, folder, formats=("onnx",), spec=f"{NETS}:resnet_lif",
                            precision="int8", target="onnxruntime-cpu",
                            int8=Int8Options(calibration=x, layout="nchw"))
    record = manifest["artifacts"][0]["quantization"]
    # its shortcut adds the block's input (read by the BatchNorm too): that BatchNorm a depthwise 1x1 conv
    assert record["all_layers"] and record["quantized_neurons"] > 0
    assert record["folded_batchnorms"] == 1 and record["batchnorm_convs"] == 2
    model = onnx.load(str(folder / "model.onnx"))
    producer = {o: n for n in model.graph.node for o in n.output}
    assert "BatchNormalization" not in {n.op_type for n in model.graph.node} and record["float_layers"] == {}
    for conv in (n for n in model.graph.node if n.op_type == "Conv"):  # every one reads codes (through reshapes)
        src = producer[conv.input[0]]
        while src.op_type == "Reshape":
            src = producer[src.input[0]]
        assert src.op_type == "DequantizeLinear", conv.name
    report = verify_folder(folder, trust_model_code=True)
    assert report["passed"], [r["failures"] for r in report["runs"]]
    runs = [r for r in report["runs"] if r["format"] == "onnx" and r["status"] == "ok"]
    assert runs and all(r["defects"] == [] and "int8 currents within" in r["layer_check"] for r in runs)


def test_a_wide_analog_input_keeps_the_quantised_first_layer_within_verify_rule(tmp_path):
    """A calibrated (not spike) uint8 input can take codes up to 255; ONNX Runtime's u8s8 convolution on a CPU
    without VNNI adds two u8 x s8 products in a saturating int16, which 8-bit weights overflow (2 x 255 x 127). The
    layers with such an input get 7-bit weight codes (|code| <= 63: 2 x 255 x 63 fits), the spike-fed ones keep 8
    bits; the first layer of the authors' ResNet on a wide input (N(0, 2)) then passes verify's int8 rule (on an
    AVX2 CPU it was 22-48 steps off with 8-bit weights)."""
    from dsr_deploy.verify import verify_folder

    x = (2 * np.random.default_rng(4).standard_normal((24,) + A.CIFAR_SHAPE[1:])).astype(np.float32)
    folder = tmp_path / "wide"
    export_model(A.resnet_lif(), A.CIFAR_SHAPE, folder, formats=("onnx",), spec=f"{NETS}:resnet_lif",
                 precision="int8", target="onnxruntime-cpu", int8=Int8Options(calibration=x, layout="nchw"))
    model = onnx.load(str(folder / "model.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    peaks = {}
    for conv in (n for n in model.graph.node if n.op_type in ("Conv", "Gemm")):
        codes = inits[producer[conv.input[1]].input[0]]
        src = producer.get(conv.input[0])  # through reshapes and Q/DQ pairs: a dsr neuron's spikes?
        while src is not None and src.op_type in ("Reshape", "DequantizeLinear", "QuantizeLinear"):
            src = producer.get(src.input[0])
        spikes = src is not None and src.domain == "dsr"
        peaks.setdefault("spikes" if spikes else "calibrated", []).append(int(np.abs(codes).max()))
    assert peaks["calibrated"] and max(peaks["calibrated"]) <= 63, peaks
    assert peaks["spikes"] and max(peaks["spikes"]) == 127, peaks
    report = verify_folder(folder, trust_model_code=True)
    assert report["passed"], [r["failures"] for r in report["runs"]]


def test_fold_leaves_a_batchnorm_it_cannot_fold():
    """A BatchNorm on the graph input (no convolution feeds it) stays as it is."""
    from onnx import TensorProto, helper

    c = 3
    inits = [numpy_helper.from_array(np.full(c, v, np.float32), n) for n, v in
             (("s", 2.0), ("b", 0.5), ("m", 0.1), ("v", 1.0))]
    graph = helper.make_graph([helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, 2, 2])], inits)
    model = helper.make_model(graph)
    assert fold_batchnorms(model) == {"folded_batchnorms": 0, "spike_scale_convs": 0, "batchnorm_convs": 0}
    assert [n.op_type for n in model.graph.node] == ["BatchNormalization"]


def test_verify_int8_rule_passes_with_a_spike_shortcut(tmp_path):
    """The zoo's block form (the shortcut adds the spikes: the BatchNorm folded into the convolution and a
    depthwise scale of the spikes) in the CPU target's form, nchw: verify's int8 rule passes. Calibrated on data
    like verify's (a 2-channel time-major input: Poisson event counts; integers, so the input is exact)."""
    from dsr_deploy.verify import verify_folder

    layout_tests = Path(__file__).resolve().parent / "test_int8_layout.py"
    events = np.random.default_rng(3).poisson(0.3, (SHAPE[0], 32, *SHAPE[2:])).astype(np.float32)
    folder = tmp_path / "net"
    manifest = export_model(Net(), SHAPE, folder, formats=("onnx",), spec=f"{layout_tests}:Net", precision="int8",
                            target="onnxruntime-cpu", int8=Int8Options(calibration=events, layout="nchw"))
    assert manifest["artifacts"][0]["quantization"]["spike_scale_convs"] == 1
    report = verify_folder(folder, trust_model_code=True)
    assert report["passed"], [r["failures"] for r in report["runs"]]
    runs = [r for r in report["runs"] if r["format"] == "onnx" and r["status"] == "ok"]
    assert runs and all(r["defects"] == [] and "int8 currents within" in r["layer_check"] for r in runs)


def test_the_cpu_target_quantises_every_layer_unless_told_not_to():
    assert Int8Options().resolved("onnxruntime-cpu").all_layers is True
    assert Int8Options().resolved("portable").all_layers is False
    assert Int8Options().resolved("tensorrt").all_layers is False
    assert Int8Options(all_layers=False).resolved("onnxruntime-cpu").all_layers is False  # --no-int8-all-layers
    assert not Int8Options().given() and Int8Options(all_layers=False).given()


def test_an_input_on_a_grid_is_quantised_exactly():
    """Pixels / 16 (the digits model's input): scale 1/16, zero point 0, every value a code; data off any grid
    (or with more than 256 levels) gets none."""
    from dsr_deploy.export.int8.calibrate import grid_qparams

    x = (np.random.default_rng(0).integers(0, 17, size=(4, 5, 8, 8)) / 16).astype(np.float32)
    assert grid_qparams(x) == (0.0625, 0) and grid_qparams(x, signed=True) == (0.0625, 0)
    assert grid_qparams(x - 0.5) == (0.0625, 8)
    assert grid_qparams(np.random.default_rng(1).normal(size=1000).astype(np.float32)) is None
    assert grid_qparams(np.arange(300, dtype=np.float32)) is None
    assert grid_qparams(np.array([0.0, 0.1, 0.25], np.float32)) is None  # no common step
