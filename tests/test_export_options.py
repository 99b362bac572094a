"""ExportOptions: one typed request from the command line to the artifact. The CLI and the Python API check it
with the same validate() (the same one-line errors), and ``--target`` picks every int8 form at once, the explicit
flags overriding it."""

from __future__ import annotations

import onnx
import pytest
from _cli_util import run_cli
from test_export_int8 import SHAPE, _calibration, _net

from dsr_deploy.errors import UserError
from dsr_deploy.export import ExportOptions, Int8Options, IOOptions, export_model
from dsr_deploy.export.int8 import TARGET_FORMS

# (CLI flags after `export zoo:digits-cnn`, the same as ExportOptions fields, a substring of the one-line error)
BAD = [
    (["--format", "tflite"], dict(formats="tflite"), "unknown --format 'tflite'"),
    (["--opset", "13"], dict(opset=13), "--opset must be >= 17"),
    (["--lowering", "nope"], dict(lowering="nope"), "unknown --lowering 'nope'"),
    (["--function-body", "looped"], dict(function_body="looped"), "unknown --function-body 'looped'"),
    (["--format", "onnx", "--aot"], dict(formats=("onnx",), aot=True), "--aot compiles"),
    (["--precision", "int4"], dict(precision="int4"), "unknown --precision 'int4'"),
    (["--format", "onnx", "--int8-neuron", "quantized"], dict(formats=("onnx",), int8=Int8Options(neuron="quantized")),
     "apply to --precision int8"),
    (["--target", "tpu"], dict(target="tpu"), "unknown --target 'tpu'"),
    (["--format", "onnx", "--precision", "int8", "--target", "onnxruntime-cpu", "--int8-activations", "int8"],
     dict(formats=("onnx",), precision="int8", target="onnxruntime-cpu", int8=Int8Options(activations="int8")),
     "choose one"),
    (["--mode", "streaming", "--readout", "mean", "--per-step-readout"],
     dict(mode="streaming", io=IOOptions(readout="mean", per_step_readout=True)), "already returns the readout"),
    (["--mode", "streaming", "--format", "pt2"], dict(mode="streaming", formats=("pt2",)),
     "streaming export supports"),
    (["--mode", "streaming", "--lowering", "portable"], dict(mode="streaming", lowering="portable"),
     "unknown --lowering 'portable' for --mode streaming"),
]


@pytest.mark.parametrize("argv,fields,message", BAD, ids=[m for _, _, m in BAD])
def test_the_cli_and_the_python_api_refuse_alike(tmp_path, capsys, argv, fields, message):
    code, _, err = run_cli(capsys, "export", "zoo:digits-cnn", "--out", str(tmp_path / "o"), *argv)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    with pytest.raises(UserError) as info:
        ExportOptions(**fields).validate()
    assert err.strip() == f"error: {info.value}"  # the very same line
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("+", r"\+")):
        export_model(_net(), SHAPE, tmp_path / "p", **fields)
    assert not (tmp_path / "o").exists() and not (tmp_path / "p").exists()


def test_validate_resolves_the_request():
    opts = ExportOptions(formats="onnx,pt2", aot=True).validate()
    assert (opts.formats, opts.lowering, opts.int8) == (("onnx", "pt2"), "function", None)
    assert ExportOptions(mode="streaming").validate().formats == ("torchscript", "onnx")
    assert ExportOptions(mode="streaming").validate().lowering == "functional"
    q = ExportOptions(formats=("onnx",), precision="int8").validate().int8
    assert (q.neuron, q.activations, q.layout) == ("qdq", "uint8", "nchw")  # portable, the default target


@pytest.mark.parametrize("target", sorted(TARGET_FORMS))
def test_the_target_picks_every_int8_form_and_flags_override(target):
    picked = Int8Options().resolved(target)
    assert {k: getattr(picked, k) for k in ("neuron", "activations", "layout")} == TARGET_FORMS[target]
    assert Int8Options(neuron="qdq").resolved(target).neuron == "qdq"  # an explicit flag wins
    assert Int8Options(neuron="qdq").resolved(target).layout == TARGET_FORMS[target]["layout"]
    assert TARGET_FORMS["onnxruntime-cpu"] == {"neuron": "quantized", "activations": "uint8", "layout": "nhwc"}
    assert TARGET_FORMS["tensorrt"] == {"neuron": "quantized", "activations": "int8", "layout": "nchw"}


@pytest.mark.parametrize("target", ["onnxruntime-cpu", "tensorrt"])
def test_an_int8_export_for_a_target_records_it(tmp_path, target):
    m = export_model(_net(), SHAPE, tmp_path / target, formats=("onnx",), precision="int8", target=target,
                     int8=Int8Options(calibration=_calibration()))
    q = m.artifacts[0]["quantization"]
    assert m.target == target and {k: q[k] for k in ("neuron", "activations", "layout")} == TARGET_FORMS[target]
    model = onnx.load(str(tmp_path / target / "model.onnx"))
    assert any(n.op_type.endswith("SpikeQ") for n in model.graph.node)  # the neurons run on the codes
    assert any(n.domain == "com.microsoft" for n in model.graph.node) == (target == "onnxruntime-cpu")


def test_the_manifest_records_the_default_target(tmp_path):
    assert export_model(_net(), SHAPE, tmp_path / "f", formats=("onnx",)).target == "portable"
