"""verify on streaming folders (``export --mode streaming``): the step artifact stepped over T against the
multi-step reference, every step node teacher-forced with its membrane carried by the file's own state I/O; a
tampered state input fails naming the layer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
from onnx import helper

from dsr_deploy.cli import main
from dsr_deploy.contract import state_input_name
from dsr_deploy.verify import verify_folder

pytest.importorskip("onnxruntime")
SPEC = f"{Path(__file__).parent / '_streaming_nets.py'}:conv_net"


@pytest.fixture(scope="module")
def stream_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("stream") / "s"
    main(["export", SPEC, "--input-shape", "4,2,2,8,8", "--mode", "streaming", "--out", str(out)])
    return out


def test_a_streaming_folder_passes_stepped_and_teacher_forced(stream_folder):
    report = verify_folder(stream_folder, trust_model_code=True)
    assert report["passed"], [r["failures"] for r in report["runs"]]
    assert report["mode"] == "streaming" and report["samples"] >= 16
    runs = {(r["format"], r["variant"]): r for r in report["runs"] if r["status"] == "ok"}
    assert ("torchscript", "") in runs and ("onnx", "function fallback") in runs
    for (fmt, _), r in runs.items():
        assert r["max_abs_diff"] == 0.0 and r["top1_agreement"] == 1.0 and r["neuron_exact"] is True
        if fmt == "onnx":  # each step node's spikes counted at every step, for both layers
            assert [la["index"] for la in r["layers"]] == [0, 1]
            assert all(la["neuron_spikes_equal"] == la["neuron_spikes_total"] > 0 for la in r["layers"])
            assert r["layer_check"].startswith("every step node teacher-forced")


def test_a_tampered_streaming_state_input_fails_naming_the_layer(stream_folder, tmp_path, capsys):
    """The membrane fed back to layer 0 is halved on its way in (v_in_0 -> Mul 0.5 -> the step node)."""
    folder = tmp_path / "t"
    shutil.copytree(stream_folder, folder)
    (folder / "model.ts").unlink()  # the ONNX file is the tampered one
    m = json.loads((folder / "manifest.json").read_text())
    m["artifacts"] = [a for a in m["artifacts"] if a["format"] == "onnx"]
    (folder / "manifest.json").write_text(json.dumps(m))
    model = onnx.load(str(folder / "model.onnx"))
    v0 = state_input_name(0)
    node = next(n for n in model.graph.node if v0 in n.input)
    node.input[list(node.input).index(v0)] = "v0_halved"
    model.graph.initializer.append(helper.make_tensor("half", onnx.TensorProto.FLOAT, [], [0.5]))
    model.graph.node.insert(0, helper.make_node("Mul", [v0, "half"], ["v0_halved"]))
    onnx.save(model, str(folder / "model.onnx"))
    report = verify_folder(folder, trust_model_code=True)
    assert not report["passed"]
    for r in (r for r in report["runs"] if r["status"] == "ok"):
        bad = [la["index"] for la in r["layers"] if la["neuron_spikes_equal"] != la["neuron_spikes_total"]]
        assert bad == [0] and r["verdict"] == "defect"
        assert any(f.startswith("layer 0 (1) neuron differs") for f in r["failures"])
    with pytest.raises(SystemExit) as e:
        main(["verify", str(folder), "--trust-model-code"])
    assert e.value.code == 1
