"""verify on int8 exports, by default (no --input): every quantised layer checked on its own against its recorded
scale. A correct export of a deep LIF net passes; an edited zero point, or a calibration on all-zero or huge
(3e38) data, fails with exit 1 naming the layer."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from dsr_deploy.cli import main
from dsr_deploy.export import Int8Options, export_model
from dsr_deploy.verify import verify_folder

pytest.importorskip("onnxruntime")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import authors_nets as A  # noqa: E402

NETS = Path(__file__).resolve().parent / "authors_nets.py"


def _export(folder: Path, calibration: np.ndarray) -> Path:
    export_model(A.resnet_lif(), A.CIFAR_SHAPE, folder, formats=("onnx",), spec=f"{NETS}:resnet_lif",
                 precision="int8", int8=Int8Options(calibration=calibration))
    return folder


def _calibration(fill=None) -> np.ndarray:
    x = np.random.default_rng(1).standard_normal((32,) + A.CIFAR_SHAPE[1:]).astype(np.float32)
    return x if fill is None else np.full_like(x, fill)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return _export(tmp_path_factory.mktemp("int8") / "good", _calibration())


def _onnx_runs(report):
    return [r for r in report["runs"] if r["format"] == "onnx" and r["status"] == "ok"]


def test_a_correct_int8_export_of_a_deep_lif_net_passes_by_default(good):
    report = verify_folder(good, trust_model_code=True)
    assert report["passed"], [r["failures"] for r in report["runs"]]
    assert report["samples"] >= 16 and report["generated"]["seed"] == 0 and report["rule"]["samples"] >= 16
    runs = _onnx_runs(report)
    assert runs and all(r["precision"] == "int8" and r["defects"] == [] for r in runs)
    assert all(r["layer_check"].startswith("every layer teacher-forced") and "int8 currents within" in r["layer_check"]
               for r in runs)


def _quantised_current_zero_points(model):
    """(initializer, layer name) of every uint8 current zero point the neurons read (nonzero: calibrated)."""
    return [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.UINT8 and
            numpy_helper.to_array(i).ndim == 0 and int(numpy_helper.to_array(i)) > 0]


def test_an_edited_zero_point_fails_naming_the_layer(good, tmp_path, capsys):
    folder = tmp_path / "zp"
    shutil.copytree(good, folder)
    model = onnx.load(str(folder / "model.onnx"))
    zp = _quantised_current_zero_points(model)[0]
    assert int(numpy_helper.to_array(zp)) > 100
    zp.CopyFrom(numpy_helper.from_array(np.array(0, np.uint8), zp.name))
    onnx.save(model, str(folder / "model.onnx"))
    report = verify_folder(folder, trust_model_code=True)
    assert not report["passed"]
    for run in _onnx_runs(report):
        assert run["verdict"] == "defect" and run["neuron_exact"] is True  # the neurons are fine: a layer is not
        assert [d["layer"] for d in run["defects"]] == [1] and "layer1.act2" in run["defects"][0]["text"]
        assert "zero point 0" in run["defects"][0]["text"]
    with pytest.raises(SystemExit) as e:
        main(["verify", str(folder), "--trust-model-code"])
    assert e.value.code == 1
    assert "defect" in capsys.readouterr().out


@pytest.mark.parametrize("fill,what", [(0.0, "off from the reference's"), (3e38, "degenerate calibration")])
def test_a_degenerate_calibration_fails_naming_the_layer(tmp_path, fill, what):
    folder = _export(tmp_path / "bad", _calibration(fill))
    report = verify_folder(folder, trust_model_code=True)
    assert not report["passed"]
    for run in _onnx_runs(report):
        assert run["verdict"] == "defect" and run["defects"]
        assert any(what in d["text"] and f"layer {d['layer']} (" in d["text"] for d in run["defects"])
        assert all(f.startswith("defect: layer") for f in run["failures"])
