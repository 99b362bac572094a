"""`dsr-deploy export | verify | inspect`: the happy path and every bad input of the issue (§4): one line on
stderr, a non-zero exit, no output folder left behind."""

from __future__ import annotations

import json
import random

import pytest
import torch
from _cli_util import run_cli
from export_nets import NEURON_SHAPE, exported, nets_file, ours_conv_net

NETS = nets_file()



@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    model = ours_conv_net()
    with torch.no_grad():
        model.fc.bias.add_(0.5)
    state = model.state_dict()
    torch.save(state, d / "good.pt")
    data = (d / "good.pt").read_bytes()
    (d / "truncated.pt").write_bytes(data[: len(data) // 2])
    (d / "garbage.pt").write_bytes(random.Random(0).randbytes(2048))  # fixed: reproducible garbage
    bad = dict(state)
    bad.pop("fc.weight")
    bad["extra.weight"] = torch.zeros(1)
    torch.save(bad, d / "keys.pt")
    torch.save(model, d / "pickled.pt")
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, d / "ddp.pt")
    return d, model


def test_export_with_checkpoint_json_and_inspect(tmp_path, capsys, checkpoints):
    d, trained = checkpoints
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "export", f"{NETS}:ours_conv_net", "--input-shape", "4,2,3,8,8",
                                "--format", "onnx", "--out", str(out), "--checkpoint", str(d / "ddp.pt"),
                                "--lowering", "portable", "--json")
    assert code == 0, err
    manifest = json.loads(stdout)
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["checkpoint"] == str(d / "ddp.pt")
    assert manifest["lowering"] == "portable" and manifest["T"] == 4 and manifest["input_shape"] == [4, 2, 3, 8, 8]
    assert [a["format"] for a in manifest["artifacts"]] == ["onnx"]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx"]
    # The checkpoint reached the artifact: verify (which rebuilds model + checkpoint) passes.
    code, stdout, err = run_cli(capsys, "verify", str(out), "--json", "--trust-model-code")
    assert code == 0, stdout[-3000:] + err
    report = json.loads(stdout)
    assert report["passed"]
    # Per-layer probes also work on a portable model (the neuron outputs keep their tensor names).
    onnx_runs = [r for r in report["runs"] if r["artifact"] == "model.onnx" and r["status"] == "ok"]
    assert onnx_runs and all(len(r["layers"]) == 3 for r in onnx_runs)
    # inspect: the folder, the ONNX file and the model spec.
    code, stdout, _ = run_cli(capsys, "inspect", str(out / "model.onnx"), "--json")
    info = json.loads(stdout)
    assert code == 0 and info["dsr_node_count"] == 0 and info["function_count"] == 0
    assert info["metadata"]["dsr_deploy.lowering"] == "portable"
    code, stdout, _ = run_cli(capsys, "inspect", f"{NETS}:sj_conv_net", "--json")
    info = json.loads(stdout)
    assert [n["op_type"] for n in info["neurons"]] == ["DSRIFSpike", "DSRLIFSpike", "DSRIFSpike"]
    assert info["neurons"][0]["clamped"] is True
    code, stdout, _ = run_cli(capsys, "inspect", str(out))
    assert code == 0 and "model.onnx" in stdout and "DSRLIFSpike" in stdout


def test_inspect_function_onnx_counts(capsys):
    folder = exported("sj_neuron_net", NEURON_SHAPE)
    code, stdout, _ = run_cli(capsys, "inspect", str(folder / "model.onnx"), "--json")
    info = json.loads(stdout)
    assert code == 0 and info["dsr_node_count"] == 2 and info["function_count"] == 2
    assert info["op_counts"]["dsr::DSRIFSpike"] == 1 and info["op_counts"]["dsr::DSRLIFSpike"] == 1
    assert info["metadata"]["dsr_deploy.neurons"] == "2"
    code, stdout, _ = run_cli(capsys, "inspect", str(folder / "model.onnx"))
    assert code == 0 and "DSRIFSpike" in stdout and "plugin_namespace" in stdout


def test_trust_pickle(tmp_path, capsys, checkpoints):
    d, _ = checkpoints
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "export", f"{NETS}:ours_conv_net", "--input-shape", "4,2,3,8,8", "--format",
                           "torchscript", "--out", str(out), "--checkpoint", str(d / "pickled.pt"))
    assert code == 2 and "--trust-pickle" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    code, _, err = run_cli(capsys, "export", f"{NETS}:ours_conv_net", "--input-shape", "4,2,3,8,8", "--format",
                           "torchscript", "--out", str(out), "--checkpoint", str(d / "pickled.pt"), "--trust-pickle")
    assert code == 0, err
    assert (out / "model.ts").is_file()


BAD = [
    # (argv after "export", expected substring of the one-line error)
    (["nosuchpkg.models:make", "--input-shape", "4,2,3,8,8"], "cannot import module 'nosuchpkg.models'"),
    (["zoo:definitely_not_a_model", "--input-shape", "4,2,3,8,8"], "unknown zoo model"),
    (["justaname", "--input-shape", "4,2,3,8,8"], "malformed MODEL"),
    (["{nets}:does_not_exist", "--input-shape", "4,2,3,8,8"], "has no attribute 'does_not_exist'"),
    (["/nonexistent/dir/model.py:make", "--input-shape", "4,2,3,8,8"], "not found"),
    (["{nets}:raising_factory", "--input-shape", "4,2,3,8,8"], "checkpoint server unreachable"),
    (["{nets}:not_a_module", "--input-shape", "4,2,3,8,8"], "not a torch.nn.Module"),
    (["{nets}:no_neuron_net", "--input-shape", "4,2,4"], "no supported neuron"),
    (["{nets}:sj_conv_net", "--input-shape", "4,2,5,8,8"], "the model rejects input shape [4, 2, 5, 8, 8]"),
    (["{nets}:ours_fixed_T_net", "--input-shape", "4,2,5"], "built with T=6 but the input has 4 time steps"),
    (["{nets}:sj_conv_net", "--input-shape", "4"], "rank 1"),
    (["{nets}:sj_conv_net", "--input-shape", "0,2,3,8,8"], "T must be > 0"),
    (["{nets}:sj_conv_net", "--input-shape", "-3,2,3,8,8"], "T must be > 0"),
    (["{nets}:sj_conv_net", "--input-shape", "4,two,3"], "malformed --input-shape"),
    (["{nets}:sj_conv_net"], "--input-shape"),
    (["{nets}:sj_conv_net", "--input-shape", "4,2,3,8,8", "--format", "tflite"], "unknown --format"),
    (["{nets}:sj_conv_net", "--input-shape", "4,2,3,8,8", "--opset", "13"], "--opset must be >= 17"),
    (["{nets}:ours_conv_net", "--input-shape", "4,2,3,8,8", "--checkpoint", "{ckpt}/truncated.pt"],
     "not a state dict we can load safely"),
    (["{nets}:ours_conv_net", "--input-shape", "4,2,3,8,8", "--checkpoint", "{ckpt}/garbage.pt"], "corrupt"),
    (["{nets}:ours_conv_net", "--input-shape", "4,2,3,8,8", "--checkpoint", "{ckpt}/missing.pt"], "not found"),
    (["{nets}:ours_conv_net", "--input-shape", "4,2,3,8,8", "--checkpoint", "{ckpt}/keys.pt"],
     "missing keys: fc.weight; unexpected keys: extra.weight"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[m for _, m in BAD])
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, capsys, checkpoints, argv, message):
    d, _ = checkpoints
    out = tmp_path / "out"
    argv = [a.format(nets=NETS, ckpt=d) for a in argv]
    code, stdout, err = run_cli(capsys, "export", *argv, "--out", str(out))
    assert code == 2, (stdout, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0]
    assert "Traceback" not in err
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no partial output, no temp leftovers


def test_existing_output_and_unwritable_folder(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = run_cli(capsys, "export", f"{NETS}:sj_neuron_net", "--input-shape", "5,2,4,6", "--out", str(out))
    assert code == 2 and "exists; pass --force" in err and len(err.strip().splitlines()) == 1
    assert (out / "keep.txt").read_text() == "mine"
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli(capsys, "export", f"{NETS}:sj_neuron_net", "--input-shape", "5,2,4,6", "--out",
                           str(blocker / "sub"))
    assert code == 2 and "output" in err and len(err.strip().splitlines()) == 1
    # --force replaces the folder as a whole, only once everything is written.
    code, _, err = run_cli(capsys, "export", f"{NETS}:sj_neuron_net", "--input-shape", "5,2,4,6", "--out", str(out),
                           "--format", "torchscript", "--force")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.ts"]


def test_verify_and_inspect_bad_inputs(tmp_path, capsys):
    code, _, err = run_cli(capsys, "verify", str(tmp_path / "nope"))
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    (tmp_path / "x.bin").write_bytes(b"abc")
    code, _, err = run_cli(capsys, "inspect", str(tmp_path / "x.bin"))
    assert code == 2 and "cannot inspect" in err


def test_a_single_neuron_network_exports_to_every_format(tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "export", f"{NETS}:single_neuron", "--input-shape", "3,2,5", "--out",
                                str(out), "--json")
    assert code == 0, err
    manifest = json.loads(stdout)
    assert [a["format"] for a in manifest["artifacts"]] == ["torchscript", "onnx", "pt2"]
    assert manifest["neurons"][0]["name"] == "" and manifest["neurons"][0]["op_type"] == "DSRLIFSpike"
    code, stdout, err = run_cli(capsys, "verify", str(out), "--json", "--min-agreement", "1.0", "--trust-model-code")
    assert code == 0 and json.loads(stdout)["passed"], stdout[-2000:] + err
