"""verify: every artifact x backend against the PyTorch model, per-layer spike agreement, the pass rule."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from dsr_deploy.cli import main
from dsr_deploy.errors import UserError
from dsr_deploy.export.onnx_writer import dsr_nodes
from dsr_deploy.verify import verify_folder

from export_nets import NEURON_SHAPE, SJ_CONV_SHAPE, exported, spiky_input


def _runs(report):
    return {(r["artifact"], r["backend"], r["variant"]): r for r in report["runs"]}


def test_verify_passes_on_a_spikingjelly_conv_net(tmp_path):
    folder = exported("sj_conv_net", SJ_CONV_SHAPE)
    x = spiky_input((SJ_CONV_SHAPE[0], 3) + SJ_CONV_SHAPE[2:], seed=7)
    np.save(tmp_path / "x.npy", x)
    report = verify_folder(folder, input_file=str(tmp_path / "x.npy"), trust_model_code=True)
    assert report["passed"], json.dumps(report, indent=1)
    runs = _runs(report)
    ran = {(a, b) for (a, b, _), r in runs.items() if r["status"] == "ok"}
    assert {("(PyTorch)", "torch"), ("model.ts", "torchscript"), ("model.onnx", "onnxruntime"),
            ("model.pt2", "pt2")} <= ran
    for r in runs.values():
        if r["status"] != "ok":
            assert r["status"] == "skipped" and r["reason"]
            continue
        assert [l["index"] for l in r["layers"]] == [0, 1, 2]
        assert all(l["spikes_total"] > 0 for l in r["layers"])
        assert r["top1_agreement"] == 1.0
    # TorchScript and torch.export run PyTorch's own kernels: exact.
    for key in (("model.ts", "torchscript", ""), ("model.pt2", "pt2", "")):
        assert runs[key]["max_abs_diff"] == 0.0
        assert all(l["agreement"] == 1.0 for l in runs[key]["layers"])
    assert [i["shape"] for i in report["inputs"]] == [list(SJ_CONV_SHAPE), list(x.shape)]


def test_verify_fails_when_an_artifact_disagrees(tmp_path, capsys):
    folder = tmp_path / "broken"
    shutil.copytree(exported("sj_neuron_net", NEURON_SHAPE), folder)
    for f in ("model.ts", "model.pt2"):  # only the ONNX file is tampered with; keep the test short
        (folder / f).unlink()
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["artifacts"] = [a for a in manifest["artifacts"] if a["format"] == "onnx"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    model = onnx.load(str(folder / "model.onnx"))
    node = dsr_nodes(model)[0]
    for a in node.attribute:
        if a.name == "v_threshold":
            a.f = 1.7  # the function fallback reads the attribute: a wrong threshold
    onnx.save(model, str(folder / "model.onnx"))
    report = verify_folder(folder, trust_model_code=True)
    assert not report["passed"]
    bad = _runs(report)[("model.onnx", "onnxruntime", "function fallback")]
    assert bad["passed"] is False and bad["layers"][0]["agreement"] < 0.999
    assert _runs(report)[("(PyTorch)", "torch", "inference copy (dsr ops)")]["passed"]
    with pytest.raises(SystemExit) as exc:
        main(["verify", str(folder), "--json", "--trust-model-code"])
    assert exc.value.code == 1
    out = json.loads(capsys.readouterr().out)
    assert out["passed"] is False


def test_verify_min_agreement_is_configurable_and_inputs_are_checked(tmp_path):
    folder = exported("sj_neuron_net", NEURON_SHAPE)
    assert verify_folder(folder, min_agreement=1.0, trust_model_code=True)["passed"]  # neuron-only: every spike equal
    np.save(tmp_path / "bad.npy", np.zeros((5, 2, 9), np.float32))
    with pytest.raises(UserError, match="expected"):
        verify_folder(folder, input_file=str(tmp_path / "bad.npy"), trust_model_code=True)
    with pytest.raises(UserError, match="manifest"):
        verify_folder(tmp_path)


@pytest.mark.slow
def test_verify_runs_the_aot_inductor_package_per_layer():
    # Reuses test_export_pt2's AOT export within one pytest process; the per-layer probe compiles once more.
    folder = exported("ours_neuron_net", NEURON_SHAPE, formats=("pt2",), aot=True)
    report = verify_folder(folder, min_agreement=1.0, trust_model_code=True)
    assert report["passed"], json.dumps(report, indent=1)[-3000:]
    aoti = [r for r in report["runs"] if r["artifact"] == "model.aoti.pt2"]
    assert aoti and aoti[0]["status"] == "ok" and aoti[0]["max_abs_diff"] == 0.0
    assert [l["agreement"] for l in aoti[0]["layers"]] == [1.0, 1.0]
