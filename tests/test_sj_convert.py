"""SpikingJelly's own IFNode / LIFNode / ParametricLIFNode: recognised, refused in one line when not deployable,
exported in every format and verified with every neuron teacher-forced exact (zoo networks from a checkpoint)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from _cli_util import run_cli

from dsr_deploy import convert
from dsr_deploy import functional as F

sj_neuron = pytest.importorskip("spikingjelly.activation_based.neuron", reason="SpikingJelly 2.0 (the test oracle)")
from spikingjelly.activation_based import functional as sjf  # noqa: E402
from spikingjelly.activation_based import layer  # noqa: E402

HERE = Path(__file__).resolve().parent
ZOO = HERE / "sj_zoo.py"



def neurons():
    """Every family x reset (x decay_input), with non-default parameters."""
    n = sj_neuron
    return [n.IFNode(v_threshold=0.8, v_reset=None), n.IFNode(v_threshold=1.2, v_reset=-0.2),
            n.LIFNode(tau=3.0, v_reset=None, decay_input=True), n.LIFNode(tau=1.7, v_reset=0.1, decay_input=False),
            n.ParametricLIFNode(init_tau=2.5, v_reset=None, decay_input=False),
            n.ParametricLIFNode(init_tau=4.0, v_reset=0.0, decay_input=True)]


@pytest.mark.parametrize("k", range(6))
def test_sj_node_equals_inference_copy(k):
    node = neurons()[k]
    if isinstance(node, sj_neuron.ParametricLIFNode):
        with torch.no_grad():
            node.w.add_(0.37)  # a trained w
    sjf.set_step_mode(node, "m")
    x = torch.randn(9, 3, 11, generator=torch.Generator().manual_seed(k)) * 2
    x[0, 0] = node.v_threshold  # at the threshold
    with torch.no_grad():
        sjf.reset_net(node)
        ref = node(x)
    info = convert.find_neurons(node)[0]
    assert info.kind.startswith("sj_") and info.op_type.startswith("SJ")
    for target in ("op", "script"):
        inf = convert.inference_copy(node, target)
        if target == "script":
            inf = torch.jit.script(inf)
        with torch.no_grad():
            assert torch.equal(inf(x), ref), target
    spec = info.spec
    assert spec.reset == ("soft" if node.v_reset is None else "hard")
    if isinstance(node, sj_neuron.ParametricLIFNode):
        assert spec.tau_rule == "multiply" and spec.leak == float(node.w.detach().float().sigmoid())
    assert ref.sum() > 0


def test_unsupported_sj_neurons_are_one_line_errors():
    single = sj_neuron.LIFNode()  # step_mode 's'
    with pytest.raises(ValueError, match=r"neuron <root> .*LIFNode\) has step_mode='s'; supported: .*IFNode"):
        convert.find_neurons(single)
    stored = sj_neuron.IFNode(step_mode="m", store_v_seq=True)
    with pytest.raises(ValueError, match="store_v_seq=True, which is not supported"):
        convert.find_neurons(torch.nn.Sequential(stored))
    other = sj_neuron.QIFNode(step_mode="m") if hasattr(sj_neuron, "QIFNode") else None
    if other is None:
        pytest.skip("this SpikingJelly has no QIFNode")
    with pytest.raises(ValueError, match=r"neuron 0 \(spikingjelly\..*QIFNode\) is not supported; supported: Spik"):
        convert.find_neurons(torch.nn.Sequential(other))


def small_net_file(tmp_path: Path) -> Path:
    path = tmp_path / "sjnet.py"
    path.write_text(
        "import torch\n"
        "from spikingjelly.activation_based import neuron, layer, functional\n\n\n"
        "def build(num_classes: int = 10):\n"
        "    torch.manual_seed(0)\n"
        "    net = torch.nn.Sequential(\n"
        "        layer.Conv2d(3, 8, 3, padding=1), layer.BatchNorm2d(8), neuron.LIFNode(tau=2.5, v_reset=None),\n"
        "        layer.SeqToANNContainer(torch.nn.Conv2d(8, 8, 3, padding=1)),\n"
        "        neuron.ParametricLIFNode(decay_input=False),\n"
        "        layer.Flatten(), layer.Linear(8 * 8 * 8, num_classes), neuron.IFNode(v_reset=-0.1))\n"
        "    functional.set_step_mode(net, 'm')\n"
        "    with torch.no_grad():\n"
        "        net[6].bias.fill_(0.4)  # the output layer fires within a few steps\n"
        "    return net\n")
    return path


def verified(capsys, out: Path, spec: str, min_runs: int = 2, *extra) -> dict:
    code, stdout, err = run_cli(capsys, "verify", out, "--model", spec, "--json", *extra)
    assert code == 0, err + stdout[-2000:]
    report = json.loads(stdout)
    assert report["passed"] is True
    ran = [r for r in report["runs"] if r["status"] == "ok"]
    assert len(ran) >= min_runs and all(r["neuron_exact"] is True for r in ran if r["artifact"] != "(PyTorch)")
    assert all(layer["neuron_agreement"] == 1.0 for r in ran for layer in r.get("layers") or [])
    return report


def test_small_sj_net_every_lowering(capsys, tmp_path):
    spec = f"{small_net_file(tmp_path)}:build"
    for lowering, body in (("function", "scan"), ("function", "unrolled"), ("portable", "scan")):
        out = tmp_path / f"out_{lowering}_{body}"
        code, _, err = run_cli(capsys, "export", spec, "--input-shape", "3,2,3,8,8", "--out", out,
                               "--format", "onnx", "--lowering", lowering, "--function-body", body)
        assert code == 0, err
        manifest = json.loads((out / "manifest.json").read_text())
        assert [n["kind"] for n in manifest["neurons"]] == ["sj_lif", "sj_plif", "sj_if"]
        assert manifest["neurons"][2]["spec"]["reset"] == "hard"
        verified(capsys, out, spec)


def train_zoo(name: str, neuron: str, path: Path) -> None:
    """A few SGD steps from random init, so PLIF's w moves and the checkpoint is not the factory's state."""
    sys.path.insert(0, str(HERE))
    try:
        import sj_zoo
    finally:
        sys.path.remove(str(HERE))
    from dsr_deploy import sj_factory

    kw = sj_factory.resolve(dict(spiking_neuron=neuron, step_mode="m", num_classes=10))
    net = sj_factory.finish(getattr(sj_zoo, name)(**kw), kw)
    torch.manual_seed(0)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    for _ in range(2):
        sjf.reset_net(net)
        loss = net(torch.rand(2, 2, 3, 32, 32) * 3).mean(0).square().mean() * 100
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save(net.state_dict(), path)


@pytest.mark.slow
@pytest.mark.parametrize("name,neuron", [("sew_resnet18", "LIFNode"), ("spiking_resnet18", "IFNode"),
                                         ("spiking_resnet18", "LIFNode"), ("sew_resnet18", "IFNode"),
                                         ("sew_resnet18", "ParametricLIFNode")])
def test_zoo_from_checkpoint_every_format_verified(capsys, tmp_path, name, neuron):
    ckpt = tmp_path / "trained.pt"
    train_zoo(name, neuron, ckpt)
    out = tmp_path / "out"
    spec = f"{ZOO}:{name}"
    code, _, err = run_cli(capsys, "export", spec, "--set", f"spiking_neuron={neuron}", "--set", "step_mode=m",
                           "--set", "num_classes=10", "--checkpoint", ckpt, "--input-shape", "2,1,3,32,32",
                           "--out", out)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert {a["format"] for a in manifest["artifacts"]} >= {"torchscript", "onnx", "pt2"}
    kinds = {n["kind"] for n in manifest["neurons"]}
    assert kinds == {{"LIFNode": "sj_lif", "IFNode": "sj_if", "ParametricLIFNode": "sj_plif"}[neuron]}
    verified(capsys, out, spec)


def test_reference_matches_sj_node_float64():
    """SJ's CPU kernel rounds a float64 input to float32 (x.float()); the contract is its torch reference, which
    keeps float64: documented in docs/fidelity.md. The reference recurrence keeps float64 too."""
    x = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y, _ = F.sj_forward(x, "lif", 1.0, 0.0, 2.0, True)
    assert y.dtype == torch.float64 and y.sum() >= 0
    wrapped = layer.SeqToANNContainer(torch.nn.Identity())
    assert convert.neuron_family(wrapped) is None


def test_sj_streaming_equals_multistep(capsys, tmp_path):
    """Membranes as I/O, a hard-reset layer (v_reset -0.1) starting its stream at v_reset: every step of every
    backend equals SpikingJelly's own multi-step output, for the function fallback and the custom-op library; and
    verify passes on the folder (stepped from v_reset, every SJ*Step node teacher-forced exact)."""
    import numpy as np

    from dsr_deploy.export.streaming import build_streaming_module
    from dsr_deploy.runtime import load_runner
    from dsr_deploy.runtime.stream import StreamSession

    path = small_net_file(tmp_path)
    spec = f"{path}:build"
    out = tmp_path / "stream"
    code, _, err = run_cli(capsys, "export", spec, "--input-shape", "4,2,3,8,8", "--mode", "streaming", "--out", out)
    assert code == 0, err
    states = json.loads((out / "manifest.json").read_text())["states"]
    assert [s["initial"] for s in states] == ["zeros", "zeros", "fill"]
    assert states[2]["initial_value"] == float(np.float32(-0.1))
    sys.path.insert(0, str(tmp_path))
    try:
        import sjnet
    finally:
        sys.path.remove(str(tmp_path))
    net = sjnet.build().eval()
    x = torch.rand(4, 2, 3, 8, 8, generator=torch.Generator().manual_seed(5)) * 2
    with torch.no_grad():
        sjf.reset_net(net)
        ref = net(x).numpy()
    assert ref.any()
    for backend in ("onnxruntime", "torchscript"):
        with load_runner(out, backend) as runner:
            got = StreamSession.from_manifest(runner, out).run(x.numpy())
            assert np.array_equal(got, ref), backend
    for lowering in ("functional", "ops"):  # the eager step module: the scripted step, the dsr op with v_init
        sm = build_streaming_module(net, x[0], lowering)
        states = sm.zero_states(2)
        with torch.no_grad():
            for t in range(4):
                y, *states = sm(x[t], *states)
                assert np.array_equal(y.numpy(), ref[t]), (lowering, t)
    # verify steps the folder from the manifest's initial membranes and teacher-forces every SJ*Step node
    report = verified(capsys, out, spec)
    assert "initial membranes" in report["stepped"]
    assert any(r["format"] == "onnx" and r["neuron_exact"] is True for r in report["runs"] if r["status"] == "ok")


def test_sj_int8_spikes_scale_one_and_verified(capsys, tmp_path):
    import numpy as np
    import onnx
    from onnx import numpy_helper

    spec = f"{small_net_file(tmp_path)}:build"
    calib = tmp_path / "calib.npy"
    np.save(calib, (np.random.default_rng(0).random((4, 8, 3, 8, 8)) * 2).astype(np.float32))
    out = tmp_path / "int8"
    code, _, err = run_cli(capsys, "export", spec, "--input-shape", "4,2,3,8,8", "--out", out, "--format", "onnx",
                           "--precision", "int8", "--calibration", calib)
    assert code == 0, err
    model = onnx.load(str(out / "model.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    readers = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    sj = [n for n in model.graph.node if n.domain == "dsr"]
    assert [n.op_type for n in sj] == ["SJLIFSpike", "SJPLIFSpike", "SJIFSpike"]
    quantized = [q for n in sj for q in readers.get(n.output[0], []) if q.op_type == "QuantizeLinear"]
    assert quantized and all(float(inits[q.input[1]]) == 1.0 and int(inits[q.input[2]]) == 0 for q in quantized)
    report = verified(capsys, out, spec)
    assert "int8" in report["rule"]


def test_spiking_vgg11_bn_plif_inference_copy_equals_sj():
    """SpikingJelly's spiking_vgg11_bn with ParametricLIFNode, hard reset, a moved w: every neuron recognised and the
    inference copy (the dsr op in every layer) equal to SpikingJelly's own forward."""
    sys.path.insert(0, str(HERE))
    try:
        import sj_zoo
    finally:
        sys.path.remove(str(HERE))
    from dsr_deploy import sj_factory

    kw = sj_factory.resolve({"spiking_neuron": "ParametricLIFNode", "step_mode": "m", "num_classes": 10,
                             "v_reset": 0.0})
    torch.manual_seed(0)
    net = sj_factory.finish(sj_zoo.spiking_vgg11_bn(**kw), kw).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, sj_neuron.ParametricLIFNode):
                m.w.add_(0.3)
    infos = convert.find_neurons(net)
    assert len(infos) >= 8 and {i.kind for i in infos} == {"sj_plif"}
    x = torch.rand(2, 1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 4
    with torch.no_grad():
        sjf.reset_net(net)
        ref = net(x)
        got = convert.inference_copy(net)(x)
    assert torch.equal(got, ref)


ZOO_NETS = [("sew_resnet18", "LIFNode"), ("spiking_resnet18", "IFNode"), ("spiking_resnet18", "LIFNode"),
            ("sew_resnet18", "IFNode")]


def _zoo_args(tmp_path: Path, name: str, neuron: str) -> list:
    ckpt = tmp_path / "trained.pt"
    train_zoo(name, neuron, ckpt)
    return ["--set", f"spiking_neuron={neuron}", "--set", "step_mode=m", "--set", "num_classes=10",
            "--checkpoint", ckpt, "--input-shape", "2,1,3,32,32"]


@pytest.mark.slow
@pytest.mark.parametrize("name,neuron", ZOO_NETS)
def test_zoo_from_checkpoint_streaming_verified(capsys, tmp_path, name, neuron):
    """The zoo networks from a trained checkpoint (their neurons hard-reset to v_reset=0.0, SpikingJelly's default),
    exported for streaming (membranes as I/O): verify steps them over T against the multi-step model, every SJ*Step
    node teacher-forced exact (ONNX) and the TorchScript step file's output equal."""
    spec = f"{ZOO}:{name}"
    stream = tmp_path / "stream"
    code, _, err = run_cli(capsys, "export", spec, *_zoo_args(tmp_path, name, neuron), "--mode", "streaming",
                           "--out", stream)
    assert code == 0, err
    manifest = json.loads((stream / "manifest.json").read_text())
    assert manifest["mode"] == "streaming" and all(s["initial"] in ("zeros", "fill") for s in manifest["states"])
    report = verified(capsys, stream, spec)
    assert {r["format"] for r in report["runs"] if r["status"] == "ok"} >= {"onnx", "torchscript"}


@pytest.mark.slow
@pytest.mark.parametrize("name,neuron", ZOO_NETS)
def test_zoo_from_checkpoint_int8_verified(capsys, tmp_path, name, neuron):
    """The int8 export of the zoo networks from a trained checkpoint (spikes quantised with scale 1) passes verify's
    int8 rule on the inputs it was calibrated on (each layer's current checked against its recorded scale). The
    trained LIF nets' last blocks are silent on this data: their currents are the folded BatchNorms' biases alone,
    which the int32 bias steps cannot resolve -- export keeps those layers float32 and says why."""
    import numpy as np

    spec = f"{ZOO}:{name}"
    calib = tmp_path / "calib.npy"
    np.save(calib, (np.random.default_rng(0).random((2, 16, 3, 32, 32)) * 3).astype(np.float32))
    int8 = tmp_path / "int8"
    code, _, err = run_cli(capsys, "export", spec, *_zoo_args(tmp_path, name, neuron), "--format", "onnx",
                           "--precision", "int8", "--calibration", calib, "--out", int8)
    assert code == 0, err
    # the function fallback, and the custom-op library if built
    report = verified(capsys, int8, spec, 1, "--input", calib)
    assert "int8" in report["rule"]
    record = json.loads((int8 / "manifest.json").read_text())["artifacts"][0]["quantization"]
    kept = {k: v for k, v in record["float_layers"].items() if v not in ("analog input", "readout")}
    assert all(v.startswith("int8 weight/bias rounding") for v in kept.values()), kept
    assert record["rounding_steps_max"] <= 4.0 and record["quantized_layers"] > 10
    if neuron == "LIFNode":  # the silent last blocks
        assert kept


def test_package_module_factory_spec_with_settings(capsys, monkeypatch):
    """A ``package.module:factory`` spec of a SpikingJelly zoo factory, its settings from ``--set``: inspect lists
    every neuron as SpikingJelly's own family with its reset (the zoo's IFNode default: hard, to 0.0)."""
    monkeypatch.syspath_prepend(str(HERE))  # sj_zoo importable as a module, as an installed package would be
    code, out, err = run_cli(capsys, "inspect", "sj_zoo:spiking_resnet18", "--set", "spiking_neuron=IFNode",
                             "--set", "step_mode=m", "--set", "num_classes=10", "--json")
    assert code == 0, err
    neurons = json.loads(out)["neurons"]
    assert len(neurons) == 17 and {n["kind"] for n in neurons} == {"sj_if"}
    assert {(n["spec"]["reset"], n["spec"]["v_reset"]) for n in neurons} == {("hard", 0.0)}
    code, _, err = run_cli(capsys, "inspect", "sj_zoo:spiking_resnet18", "--set", "spiking_neuron=QIFNode")
    assert code == 2 and len(err.strip().splitlines()) == 1
