"""Streaming exports honour and record ``--encode`` / ``--readout`` / ``--layout`` (issue 24): the manifest carries the
multi-step export's ``io`` record; the readout is one more explicit state (the output spikes of the last T steps),
so after T steps the stepped artifact returns what the multi-step export with the same flags returns, bit for bit,
in every streaming runtime; verify passes such a folder and fails one whose readout state is tampered with."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dsr_deploy.cli import main
from dsr_deploy.errors import UserError
from dsr_deploy.export import export_model
from dsr_deploy.io_adapter import io_record
from dsr_deploy.runtime import load_runner
from dsr_deploy.runtime.stream import StreamSession

pytest.importorskip("onnxruntime")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _streaming_nets as N  # noqa: E402

NETS = Path(__file__).resolve().parent / "_streaming_nets.py"
T, B = 4, 2
CONV = (T, B, 2, 8, 8)  # conv_net: IF then LIF (output layer LIF: lif-rate applies)
MLP = (T, B, 6)  # mlp_net: LIF then IF (output layer IF: mean)


def _export(out: Path, net_name: str, shape, mode: str, *flags: str) -> Path:
    main(["export", f"{NETS}:{net_name}", "--input-shape", ",".join(map(str, shape)), "--mode", mode,
          "--format", "torchscript,onnx", "--out", str(out), *flags])
    return out


@pytest.fixture(scope="module")
def conv_readout(tmp_path_factory):
    """conv_net exported twice with ``--encode direct --readout lif-rate``: streaming and multi-step."""
    root = tmp_path_factory.mktemp("sio")
    flags = ("--encode", "direct", "--readout", "lif-rate")
    return (_export(root / "stream", "conv_net", CONV, "streaming", *flags),
            _export(root / "multi", "conv_net", CONV, "multistep", *flags))


def _static_images(seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((3, 2, 8, 8)) * 3).astype(np.float32)


def test_the_manifest_records_the_io_and_the_readout_state(conv_readout):
    stream, multi = conv_readout
    m = json.loads((stream / "manifest.json").read_text())
    multi_io = json.loads((multi / "manifest.json").read_text())["io"]
    assert m["io"] == io_record(T, "TB", "direct", "lif-rate") == multi_io
    assert m["mode"] == "streaming" and m["input_shape"] == [B, 2, 8, 8] and m["step_shape"] == [B, 2, 8, 8]
    window = m["states"][-1]
    assert window == {"input": "v_in_2", "output": "v_out_2", "shape": [T, 5], "dtype": "float32",
                      "initial": "zeros", "initial_value": 0.0, "readout": "lif-rate"}
    assert [s.get("neuron") for s in m["states"][:-1]] == [0, 1]
    assert m["inputs"] == ["x_t", "v_in_0", "v_in_1", "v_in_2"] and m["outputs"][-1] == "v_out_2"


@pytest.mark.parametrize("backend", ["torchscript", "onnxruntime"])
def test_stepped_readout_after_T_steps_equals_the_multistep_export(conv_readout, backend):
    stream, multi = conv_readout
    x = _static_images()  # another batch than the export's
    with load_runner(multi, backend) as runner:
        want = np.asarray(runner.infer({"input": x})["output"])
    with load_runner(stream, backend) as runner:
        session = StreamSession.from_manifest(runner, stream)
        got = session.run(x)  # the static image fed at each of the T steps, the window carried as a state
        readout = session.readout()
    assert want.shape == (3, 5) and (want != 0).any() and not np.isnan(want).any()
    assert np.array_equal(got, want) and np.array_equal(readout, want)


def test_mean_readout_and_bt_layout_equal_the_multistep_export(tmp_path):
    flags = ("--layout", "BT", "--readout", "mean")
    stream = _export(tmp_path / "s", "mlp_net", MLP, "streaming", *flags)
    multi = _export(tmp_path / "m", "mlp_net", MLP, "multistep", *flags)
    assert json.loads((stream / "manifest.json").read_text())["io"] == io_record(T, "BT", "none", "mean")
    x = (np.random.default_rng(3).standard_normal((5, T, 6)) * 4).astype(np.float32)  # [B, T, ...]
    for backend in ("torchscript", "onnxruntime"):
        with load_runner(multi, backend) as runner:
            want = np.asarray(runner.infer({"input": x})["output"])
        with load_runner(stream, backend) as runner:
            got = StreamSession.from_manifest(runner, stream).run(x)
        assert want.shape == (5, 3) and (want != 0).any()
        assert np.array_equal(got, want), backend


def test_bt_layout_without_readout_takes_and_returns_batch_first(tmp_path):
    stream = _export(tmp_path / "s", "mlp_net", MLP, "streaming", "--layout", "BT")
    m = json.loads((stream / "manifest.json").read_text())
    assert m["io"]["input_layout"] == "BT" and m["input_shape"] == [B, T, 6] and m["step_shape"] == [B, 6]
    assert all("readout" not in s for s in m["states"])  # spikes out: no readout state
    net = N.mlp_net()
    x = (np.random.default_rng(4).standard_normal((B, T, 6)) * 4).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x).transpose(0, 1)).transpose(0, 1).numpy()
    with load_runner(stream, "onnxruntime") as runner:
        got = StreamSession.from_manifest(runner, stream).run(x)
    assert got.shape == (B, T, 3) and want.any() and np.array_equal(got, want)


def test_a_readout_streaming_folder_passes_verify_by_default(conv_readout):
    from dsr_deploy.verify import verify_folder

    report = verify_folder(conv_readout[0], trust_model_code=True)
    assert report["passed"], [r["failures"] for r in report["runs"]]
    assert report["samples"] >= 16 and report["encoding"] == "static"
    assert report["inputs"][0]["shape"][1:] == [2, 8, 8]  # static images, as the artifact's io says
    runs = [r for r in report["runs"] if r["status"] == "ok"]
    assert {r["format"] for r in runs} == {"torchscript", "onnx"}
    for r in runs:
        assert r["max_abs_diff"] == 0.0 and r["top1_agreement"] == 1.0 and r["defects"] == []
        assert r["neuron_exact"] is True


def _tamper_window(folder: Path, tmp_path: Path) -> Path:
    """A copy whose ONNX step halves the readout window on its way in (v_in_2 -> Mul 0.5 -> the window)."""
    import onnx
    from onnx import helper

    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    (bad / "model.ts").unlink()
    m = json.loads((bad / "manifest.json").read_text())
    m["artifacts"] = [a for a in m["artifacts"] if a["format"] == "onnx"]
    (bad / "manifest.json").write_text(json.dumps(m))
    model = onnx.load(str(bad / "model.onnx"))
    name = m["states"][-1]["input"]
    for node in model.graph.node:
        node.input[:] = ["win_halved" if i == name else i for i in node.input]
    model.graph.initializer.append(helper.make_tensor("half_w", onnx.TensorProto.FLOAT, [], [0.5]))
    model.graph.node.insert(0, helper.make_node("Mul", [name, "half_w"], ["win_halved"]))
    onnx.save(model, str(bad / "model.onnx"))
    return bad


def test_a_tampered_readout_state_fails_verify(conv_readout, tmp_path, capsys):
    from dsr_deploy.verify import verify_folder

    bad = _tamper_window(conv_readout[0], tmp_path)
    report = verify_folder(bad, trust_model_code=True)
    assert not report["passed"]
    runs = [r for r in report["runs"] if r["status"] == "ok"]
    assert runs
    for r in runs:
        assert r["verdict"] == "defect" and r["neuron_exact"] is True  # the neurons are fine: the readout is not
        assert [d["name"] for d in r["defects"]] == ["readout"] and "is not carried" in r["defects"][0]["text"]
    with pytest.raises(SystemExit) as e:
        main(["verify", str(bad), "--trust-model-code"])
    assert e.value.code == 1
    assert "readout state v_in_2" in capsys.readouterr().out


def test_early_exit_on_a_readout_streaming_export_is_refused_in_one_line(conv_readout):
    stream, _ = conv_readout
    with load_runner(stream, "onnxruntime") as runner:
        session = StreamSession.from_manifest(runner, stream)
        with pytest.raises(UserError, match="export it without --readout"):
            session.run_early_exit(np.repeat(_static_images()[None], T, axis=0), "margin>=0.5")


def test_the_python_api_records_the_same_io(tmp_path):
    from dsr_deploy.export import ExportOptions, IOOptions

    net = N.mlp_net()
    manifest = export_model(net, MLP, tmp_path / "api", ExportOptions(
        formats=("onnx",), mode="streaming", io=IOOptions(encode="direct", readout="mean")))
    assert manifest.io == io_record(T, "TB", "direct", "mean")
    assert manifest.states[-1]["readout"] == "mean" and manifest.states[-1]["shape"] == [T, 3]


def test_serving_carries_the_readout_state_per_sequence(conv_readout):
    """The served step (serve / the pytriton model) keeps the window with the membranes, per sequence id: three
    sequences batched in one request per step end with the multi-step export's logits."""
    from dsr_deploy.serving.served_model import SEQUENCE_END, SEQUENCE_ID, SEQUENCE_START, prepare_model

    stream, multi = conv_readout
    x = _static_images(5)
    with load_runner(multi, "onnxruntime") as runner:
        want = np.asarray(runner.infer({"input": x})["output"])
    served = prepare_model(stream, "onnxruntime")
    ids = np.array([[11], [12], [13]], np.uint64)
    for t in range(T):
        flag = np.full((3, 1), t == 0), np.full((3, 1), t == T - 1)
        (resp,) = served.infer_streaming([{"x_t": x, SEQUENCE_ID: ids, SEQUENCE_START: flag[0],
                                           SEQUENCE_END: flag[1]}])
    assert resp["y_t"].shape == (3, 5) and np.array_equal(resp["y_t"], want)


def test_triton_repository_keeps_the_readout_window_as_implicit_state(conv_readout, tmp_path):
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                           reason="tritonclient (the serve extra) is not installed")
    from google.protobuf import text_format

    from dsr_deploy.serving import triton_repo as TR

    out = tmp_path / "models"
    TR.write_repository([conv_readout[0]], out, max_batch=8)
    (cfg_path,) = out.glob("*/config.pbtxt")
    cfg = text_format.Parse(cfg_path.read_text(), model_config_pb2.ModelConfig())
    states = [(s.input_name, s.output_name, list(s.dims)) for s in cfg.sequence_batching.state]
    assert states[-1] == ("v_in_2", "v_out_2", [T, 5]) and len(states) == 3
    assert [o.name for o in cfg.output] == ["y_t"] and list(cfg.output[0].dims) == [5]


def test_an_int8_streaming_export_carries_the_readout_window_and_passes_verify(tmp_path):
    from dsr_deploy.export import Int8Options, IOOptions
    from dsr_deploy.verify import verify_folder

    cal = (np.random.default_rng(0).standard_normal((T, 16, 2, 8, 8)) * 3).astype(np.float32)
    export_model(N.conv_net(), CONV, tmp_path / "q", formats=("onnx",), mode="streaming", spec=f"{NETS}:conv_net",
                 precision="int8", int8=Int8Options(calibration=cal, all_layers=True),
                 io=IOOptions(readout="lif-rate"))
    report = verify_folder(tmp_path / "q", trust_model_code=True)
    assert report["passed"], [r["failures"] for r in report["runs"]]
    runs = [r for r in report["runs"] if r["status"] == "ok"]
    assert runs and all(r["precision"] == "int8" and r["defects"] == [] and r["neuron_exact"] for r in runs)


def test_a_zoo_network_streams_with_the_authors_input_and_readout(tmp_path):
    """zoo:cnn-small (IF) from a checkpoint, streamed with --encode direct --readout mean (the authors' CIFAR input and
    IF readout): T steps of the static image give the multi-step export's logits, in TorchScript and ONNX Runtime."""
    from dsr_deploy import models

    torch.manual_seed(0)
    net = models.build("cnn-small", T=T, image_size=8, v_threshold=0.3).eval()
    torch.save(net.state_dict(), tmp_path / "ck.pt")
    common = ["zoo:cnn-small", "--checkpoint", str(tmp_path / "ck.pt"), "--set", "image_size=8", "--set",
              "v_threshold=0.3", "--input-shape", f"{T},1,1,8,8", "--format", "torchscript,onnx",
              "--encode", "direct", "--readout", "mean"]
    main(["export", *common, "--mode", "streaming", "--out", str(tmp_path / "s")])
    main(["export", *common, "--out", str(tmp_path / "m")])
    x = (np.random.default_rng(2).standard_normal((6, 1, 8, 8)) * 2).astype(np.float32)
    for backend in ("torchscript", "onnxruntime"):
        with load_runner(tmp_path / "m", backend) as runner:
            want = np.asarray(runner.infer({"input": x})["output"])
        with load_runner(tmp_path / "s", backend) as runner:
            got = StreamSession.from_manifest(runner, tmp_path / "s").run(x)
        assert want.shape == (6, 10) and (want != 0).any() and np.array_equal(got, want), backend
