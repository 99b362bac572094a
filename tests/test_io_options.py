"""Artifacts that take and return what the user's code does (issue 12, item 4): ``--layout BT``, ``--encode
direct`` and ``--readout mean|lif-rate`` in every format, recorded as the manifest's ``io``, honoured by bench,
serve and triton-repo."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _cli_util import run_cli  # (exit code, stdout, stderr) of one CLI call

from dsr_deploy import models
from dsr_deploy.export import IOOptions, export_model
from dsr_deploy.io_adapter import wrap_io
from dsr_deploy.models.common import firing_rate

T, B = 4, 3
SHAPE = (T, 2, 1, 8, 8)  # the network's [T, B, ...] (the export example)


def _net(neuron: str, seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    params = {"v_threshold": 0.1} if neuron == "lif" else {"v_threshold": 0.5}
    net = models.build("cnn-small", T=T, neuron=neuron, image_size=8, channels=(4, 8), **params, **kw)
    with torch.no_grad():  # "trained": weights away from the init, so every layer fires on some steps
        for name, p in net.named_parameters():
            if not name.endswith("v_threshold"):
                p.add_(torch.randn_like(p) * 0.3)
    return net.eval()


def _static(seed: int = 1) -> torch.Tensor:
    return torch.rand((B, 1, 8, 8), generator=torch.Generator().manual_seed(seed)) * 30


def _ort(path, **opts):
    from dsr_deploy.runtime import load_runner

    runner = load_runner(str(path), "onnxruntime", **opts)
    runner.load()
    return lambda x: torch.from_numpy(np.asarray(runner.infer({"input": x.numpy()})["output"]))


@pytest.fixture(scope="module")
def lif_direct(tmp_path_factory):
    """LIF net exported with --encode direct --readout lif-rate: function lowering, portable lowering."""
    net = _net("lif")
    d = tmp_path_factory.mktemp("io")
    io = IOOptions(encode="direct", readout="lif-rate")
    m = export_model(net, SHAPE, d / "fn", formats=("torchscript", "onnx", "pt2"), io=io)
    export_model(net, SHAPE, d / "portable", formats=("onnx",), io=io, lowering="portable")
    return net, d, m


def test_manifest_records_io_and_the_artifact_input_shape(lif_direct):
    _, d, m = lif_direct
    assert m["io"] == {"input_layout": "static", "output": "logits", "T": T, "encode": "direct",
                       "readout": "lif-rate", "source": "export options"}
    assert m["input_shape"] == [2, 1, 8, 8] and m["layout"] == "B..." and m["T"] == T
    assert all(a["dynamic_T"] is False for a in m["artifacts"])
    assert m == json.loads((d / "fn" / "manifest.json").read_text())


def test_direct_encoding_and_lif_rate_readout_equal_the_authors_logits_in_every_format(lif_direct):
    net, d, _ = lif_direct
    x = _static()
    rep = x.unsqueeze(0).repeat(T, 1, 1, 1, 1)  # the authors' input: the image T times
    with torch.no_grad():
        spikes = net(rep)
        # the zoo's own authors' readout (readout="rate") on the same weights
        authors = models.build("cnn-small", T=T, neuron="lif", image_size=8, channels=(4, 8), v_threshold=0.1,
                               readout="rate")
        authors.load_state_dict(net.state_dict())
        want = authors.eval()(rep)
    assert (spikes != 0).any() and (spikes == 0).any()
    assert torch.equal(want, firing_rate(spikes, "lif", 1.0, 0.05)) and want.shape == (B, 10)
    got = {}
    with torch.no_grad():
        got["torchscript"] = torch.jit.load(str(d / "fn" / "model.ts"))(x)
        got["pt2"] = torch.export.load(str(d / "fn" / "model.pt2")).module()(x)
        got["wrap_io (verify's reference)"] = wrap_io(
            net, json.loads((d / "fn" / "manifest.json").read_text())["io"])(x)
    got["onnx function fallback"] = _ort(d / "fn" / "model.onnx", custom_ops="off")(x)
    got["onnx portable"] = _ort(d / "portable" / "model.onnx")(x)
    for name, y in got.items():
        assert torch.equal(y, want), name


def test_mean_readout_of_an_if_net_is_the_exact_rate(tmp_path):
    net = _net("if", 2)
    io = IOOptions(encode="direct", readout="mean")
    export_model(net, SHAPE, tmp_path / "e", formats=("torchscript", "onnx"), io=io)
    x = _static(3)
    with torch.no_grad():
        spikes = net(x.unsqueeze(0).repeat(T, 1, 1, 1, 1))
        got = torch.jit.load(str(tmp_path / "e" / "model.ts"))(x)
    assert (spikes != 0).any()
    assert torch.equal(got, firing_rate(spikes, "if"))
    torch.testing.assert_close(got, spikes.mean(0), rtol=1e-6, atol=0)  # the authors' mean, up to rounding
    assert torch.equal(_ort(tmp_path / "e" / "model.onnx", custom_ops="off")(x), got)


def test_bt_layout_keeps_a_dynamic_T(tmp_path):
    net = _net("lif", 4)
    export_model(net, SHAPE, tmp_path / "bt", formats=("torchscript", "onnx", "pt2"), io=IOOptions("BT"))
    m = json.loads((tmp_path / "bt" / "manifest.json").read_text())
    assert m["input_shape"] == [2, T, 1, 8, 8] and m["io"]["output"] == "spikes" and m["layout"] == "BT..."
    net.apply(lambda mod: setattr(mod, "T", None) if hasattr(mod, "v_threshold_lower_bound") else None)
    for t in (T, T + 2):
        x_bt = torch.rand((B, t, 1, 8, 8), generator=torch.Generator().manual_seed(t)) * 30
        with torch.no_grad():
            want = net(x_bt.transpose(0, 1)).transpose(0, 1)
            ts = torch.jit.load(str(tmp_path / "bt" / "model.ts"))(x_bt)
            pt2 = torch.export.load(str(tmp_path / "bt" / "model.pt2")).module()(x_bt)
        assert want.shape[:2] == (B, t) and (want != 0).any()
        assert torch.equal(ts, want) and torch.equal(pt2, want)
        assert torch.equal(_ort(tmp_path / "bt" / "model.onnx", custom_ops="off")(x_bt), want)


@pytest.mark.parametrize("argv,msg", [
    (["--layout", "TX"], "unknown --layout"),
    (["--encode", "poisson"], "unknown --encode"),
    (["--readout", "max"], "unknown --readout"),
    (["--encode", "direct", "--layout", "BT"], "--layout does not apply"),
    (["--readout", "lif-rate"], "is an IF neuron: use --readout mean"),
    (["--readout", "mean", "--mode", "streaming", "--per-step-readout"], "already returns the readout"),
])
def test_cli_bad_io_options_exit_2(tmp_path, capsys, argv, msg):
    out = tmp_path / "never"
    code, _, err = run_cli(capsys, "export", "zoo:cnn-small", "--set", "image_size=8", "--input-shape",
                           "4,2,1,8,8", "--format", "torchscript", "--out", str(out), *argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and msg in lines[0], err
    assert not out.exists()


def test_cli_export_bench_serve_and_triton_repo_honour_io(tmp_path, capsys):
    from dsr_deploy.serving import triton_repo as TR
    from dsr_deploy.serving.pytriton_server import prepare_model

    out = tmp_path / "e"
    code, stdout, err = run_cli(capsys, "export", "zoo:cnn-small", "--set", "image_size=8", "--set", "neuron=lif",
                                "--input-shape", "4,2,1,8,8", "--encode", "direct", "--readout", "lif-rate",
                                "--format", "torchscript,onnx", "--out", str(out), "--json")
    assert code == 0, err
    manifest = json.loads(stdout)
    assert manifest["io"]["readout"] == "lif-rate" and manifest["input_shape"] == [2, 1, 8, 8]
    assert manifest["model"]["settings"] == {"image_size": 8, "neuron": "lif", "T": 4}
    # bench: the static input [B, ...], T from the record
    code, _, err = run_cli(capsys, "bench", str(out), "--batch", "1,3", "--iters", "1", "--warmup", "0",
                           "--no-memcpy", "--json", str(tmp_path / "b.json"))
    assert code == 0, err
    rows = json.loads((tmp_path / "b.json").read_text())["results"]
    assert rows and all(r["error"] is None and r["timesteps"] == 4 for r in rows)
    # serve: requests [B, ...] in, logits [B, classes] out, as the artifact
    x = _static(5).numpy()
    ts = torch.jit.load(str(out / "model.ts"))
    with torch.no_grad():
        want = ts(torch.from_numpy(x)).numpy()
    served = prepare_model(out / "model.ts", "torchscript")
    assert served.inputs[0][2] == (1, 8, 8) and served.outputs[0][2] == (10,)
    got = served.infer_multistep([{"input": x[:1]}, {"input": x[1:]}])
    assert np.array_equal(np.concatenate([g["output"] for g in got]), want)
    # triton-repo: the ONNX model is already batch first; no transposes added
    summary = TR.write_repository([out], tmp_path / "repo", max_batch=4)
    cfg = next((tmp_path / "repo").glob("*_onnx/config.pbtxt")).read_text()
    assert "dims: [ 1, 8, 8 ]" in cfg and "dims: [ 10 ]" in cfg, cfg
    assert "batch first: static input, logits output" in json.dumps(summary)


@pytest.mark.parametrize("opts", [["--encode", "direct", "--readout", "mean"], ["--layout", "BT"]])
def test_verify_honours_the_io_options(tmp_path, capsys, opts):
    """verify wraps the rebuilt model like the export did (static or [B, T] input, logits out): every backend's
    neurons exact given the reference's inputs, top-1 from logits or the spike train in the artifact's layout."""
    from dsr_deploy.verify import verify_folder

    code, _, err = run_cli(capsys, "export", "zoo:cnn-small", "--input-shape", "4,2,1,28,28", "--format", "all",
                           "--out", str(tmp_path / "e"), *opts)
    assert code == 0, err
    report = verify_folder(tmp_path / "e")
    ran = [r for r in report["runs"] if r["status"] == "ok"]
    assert report["passed"], json.dumps([r for r in report["runs"] if not r["passed"]], indent=1)[-3000:]
    assert {r["format"] for r in ran} >= {"pytorch", "torchscript", "onnx", "pt2"}
    assert all(r["neuron_exact"] is True and r["top1_agreement"] == 1.0 for r in ran)
    assert report["encoding"] == ("static" if "--encode" in opts else "direct")
