"""Issue 12, items 1-2: the LIF coefficient rule through every backend, and direct export of networks written
like the authors' training code (tests/authors_nets.py: lookalikes, never their code).

* the two rules give the documented gains, different spikes, and each backend matches its rule's reference;
* the authors' IFNeuron / LIFNeuron are recognised (flat [T*B, ...] layout, float32 rule, trained or plain Vth);
* direct export keeps the model's own I/O ([B, C, H, W] or [B, T, ...] in, logits out) and is bit-exact per layer
  with the model's own forward: TorchScript and pt2 on the whole network (same torch kernels), ONNX teacher-forced
  per dsr node (each node's output against their neuron's forward on that node's input, so no test depends on
  the convolution kernels ONNX Runtime picks): function fallback, portable, and the dsr custom-op library.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _cli_util import run_cli
from _native_util import assert_bit_equal, ensure_torch_native, f32

from dsr_deploy import functional as F
from dsr_deploy import ops
from dsr_deploy.convert import find_neuron_modules, find_neurons, inference_copy, inference_modules
from dsr_deploy.runtime.stream import StreamSession

sys.path.insert(0, str(Path(__file__).resolve().parent))
import authors_nets as A  # noqa: E402

NETS = Path(__file__).resolve().parent / "authors_nets.py"
CASES = [("resnet_if", A.CIFAR_SHAPE), ("resnet_lif", A.CIFAR_SHAPE), ("vgg_if", A.DVS_SHAPE),
         ("vgg_lif", A.DVS_SHAPE)]
GAIN_DOUBLE = 0.04877057671546936  # fl32(1 - exp(-0.05)) from the double (SpikingJelly, the seed)
GAIN_FLOAT32 = 0.04877054691314697  # 1 - fl32(exp(-0.05)) in float32 (the authors' code)


# ---------------------------------------------------------------------------------------------------------
# The rule.


def test_lif_coefficients_rules_give_the_documented_values():
    d_beta, d_gain = F.lif_coefficients(1.0, 0.05, "double")
    f_beta, f_gain = F.lif_coefficients(1.0, 0.05, "float32")
    assert f32(d_gain) == GAIN_DOUBLE and f_gain == GAIN_FLOAT32
    assert f32(d_beta) == f_beta  # same beta, different gain
    assert f32(f_beta) == f_beta and f32(f_gain) == f_gain  # float32 numbers
    with pytest.raises(ValueError, match="unknown LIF coefficient rule"):
        F.lif_coefficients(1.0, 0.05, "half")


def _rule_input() -> torch.Tensor:
    """[6, 4000]: step 0 a dense grid around threshold / gain (0.09 / 0.0488), where fl(gain * x) crosses the
    threshold at a slightly different x for the two gains; later steps random."""
    g = torch.Generator().manual_seed(7)
    x = torch.rand((6, 4000), generator=g) * 0.6
    x[0] = torch.linspace(1.8452, 1.8456, 4000)
    return x


def _reference(x: torch.Tensor, rule: str) -> torch.Tensor:
    decay, gain = F.lif_coefficients(1.0, 0.05, rule)
    return F.lif_forward(x, 0.3, 0.3, 1.0, 0.05, decay=decay, gain=gain)[0]


def test_rules_differ_and_the_float32_rule_is_the_authors_arithmetic():
    x = _rule_input()
    dbl, flt = _reference(x, "double"), _reference(x, "float32")
    assert not torch.equal(dbl, flt), "the two rules should give different spikes on this input"
    # Without coefficients the reference keeps the double rule (files and callers from before the rule).
    assert_bit_equal(F.lif_forward(x, 0.3, 0.3, 1.0, 0.05)[0], dbl, "default = double")
    # The authors' neuron (lookalike) on the same input, [T*B, ...] layout: the float32 rule.
    theirs = A.LIFNeuron(A.setting("lif", x.shape[0], Vth=0.3))
    with torch.no_grad():
        y = theirs(x.reshape(-1, 1)).reshape(x.shape)
    assert_bit_equal(y, flt, "their LIFNeuron vs float32 rule")
    with pytest.raises(ValueError, match="together"):
        F.lif_forward(x, 0.3, 0.3, 1.0, 0.05, decay=0.9)


@pytest.mark.parametrize("rule", ["double", "float32"])
def test_rule_in_the_torch_op_native_and_reference_and_dsrlifnode(rule):
    ensure_torch_native()
    x = _rule_input()
    want = _reference(x, rule)
    decay, gain = F.lif_coefficients(1.0, 0.05, rule)
    for native in (True, False):
        y, _ = ops.lif_spike(x, 0.3, 0.3, 1.0, 0.05, native=native, decay=decay, gain=gain)
        assert_bit_equal(y, want, f"op native={native}")
    assert ops.has_native_kernel("cpu")
    from dsr_deploy.neuron import DSRLIFNode

    node = DSRLIFNode(T=None, v_threshold=0.3, tau=1.0, delta_t=0.05, alpha=0.3, v_threshold_lower_bound=5e-4,
                      lif_rule=rule)
    with torch.no_grad():
        assert_bit_equal(node(x), want, "DSRLIFNode")
    info = find_neurons(torch.nn.Sequential(node))[0]
    assert info.lif_rule == rule and info.gain == f32(gain) and info.layout == "TB"
    # TorchScript: the scripted reference with the layer's coefficients as constants.
    scripted = torch.jit.script(inference_copy(torch.nn.Sequential(node), "script"))
    assert_bit_equal(scripted(x), want, "TorchScript")
    with pytest.raises(ValueError, match="lif_rule"):
        DSRLIFNode(lif_rule="bf16")


@pytest.mark.parametrize("rule", ["double", "float32"])
def test_rule_in_onnx_bodies_and_the_ort_library(rule):
    ort = pytest.importorskip("onnxruntime")
    import onnx
    from _native_util import dsr_node_model

    from dsr_deploy.export.onnx_functions import function_proto, step_function_proto
    from dsr_deploy.export.onnx_writer import portable
    from dsr_deploy.export.streaming import LIF_STEP_OP

    x = _rule_input()
    want = _reference(x, rule)
    decay, gain = F.lif_coefficients(1.0, 0.05, rule)
    attrs = dict(v_threshold=f32(0.3), alpha=f32(0.3), tau=1.0, delta_t=f32(0.05), decay=f32(decay), gain=f32(gain))
    model = dsr_node_model("DSRLIFSpike", attrs)
    shaped = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(x.shape))
    model.graph.input[0].CopyFrom(shaped)  # the Scan body needs shapes to run
    with_fn = onnx.ModelProto()
    with_fn.CopyFrom(model)
    with_fn.functions.append(function_proto("lif", "scan", 17))
    runs = {"function fallback": with_fn, "portable": portable(with_fn)}
    lib = ops.find_library("libdsr_ort_ops.so")
    for what, m in runs.items():
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        assert_bit_equal(torch.from_numpy(sess.run(None, {"x": x.numpy()})[0]), want, what)
    # The streaming step body with the same attributes, one step at a time.
    step = dsr_node_model(LIF_STEP_OP, attrs, step=True)
    step.functions.append(step_function_proto("lif", LIF_STEP_OP, 17))
    sess = ort.InferenceSession(step.SerializeToString(), providers=["CPUExecutionProvider"])
    v = np.zeros(x.shape[1:], np.float32)
    for t in range(x.shape[0]):
        y_t, v = sess.run(None, {"x": x[t].numpy(), "v": v})
        assert_bit_equal(torch.from_numpy(y_t), want[t], f"step body t={t}")
    if lib is None:
        pytest.skip("libdsr_ort_ops.so is not built here (needs the ONNX Runtime C API header: "
                    "dsr-deploy plugins build --ort-root DIR); the function bodies were checked")
    so = ort.SessionOptions()
    so.register_custom_ops_library(str(lib))
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    assert_bit_equal(torch.from_numpy(sess.run(None, {"x": x.numpy()})[0]), want, "ORT dsr kernel")


# ---------------------------------------------------------------------------------------------------------
# Recognition.


def test_authors_neurons_are_recognised_with_their_parameters():
    net = A.resnet_lif_fixed_vth()
    infos = find_neurons(net)
    assert len(infos) == 7
    assert all(n.source == "authors" and n.layout == "flat" and n.timesteps == A.CIFAR_T for n in infos)
    assert all(n.lif_rule == "float32" and n.gain == GAIN_FLOAT32 for n in infos)
    assert not isinstance(net.layer1.act1.Vth, torch.nn.Parameter)  # plain tensor threshold
    assert infos[0].v_threshold == float(torch.tensor(0.3) * 0.8)  # their Vth, scaled in place in float32
    trained = find_neurons(A.resnet_if())
    assert isinstance(A.resnet_if().act.Vth, torch.nn.Parameter)
    assert all(n.kind == "if" and n.lif_rule is None and n.layout == "flat" for n in trained)
    d = trained[0].to_dict()
    assert d["layout"] == "flat" and d["timesteps"] == A.CIFAR_T and "lif_rule" in d
    # Structure, not name alone: an IFNeuron without their attributes is not a DSR neuron.
    class IFNeuron(torch.nn.Module):
        def forward(self, x):
            return x
    assert find_neurons(torch.nn.Sequential(IFNeuron())) == []


def test_threshold_below_bound_is_clamped():
    net = A.resnet_if()
    with torch.no_grad():
        net.act.Vth.fill_(0.001)  # below Vth_bound 0.01
    info = next(n for n in find_neurons(net) if n.name == "act")
    assert info.clamped and info.v_threshold == f32(0.01)


@pytest.mark.parametrize("name,shape", CASES)
def test_inference_copy_matches_their_forward(name, shape):
    net = getattr(A, name)()
    x = torch.rand(shape, generator=torch.Generator().manual_seed(1)) * 2
    want = _their_layers(net, x)
    inf = inference_copy(net)
    sink: list = []
    for m in inference_modules(inf):
        m.probe = sink
    with torch.no_grad():
        assert_bit_equal(inf(x), want["logits"], "logits")
    for (i, _current, got), ref in zip(sink, want["layers"]):
        assert_bit_equal(got.flatten(0, 1), ref, f"layer {i}")
    assert len(sink) == len(want["layers"])


# ---------------------------------------------------------------------------------------------------------
# Direct export.


def _their_layers(net, x) -> dict:
    """Their forward: logits and every neuron's [T*B, ...] output, in find_neurons order."""
    mods = list(find_neuron_modules(net).values())
    outs: dict = {}
    hooks = [m.register_forward_hook(lambda m, a, o, k=k: outs.setdefault(k, o)) for k, m in enumerate(mods)]
    try:
        with torch.no_grad():
            logits = net(x)
    finally:
        for h in hooks:
            h.remove()
    return {"logits": logits, "layers": [outs[k] for k in range(len(mods))], "modules": mods}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each lookalike exported once (all three formats), with its context for the probe variants."""
    from dsr_deploy.export import export_model

    out = {}
    for name, shape in CASES:
        net = getattr(A, name)()
        folder = tmp_path_factory.mktemp(name) / "export"
        manifest = export_model(net, shape, folder, spec=f"{NETS}:{name}")
        out[name] = (net, shape, folder, manifest)
    return out


@pytest.mark.parametrize("name,shape", CASES)
def test_direct_export_manifest_keeps_the_models_io(exported, name, shape):
    net, shape, folder, m = exported[name]
    on_disk = json.loads((folder / "manifest.json").read_text())
    assert on_disk["io"] == m["io"]
    lif = name.endswith("lif")
    T = A.DVS_T if name.startswith("vgg") else A.CIFAR_T
    assert m["io"] == {"input_layout": "BT" if name.startswith("vgg") else "static", "output": "logits", "T": T,
                       "encode": "none" if name.startswith("vgg") else "direct",
                       "readout": "lif-rate" if lif else "mean", "source": "model"}
    assert m["T"] == T and m["input_shape"] == list(shape)
    assert all(n["layout"] == "flat" and n["timesteps"] == T for n in m["neurons"])
    assert all(n["lif_rule"] == ("float32" if lif else None) for n in m["neurons"])
    assert {a["format"] for a in m["artifacts"]} == {"torchscript", "onnx", "pt2"}
    assert all(a["dynamic_T"] is False for a in m["artifacts"])


def _input(shape, batch: int, seed: int) -> torch.Tensor:
    s = (batch, *shape[1:])
    return torch.rand(s, generator=torch.Generator().manual_seed(seed)) * 2


@pytest.mark.parametrize("name,shape", CASES)
def test_torchscript_and_pt2_bit_exact_per_layer(exported, name, shape):
    from dsr_deploy.export import ExportContext
    from dsr_deploy.export.pt2_writer import export_program
    from dsr_deploy.export.torchscript_writer import script_model

    net, shape, folder, m = exported[name]
    x = _input(shape, 3, 11)  # another batch than the example's: dynamic batch
    want = _their_layers(net, x)
    ts = torch.jit.load(str(folder / "model.ts"))
    pt2 = torch.export.load(str(folder / "model.pt2")).module()
    with torch.no_grad():
        assert_bit_equal(ts(x), want["logits"], "TorchScript logits")
        assert_bit_equal(pt2(x), want["logits"], "pt2 logits")
    assert want["logits"].shape == (3, 10)
    ctx = ExportContext(model=net, neurons=find_neurons(net), input_shape=tuple(shape), io=m["io"])
    probes = {"TorchScript": script_model(ctx, probe=True)[0], "pt2": export_program(ctx, probe=True).module()}
    for what, probe in probes.items():
        with torch.no_grad():
            outs = probe(x)
        n = len(want["layers"])
        assert len(outs) == 1 + 2 * n  # output, each call's spikes, each call's input
        for k, (got, ref) in enumerate(zip(outs[1:1 + n], want["layers"])):
            assert got.shape[:2] == (m["io"]["T"], 3), (what, k, got.shape)
            assert_bit_equal(got.flatten(0, 1), ref, f"{what} layer {k}")


def _onnx_with_node_io(model):
    """A copy of ``model`` whose every dsr node's input and output are graph outputs; returns it and the
    [(layer index, input name, output name)] of the nodes."""
    import onnx
    from onnx import helper

    from dsr_deploy.export.onnx_writer import dsr_nodes

    m = onnx.ModelProto()
    m.CopyFrom(model)
    taps = []
    for n in dsr_nodes(m):
        meta = {p.key: p.value for p in n.metadata_props}
        taps.append((int(meta["dsr.layer_index"]), n.input[0], n.output[0]))
    have = {o.name for o in m.graph.output}
    for _, i, o in taps:
        for t in (i, o):
            if t not in have:
                m.graph.output.append(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
                have.add(t)
    return m, taps


@pytest.mark.parametrize("name,shape", CASES)
def test_onnx_teacher_forced_per_layer(exported, name, shape):
    ort = pytest.importorskip("onnxruntime")
    import onnx

    from dsr_deploy.export.onnx_writer import portable

    net, shape, folder, m = exported[name]
    model = onnx.load(str(folder / "model.onnx"))
    assert [i.name for i in model.graph.input] == ["input"]
    in_dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert in_dims[0] == "batch" and in_dims[1:] == list(shape[1:])  # the model's own input, dynamic batch
    tapped, taps = _onnx_with_node_io(model)
    assert len(taps) == len(m["neurons"])
    mods = list(find_neuron_modules(net).values())
    x = _input(shape, 3, 12).numpy()
    variants = {"function fallback": (tapped, None), "portable": (portable(tapped), None)}
    lib = ops.find_library("libdsr_ort_ops.so")
    if lib is not None:
        variants["dsr custom ops"] = (tapped, lib)
    for what, (mp, library) in variants.items():
        so = ort.SessionOptions()
        if library is not None:
            so.register_custom_ops_library(str(library))
        sess = ort.InferenceSession(mp.SerializeToString(), so, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        res = dict(zip(names, sess.run(None, {"input": x})))
        assert res["output"].shape == (3, 10), what
        for idx, i, o in taps:
            node_in, node_out = torch.from_numpy(res[i]), torch.from_numpy(res[o])
            assert node_in.shape[:2] == (m["io"]["T"], 3)
            with torch.no_grad():
                ref = mods[idx](node_in.flatten(0, 1))  # their neuron, [T*B, ...]
            assert_bit_equal(node_out.flatten(0, 1), ref, f"{what} layer {idx}")
    if lib is None:
        pytest.skip("libdsr_ort_ops.so is not built here (needs the ONNX Runtime C API header: "
                    "dsr-deploy plugins build --ort-root DIR); function fallback and portable were checked")


def test_lif_export_carries_the_float32_coefficients_into_every_format(exported):
    import onnx

    from dsr_deploy.export.onnx_writer import dsr_nodes

    net, shape, folder, m = exported["resnet_lif"]
    for n in dsr_nodes(onnx.load(str(folder / "model.onnx"))):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        assert attrs["gain"] == np.float32(GAIN_FLOAT32) and attrs["decay"] == np.float32(1 - GAIN_DOUBLE)
    ep = torch.export.load(str(folder / "model.pt2"))
    calls = [n for n in ep.graph.nodes if n.op == "call_function" and "lif_spike" in str(n.target)]
    assert len(calls) == 7 and all(GAIN_FLOAT32 in n.args for n in calls)


# ---------------------------------------------------------------------------------------------------------
# CLI.


def test_cli_export_and_inspect_of_the_authors_model(tmp_path, capsys):
    code, out, err = run_cli(capsys, "inspect", f"{NETS}:vgg_lif")
    assert code == 0, err
    assert "authors" in out and "float32" in out and "T*B (T=3)" in out and "0.0487705469" in out
    folder = tmp_path / "e"
    code, out, err = run_cli(capsys, "export", f"{NETS}:resnet_if", "--input-shape", "2,3,8,8", "--format", "onnx",
                          "--out", str(folder))
    assert code == 0, err
    assert json.loads((folder / "manifest.json").read_text())["io"]["input_layout"] == "static"
    code, out, err = run_cli(capsys, "inspect", str(folder))
    assert code == 0 and "source=model" in out


@pytest.mark.parametrize("command", ["export", "inspect"])
def test_cli_model_without_a_recognisable_neuron(tmp_path, capsys, command):
    args = [command, f"{NETS}:no_neuron"] + (["--input-shape", "2,3,8,8", "--out", str(tmp_path / "o")]
                                              if command == "export" else [])
    code, out, err = run_cli(capsys, *args)
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err  # one line, no traceback
    text = lines[0]
    assert "IFNeuron / LIFNeuron" in text and "SpikingJelly" in text and "ParametricLIFNode" in text
    assert "zoo:" not in text  # no hint to swap another family's neurons for DSR's (issue 25)
    assert not (tmp_path / "o").exists()


def test_streaming_refuses_the_flat_layout(tmp_path):
    from dsr_deploy.errors import UserError
    from dsr_deploy.export import export_model

    with pytest.raises(UserError, match="multi-step mode"):
        export_model(A.resnet_lif(), (4, *A.CIFAR_SHAPE), tmp_path / "s", mode="streaming")


@pytest.mark.parametrize("rule", ["double", "float32"])
def test_rule_through_streaming_step_exports(tmp_path, rule):
    """Our DSRLIFNode with each rule: the streaming step module (both lowerings) and its ONNX export (stock ORT)
    fed one step at a time equal the multi-step network of that rule."""
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    from dsr_deploy.export import export_model
    from dsr_deploy.export import streaming as S
    from dsr_deploy.neuron import DSRLIFNode

    ensure_torch_native()
    net = torch.nn.Sequential(torch.nn.Identity(), DSRLIFNode(T=None, v_threshold=0.3, tau=1.0, delta_t=0.05,
                                                               alpha=0.3, v_threshold_lower_bound=5e-4,
                                                               lif_rule=rule)).eval()
    x = _rule_input().reshape(6, 40, 100)
    with torch.no_grad():
        ref = net(x)
    assert_bit_equal(ref, _reference(x, rule), "multi-step")
    for lowering in ("functional", "ops"):
        sm = S.build_streaming_module(net, x[0], lowering)
        states = sm.zero_states(x.shape[1])
        ys = []
        with torch.no_grad():
            for t in range(x.shape[0]):
                y, *states = sm(x[t], *states)
                ys.append(y)
        assert_bit_equal(torch.stack(ys), ref, f"streaming {lowering}")
    out = tmp_path / "s"
    export_model(net, tuple(x.shape), out, mode="streaming", formats=("onnx",))
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    session = StreamSession.from_manifest(lambda feeds: dict(zip(names, sess.run(None, dict(feeds)))), out)
    assert_bit_equal(torch.from_numpy(session.run(x.numpy())), ref, "streaming ONNX")


@pytest.mark.parametrize("name,shape", CASES)
def test_verify_proves_the_authors_exports_neuron_exact(exported, name, shape):
    """verify on a direct export of their model: the reference is their own forward ([B, ...] in, logits out),
    every backend's neurons are fed their [T*B, ...] inputs (unflattened for the dsr ops) and match bit for bit."""
    from dsr_deploy.verify import verify_folder

    net, shape, folder, m = exported[name]
    report = verify_folder(folder, trust_model_code=True)  # the test's own model file
    assert report["passed"], json.dumps([r for r in report["runs"] if not r["passed"]], indent=1)[-3000:]
    ran = [r for r in report["runs"] if r["status"] == "ok"]
    assert {r["format"] for r in ran} >= {"pytorch", "torchscript", "onnx", "pt2"}
    for r in ran:
        assert r["neuron_exact"] is True and r["top1_agreement"] == 1.0
        assert all(layer["neuron_spikes_total"] > 0 for layer in r["layers"])
        assert len(r["layers"]) == len(m["neurons"])
