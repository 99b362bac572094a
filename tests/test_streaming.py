"""Streaming export: the single-step models fed T steps one by one equal the multi-step network bit-exactly."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
import torch
from _streaming_nets import SeqToANN, conv_net, mlp_net
from torch import nn

from dsr_deploy.errors import UserError
from dsr_deploy.export import export_model
from dsr_deploy.export import streaming as S
from dsr_deploy.runtime.stream import StreamSession, manifest_states

T = 6


def _inputs(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * 2


@pytest.fixture(scope="module")
def conv_export(tmp_path_factory):
    net = conv_net()
    x = _inputs((T, 3, 2, 8, 8), 0)
    out = tmp_path_factory.mktemp("stream") / "conv"
    manifest = export_model(net, tuple(x.shape), out, mode="streaming")
    with torch.no_grad():
        ref = net(x).numpy()
    assert ref.any() and not (ref > 0).all(), "the test net must fire on some steps and not others"
    return net, x, ref, out, manifest


def _ort_session(path):
    import onnxruntime as ort

    so = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in so.get_outputs()]
    return lambda feeds: dict(zip(names, so.run(None, dict(feeds))))


@pytest.mark.parametrize("make_net, shape", [(conv_net, (T, 3, 2, 8, 8)), (mlp_net, (9, 4, 6))])
@pytest.mark.parametrize("lowering", ["functional", "ops"])
def test_eager_streaming_module_matches_multistep(make_net, shape, lowering):
    net = make_net()
    x = _inputs(shape, 1)
    sm = S.build_streaming_module(net, x[0], lowering)
    with torch.no_grad():
        ref = net(x)
        states = sm.zero_states(x.shape[1])
        ys = []
        for t in range(x.shape[0]):
            y, *states = sm(x[t], *states)
            ys.append(y)
    assert ref.any()
    assert torch.equal(torch.stack(ys), ref)
    assert all(v.dtype == torch.float32 for v in states)


def test_manifest_names_and_shapes(conv_export):
    _, _, _, out, manifest = conv_export
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest
    assert manifest["mode"] == "streaming"
    assert manifest["inputs"] == ["x_t", "v_in_0", "v_in_1"]
    assert manifest["outputs"] == ["y_t", "v_out_0", "v_out_1"]
    assert manifest["step_shape"] == [3, 2, 8, 8] and manifest["T"] == T
    assert [s["shape"] for s in manifest["states"]] == [[4, 8, 8], [5]]
    assert [n["kind"] for n in manifest["neurons"]] == ["if", "lif"]
    assert [n["name"] for n in manifest["neurons"]] == ["1", "3"]
    assert {a["format"] for a in manifest["artifacts"]} == {"torchscript", "onnx"}


def test_torchscript_in_fresh_process_without_dsr_deploy(conv_export, tmp_path):
    _, x, ref, out, _ = conv_export
    np.save(tmp_path / "x.npy", x.numpy())
    script = textwrap.dedent(f"""
        import sys, numpy as np, torch
        m = torch.jit.load({str(out / 'model.ts')!r})
        x = torch.from_numpy(np.load({str(tmp_path / 'x.npy')!r}))
        v = [torch.zeros(x.shape[1], 4, 8, 8), torch.zeros(x.shape[1], 5)]
        ys = []
        for t in range(x.shape[0]):
            y, *v = m(x[t], *v)
            ys.append(y)
        np.save({str(tmp_path / 'y.npy')!r}, torch.stack(ys).numpy())
        assert not any(k.startswith("dsr_deploy") for k in sys.modules), "dsr_deploy was imported"
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, timeout=120)
    y = np.load(tmp_path / "y.npy")
    assert np.array_equal(y, ref)


def test_torchscript_scripts_the_reference_step(conv_export):
    _, _, _, out, _ = conv_export
    m = torch.jit.load(str(out / "model.ts"))
    # Each neuron is a call of the scripted reference step (its time loop compiled), not a traced unrolling.
    assert "dsr_deploy.functional.if_step" in getattr(m.net, "1").code
    assert "dsr_deploy.functional.lif_step" in getattr(m.net, "3").code
    assert "x_t" in m.code and "v_in_0" in m.code and "v_in_1" in m.code


def test_onnx_nodes_attributes_and_functions(conv_export):
    _, _, _, out, _ = conv_export
    model = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    nodes = [n for n in model.graph.node if n.domain == "dsr"]
    assert [n.op_type for n in nodes] == ["DSRIFStep", "DSRLIFStep"]
    attrs = {n.op_type: {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in nodes}
    assert attrs["DSRIFStep"]["v_threshold"] == pytest.approx(1.0)
    assert attrs["DSRIFStep"]["alpha"] == pytest.approx(0.5)
    assert attrs["DSRIFStep"]["plugin_namespace"] == b"dsr"
    assert attrs["DSRIFStep"]["plugin_version"] == b"1"
    lif = attrs["DSRLIFStep"]
    beta = np.exp(-0.05 / 1.0)
    assert np.float32(lif["decay"]) == np.float32(beta)
    assert np.float32(lif["gain"]) == np.float32(1.0 - beta)
    assert (lif["tau"], np.float32(lif["delta_t"])) == (1.0, np.float32(0.05))
    assert {(f.domain, f.name) for f in model.functions} == {("dsr", "DSRIFStep"), ("dsr", "DSRLIFStep")}
    assert any(o.domain == "dsr" and o.version == 1 for o in model.opset_import)
    assert [i.name for i in model.graph.input] == ["x_t", "v_in_0", "v_in_1"]
    assert [o.name for o in model.graph.output] == ["y_t", "v_out_0", "v_out_1"]


def test_onnx_stock_ort_stream_is_bit_exact(conv_export):
    net, x, ref, out, manifest = conv_export
    session = StreamSession.from_manifest(_ort_session(out / "model.onnx"), out)
    assert np.array_equal(session.run(x.numpy()), ref)
    # Another batch size through the same (dynamic-batch) model.
    x2 = _inputs((T, 5, 2, 8, 8), 7)
    with torch.no_grad():
        ref2 = net(x2).numpy()
    assert np.array_equal(session.run(x2.numpy()), ref2)


def test_stream_session_reset_and_carry(conv_export):
    _, x, ref, out, _ = conv_export
    session = StreamSession.from_manifest(_ort_session(out / "model.onnx"), out)
    first = [session.step(x[t].numpy()) for t in range(3)]
    assert session.steps == 3
    session.reset()
    again = [session.step(x[t].numpy()) for t in range(T)]
    assert np.array_equal(np.stack(again), ref)
    assert np.array_equal(np.stack(first), ref[:3])
    # Without the carried membranes the later steps would differ: the state really is used.
    session.reset()
    fresh_each_step = []
    for t in range(T):
        session.reset()
        fresh_each_step.append(session.step(x[t].numpy()))
    assert not np.array_equal(np.stack(fresh_each_step), ref)
    with pytest.raises(UserError, match="batch changed"):
        session.reset()
        session.step(x[0].numpy())
        session.step(x[1, :2].numpy())


def test_spikingjelly_nodes_stream_bit_exactly():
    sj = pytest.importorskip("spikingjelly.activation_based.neuron", reason="SpikingJelly not installed")
    torch.manual_seed(3)
    net = nn.Sequential(
        SeqToANN(nn.Linear(6, 8)), sj.DSRIFNode(T=7, v_threshold=0.4, alpha=0.5, step_mode="m"),
        SeqToANN(nn.Linear(8, 4)),
        sj.DSRLIFNode(T=7, v_threshold=0.05, alpha=0.3, tau=2.0, delta_t=0.05, v_threshold_lower_bound=0.01,
                      step_mode="m"),
    ).eval()
    with torch.no_grad():
        net[2].body[0].weight.mul_(5.0)  # so the LIF layer fires
    x = _inputs((7, 2, 6), 4)
    with torch.no_grad():
        ref = net(x)
    from dsr_deploy.convert import find_neurons

    infos = find_neurons(net)
    assert [i.kind for i in infos] == ["if", "lif"]
    sm = S.build_streaming_module(net, x[0])
    with torch.no_grad():
        states, ys = sm.zero_states(2), []
        for t in range(7):
            y, *states = sm(x[t], *states)
            ys.append(y)
    assert ref.any()
    assert torch.equal(torch.stack(ys), ref)


def test_effective_threshold_is_clamped_to_lower_bound():
    from dsr_deploy.neuron import DSRIFNode

    node = DSRIFNode(T=None, v_threshold=1.0, v_threshold_lower_bound=0.5)
    with torch.no_grad():
        node.v_threshold.fill_(0.1)  # a saved parameter below its bound (SpikingJelly clamps out of place)
    net = nn.Sequential(SeqToANN(nn.Identity()), node)
    sm = S.build_streaming_module(net, torch.zeros(2, 3))
    assert sm.neurons[0].v_threshold == 0.5
    with torch.no_grad():
        y, v = sm(torch.full((2, 3), 0.2), torch.zeros(2, 3))
    assert not y.any()  # 0.2 < alpha * 0.5 = 0.25; the stored 0.1 would give 0.05 and fire


def test_bad_models_are_user_errors(tmp_path):
    class Mean(nn.Module):
        def forward(self, x):
            return x.mean(0)

    from dsr_deploy.neuron import DSRIFNode

    with pytest.raises(UserError, match="time dimension"):
        S.build_streaming_module(nn.Sequential(DSRIFNode(T=None), Mean()), torch.zeros(2, 3))
    with pytest.raises(UserError, match="no DSR neuron"):
        S.build_streaming_module(nn.Sequential(SeqToANN(nn.Linear(3, 3))), torch.zeros(2, 3))
    with pytest.raises(UserError, match="streaming export supports"):
        export_model(mlp_net(), (2, 3, 6), tmp_path / "o", mode="streaming", formats=("tensorrt",))
    assert not (tmp_path / "o").exists()


def test_cli_export_mode_streaming_and_runtime_runners(tmp_path):
    """`dsr-deploy export --mode streaming`, then the runtime's runners drive a StreamSession bit-exactly."""
    from pathlib import Path

    from dsr_deploy.runtime import load_runner

    spec = f"{Path(__file__).parent / '_streaming_nets.py'}:mlp_net"
    out = tmp_path / "exp"
    cmd = [sys.executable, "-m", "dsr_deploy", "export", spec, "--input-shape", "5,3,6", "--mode", "streaming",
           "--out", str(out), "--json"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    manifest = json.loads(res.stdout)
    assert manifest["mode"] == "streaming" and manifest["inputs"] == ["x_t", "v_in_0", "v_in_1"]
    x = _inputs((5, 3, 6), 11)
    with torch.no_grad():
        ref = mlp_net()(x).numpy()
    assert ref.any()
    for backend in ("onnxruntime", "torchscript"):
        with load_runner(out, backend) as runner:
            assert np.array_equal(StreamSession.from_manifest(runner, out).run(x.numpy()), ref), backend
    bad = subprocess.run(cmd[:-3] + ["--mode", "stream", "--out", str(tmp_path / "bad")], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: unknown --mode")
    assert not (tmp_path / "bad").exists()


def test_export_package_mode_streaming(tmp_path):
    """The export package's own entry point with mode='streaming' uses these writers (names, states in records)."""
    from dsr_deploy.export import export_model

    out = tmp_path / "pkg"
    manifest = export_model(mlp_net(), (5, 2, 6), out, formats=("onnx",), mode="streaming")
    assert manifest["mode"] == "streaming"
    assert manifest["inputs"] == ["x_t", "v_in_0", "v_in_1"] and manifest["outputs"] == ["y_t", "v_out_0", "v_out_1"]
    assert [s["shape"] for s in manifest_states(manifest)] == [[8], [3]]
    x = _inputs((5, 2, 6), 12)
    with torch.no_grad():
        ref = mlp_net()(x).numpy()
    session = StreamSession.from_manifest(_ort_session(out / "model.onnx"), out)
    assert np.array_equal(session.run(x.numpy()), ref)
