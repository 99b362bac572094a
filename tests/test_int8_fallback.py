"""Float fallback of int8 layers (dsr_deploy/export/int8/sensitivity.py): a layer whose int8 weights' and bias'
rounding alone moves its current by more than half of verify's bound (measured at export on the calibration
inputs) stays float32, recorded with its reason; verify then passes, where the same layer left int8 is a defect.

Two small networks, one per way a current escapes int8 (both met in SpikingJelly's trained ResNets):

* ``weights_net``: the second convolution holds large weights on an input channel whose neuron never fires, so
  each output channel's weight scale is large while the current it computes varies little: the rounding of the
  live weights is tens of the current's steps;
* ``bias_net``: the first neuron never fires, so the second layer's current is its (folded) bias alone, spread
  over ~1e-4, while the int32 bias steps (``spike value x weight scale``) are ~1e-2; the int8 activations form
  (TensorRT's) keeps biases float32, so there the same layer is exact enough and stays int8.

Ordinary layers never trip the bound: the package's networks keep every layer int8."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _cli_util import run_cli
from test_export_int8 import IF, SHAPE, Fold

from dsr_deploy.export import Int8Options, export_model
from dsr_deploy.export.int8.options import INT8_MAX_STEPS, ROUNDING_MAX_STEPS
from dsr_deploy.neuron import DSRIFNode
from dsr_deploy.verify import verify_folder

pytest.importorskip("onnxruntime")
HERE = Path(__file__).resolve()
ROUNDING = "int8 weight/bias rounding"


def _layers():
    """analog first layer, an ordinary int8 layer, the layer under test (a BatchNorm folded into it), readout."""
    torch.manual_seed(7)
    return torch.nn.Sequential(
        Fold(torch.nn.Conv2d(2, 4, 3, padding=1)), DSRIFNode(T=None, **IF),
        Fold(torch.nn.Conv2d(4, 4, 3, padding=1)), DSRIFNode(T=None, **IF),
        Fold(torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.BatchNorm2d(4)), DSRIFNode(T=None, **IF),
        Fold(torch.nn.Flatten(), torch.nn.Linear(4 * 36, 3)), DSRIFNode(T=None, **IF),
    ).eval()


def weights_net():
    net = _layers()
    with torch.no_grad():
        c0, ca, c1, fc = net[0].m[0], net[2].m[0], net[4].m[0], net[6].m[1]
        for conv in (c0, ca):
            conv.weight.mul_(3.0)
        ca.weight[3] = 0.0
        ca.bias[3] = -10.0  # input channel 3 of the layer under test never fires
        c1.weight[:, 3] = 20.0  # ... and sets its weight scales (20 / 127)
        fc.weight.mul_(8.0)
        fc.bias.uniform_(-1.0, 1.0)
    return net


def bias_net():
    net = _layers()
    with torch.no_grad():
        c0, ca, c1, fc = net[0].m[0], net[2].m[0], net[4].m[0], net[6].m[1]
        c0.weight.mul_(3.0)
        ca.weight.zero_()
        ca.bias.fill_(-10.0)  # its neurons never fire: the layer under test's current is its bias alone
        c1.bias.copy_(torch.tensor([1.0, -2.0, 3.0, 0.5]) * 1e-4)
        fc.bias.uniform_(-1.0, 1.0)  # the readout's current: its bias, spread over units
    return net


NETS = {"weights_net": weights_net, "bias_net": bias_net}


def _data() -> np.ndarray:
    """Event counts (integers: the analog input on its own grid, so its codes are the counts). A calibrated range
    over a wide analog input puts codes near 255, which ONNX Runtime's u8s8 convolution saturates on a CPU without
    VNNI (not what these tests are about)."""
    return np.random.default_rng(0).poisson(0.8, (SHAPE[0], 8, *SHAPE[2:])).astype(np.float32)


def _export(tmp_path, name, target="portable", **kw):
    folder = tmp_path / f"{name}_{target}_{'_'.join(map(str, kw.values()))}"
    manifest = export_model(NETS[name](), SHAPE, folder, formats=("onnx",), spec=f"{HERE}:{name}", precision="int8",
                            target=target, int8=Int8Options(calibration=_data(), **kw))
    return folder, manifest["artifacts"][0]["quantization"]


def _verify(tmp_path, folder) -> dict:
    """verify on the calibration inputs (its own random inputs would leave the calibrated ranges: clipping is not
    what these tests are about)."""
    data = tmp_path / "calibration.npy"
    np.save(data, _data())
    report = verify_folder(folder, input_file=str(data), trust_model_code=True)
    assert [r for r in report["runs"] if r["format"] == "onnx" and r["status"] == "ok"]
    return report


@pytest.mark.parametrize("name", NETS)
@pytest.mark.parametrize("target,kw", [("portable", {}), ("onnxruntime-cpu", {}),
                                       ("onnxruntime-cpu", {"layout": "nchw"}), ("tensorrt", {})])
def test_a_layer_int8_cannot_carry_stays_float_and_verify_passes(tmp_path, name, target, kw):
    """The second layer (its BatchNorm folded in) is recorded float32 with the measured steps; every other layer the
    target quantises stays int8; the file passes verify (the float layer's input by the float rule, the others
    within verify's int8 bound) in each form: Q/DQ, channels-last with the neurons on the codes, the TensorRT form
    with int8 activations and float biases."""
    folder, record = _export(tmp_path, name, target, **kw)
    rounded = {k: v for k, v in record["float_layers"].items() if v.startswith(ROUNDING)}
    if name == "bias_net" and target == "tensorrt":  # float32 biases: no bias rounding, silent input: no error
        assert rounded == {} and record["rounding_steps_max"] == 0.0
    else:
        assert len(rounded) == 1, record["float_layers"]
        steps = float(next(iter(rounded.values())).split()[3])
        assert steps > ROUNDING_MAX_STEPS and f"(> {ROUNDING_MAX_STEPS:g})" in next(iter(rounded.values()))
    assert record["rounding_steps_max"] <= ROUNDING_MAX_STEPS
    others = {"analog input", "readout"} if not record["all_layers"] else set()
    assert set(record["float_layers"].values()) - {v for v in rounded.values()} == others
    if target == "tensorrt":  # a float layer in the middle is still the form build-engine takes
        import onnx

        from dsr_deploy.engine import tensorrt_quantization_problem

        assert tensorrt_quantization_problem(onnx.load(str(folder / "model.onnx"))) is None
    report = _verify(tmp_path, folder)
    assert report["passed"], [r["failures"] for r in report["runs"]]


@pytest.mark.parametrize("name", NETS)
def test_the_same_layer_left_int8_is_a_verify_defect(tmp_path, monkeypatch, name):
    """Without the fallback (the bound lifted) the layer stays int8 and verify's int8 rule calls it a defect: the
    bound is what makes these files pass, and verify measures what export measured."""
    import dsr_deploy.export.int8.sensitivity as sensitivity

    monkeypatch.setattr(sensitivity, "ROUNDING_MAX_STEPS", float("inf"))
    folder, record = _export(tmp_path, name)
    assert not any(v.startswith(ROUNDING) for v in record["float_layers"].values())
    assert record["rounding_steps_max"] > INT8_MAX_STEPS
    report = _verify(tmp_path, folder)
    assert not report["passed"]
    defects = [d for r in report["runs"] for d in r.get("defects") or []]
    assert defects and all(d["layer"] == 2 and d["int8_steps"] > INT8_MAX_STEPS for d in defects), defects


def test_ordinary_layers_stay_int8(capsys, tmp_path):
    """The digits model, every layer quantised (the onnxruntime-cpu target): no layer trips the bound (measured:
    at most ~1 step, against a bound of 4)."""
    code, _, err = run_cli(capsys, "export", "zoo:digits-cnn", "--precision", "int8", "--format", "onnx",
                           "--target", "onnxruntime-cpu", "--out", tmp_path / "out")
    assert code == 0, err
    record = json.loads((tmp_path / "out" / "manifest.json").read_text())["artifacts"][0]["quantization"]
    assert record["float_layers"] == {} and record["quantized_layers"] == 3
    assert 0.0 < record["rounding_steps_max"] < ROUNDING_MAX_STEPS / 2


@pytest.mark.slow
@pytest.mark.parametrize("name,settings", [("preact-resnet18-lif", {}), ("preact-resnet18-if", {"v_threshold": 0.3})])
def test_preact_resnet18_keeps_every_layer_int8(capsys, tmp_path, name, settings):
    """PreAct-ResNet-18 with random weights, every layer quantised: all 26 stay int8 (measured: < 1 step)."""
    from dsr_deploy import models

    T = 4
    torch.manual_seed(0)
    ckpt = tmp_path / "net.pt"
    torch.save(models.build(name, T=T, **settings).state_dict(), ckpt)
    cal = tmp_path / "cal.npy"
    np.save(cal, np.repeat(np.random.default_rng(7).standard_normal((1, 32, 3, 32, 32)).astype(np.float32), T, 0))
    sets = [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]
    code, _, err = run_cli(capsys, "export", f"zoo:{name}", "--checkpoint", ckpt, *sets, "--input-shape",
                           f"{T},1,3,32,32", "--precision", "int8", "--format", "onnx", "--calibration", cal,
                           "--target", "onnxruntime-cpu", "--out", tmp_path / "out")
    assert code == 0, err
    record = json.loads((tmp_path / "out" / "manifest.json").read_text())["artifacts"][0]["quantization"]
    assert record["float_layers"] == {} and record["quantized_layers"] == 26
    assert 0.0 < record["rounding_steps_max"] < ROUNDING_MAX_STEPS / 2


def test_streaming_export_measures_the_same_and_verify_passes(tmp_path):
    """A streaming step model (membranes as I/O) is calibrated one step at a time: its rounding check samples the
    same layer inputs, so it keeps the same layer float32 for the same reason, and verify (stepping the file over
    T) passes."""
    _, multi = _export(tmp_path, "weights_net")
    folder = tmp_path / "stream"
    manifest = export_model(weights_net(), SHAPE, folder, mode="streaming", formats=("onnx",),
                            spec=f"{HERE}:weights_net", precision="int8", int8=Int8Options(calibration=_data()))
    record = manifest["artifacts"][0]["quantization"]
    rounded = [v for v in record["float_layers"].values() if v.startswith(ROUNDING)]
    assert rounded == [v for v in multi["float_layers"].values() if v.startswith(ROUNDING)] and len(rounded) == 1
    report = _verify(tmp_path, folder)
    assert report["passed"], [r["failures"] for r in report["runs"]]


@pytest.mark.parametrize("name", NETS)
def test_channels_last_with_a_float_layer_in_the_middle_gives_the_nchw_outputs(tmp_path, name):
    """The float layer between two int8 ones in the channels-last form (a float Conv fed by dequantised spike codes:
    transposed back, then forward again) gives the portable layout's outputs bit for bit, with the custom ops off
    and required."""
    from _native_util import ensure_ort_library
    from test_int8_layout import assert_nhwc_equals_nchw

    ensure_ort_library()
    for layout in ("nhwc", "nchw"):
        manifest = export_model(NETS[name](), SHAPE, tmp_path / layout, formats=("onnx",), precision="int8",
                                target="onnxruntime-cpu", int8=Int8Options(calibration=_data(), layout=layout))
        record = manifest["artifacts"][0]["quantization"]
        assert [v for v in record["float_layers"].values() if v.startswith(ROUNDING)], layout
    assert_nhwc_equals_nchw(tmp_path)


def test_no_layer_int8_can_carry_is_a_one_line_error(tmp_path, monkeypatch):
    """Every layer over the bound (the bound made negative): a one-line UserError, no folder left behind."""
    import dsr_deploy.export.int8.sensitivity as sensitivity
    from dsr_deploy.errors import UserError

    monkeypatch.setattr(sensitivity, "ROUNDING_MAX_STEPS", -1.0)
    with pytest.raises(UserError, match="no layer can be int8") as info:
        _export(tmp_path, "weights_net")
    assert "\n" not in str(info.value)
    assert not any(tmp_path.iterdir())


def test_a_maxpool_of_spikes_keeps_a_spike_sum_exact():
    """A MaxPool of spikes is spikes (and of counts, counts): a SEW sum through the stem's pool is quantised on the
    spike value (codes = counts), not on a calibrated range that puts a count of 1 at code 255. An average pool
    is not."""
    from onnx import TensorProto, helper

    from dsr_deploy.contract import DOMAIN, SPIKE_OP_TYPES
    from dsr_deploy.export.int8.graph import Graph

    spike = SPIKE_OP_TYPES["if"]
    nodes = [helper.make_node(spike, ["x"], ["s0"], domain=DOMAIN, v_threshold=0.5),
             helper.make_node("MaxPool", ["s0"], ["p"], kernel_shape=[2, 2]),
             helper.make_node(spike, ["p"], ["s1"], domain=DOMAIN, v_threshold=0.5),
             helper.make_node("Add", ["s1", "p"], ["sum"]),
             helper.make_node("MaxPool", ["sum"], ["pooled_sum"], kernel_shape=[1, 1]),
             helper.make_node("AveragePool", ["s0"], ["avg"], kernel_shape=[2, 2]),
             helper.make_node("Add", ["s1", "avg"], ["not_counts"])]
    vi = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, None)  # noqa: E731
    g = Graph(helper.make_model(helper.make_graph(nodes, "g", [vi("x")], [vi("pooled_sum"), vi("not_counts")])))
    assert g.spike_count("p") == (0.5, 1) and g.spike_count("sum") == (0.5, 2)
    assert g.spike_count("pooled_sum") == (0.5, 2) and g.spike_count("not_counts") is None
