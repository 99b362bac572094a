"""``export --precision int8 --int8-layout nhwc`` (dsr_deploy/export/int8/layout.py): the int8 graph written
channels-last for ONNX Runtime's CPU.

Structure (every quantised convolution a channels-last ``com.microsoft.QLinearConv``, no transpose between two of
them), the same outputs as the portable (nchw) int8 file bit for bit -- both run the same ONNX Runtime kernels on
the same codes, so this holds on any CPU -- with and without the custom-op library, probes in the original layout,
verify's teacher-forced neuron check, streaming, untrusted metadata and the CLI errors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from _cli_util import run_cli
from _native_util import ensure_ort_library
from test_export_int8 import IF, LIF, SHAPE, T, _calibration

from dsr_deploy.errors import UserError
from dsr_deploy.export import Int8Options, export_model
from dsr_deploy.neuron import DSRIFNode, DSRLIFNode
from dsr_deploy.runtime import load_runner

ort = pytest.importorskip("onnxruntime")


class Net(torch.nn.Module):
    """A pre-activation residual block between an analog first layer and a readout: a BatchNorm after the
    residual Add of a convolution and spikes (folded into them, :mod:`dsr_deploy.export.int8.residual`), a 1x1
    convolution, three quantised convolutions."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(11)
        self.c0, self.n0 = torch.nn.Conv2d(2, 4, 3, padding=1), DSRIFNode(T=None, **IF)
        self.c1, self.bn1, self.n1 = torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.BatchNorm2d(4), \
            DSRLIFNode(T=None, **LIF)
        self.c2 = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.bn2, self.n2 = torch.nn.BatchNorm2d(4), DSRIFNode(T=None, **IF)
        self.c3, self.n3 = torch.nn.Conv2d(4, 5, 1), DSRIFNode(T=None, **IF)
        self.fc, self.n4 = torch.nn.Linear(5 * 36, 3), DSRIFNode(T=None, **IF)
        with torch.no_grad():
            for bn in (self.bn1, self.bn2):
                bn.running_mean.uniform_(-0.2, 0.2)
                bn.running_var.uniform_(0.5, 1.5)
                bn.weight.uniform_(0.5, 1.5)
            for conv in (self.c0, self.c1, self.c2, self.c3):
                conv.weight.mul_(3.0)
            self.fc.weight.mul_(8.0)
        self.eval()

    def forward(self, x):
        t, b = x.shape[0], x.shape[1]

        def fold(m, v):
            y = m(v.flatten(0, 1))
            return y.reshape(t, b, *y.shape[1:])

        s0 = self.n0(fold(self.c0, x))
        a = self.n1(fold(self.bn1, fold(self.c1, s0)))
        r = fold(self.c2, a) + s0
        s2 = self.n2(fold(self.bn2, r))
        s3 = self.n3(fold(self.c3, s2))
        return self.n4(fold(self.fc, s3.flatten(2)))


def int8_options(**kw):
    """Int8Options from export flags' names (int8_neuron=..., int8_layout=...)."""
    return Int8Options(**{k[5:] if k.startswith("int8_") else k: v for k, v in kw.items()})


def _export(tmp_path, name, **extra):
    manifest = export_model(Net(), SHAPE, tmp_path / name, formats=("onnx",), precision="int8",
                            int8=int8_options(calibration=_calibration(), **extra))
    return manifest, onnx.load(str(tmp_path / name / "model.onnx"))


def _run(folder, x, custom_ops):
    runner = load_runner(folder, backend="onnxruntime", custom_ops=custom_ops).load()
    try:
        return runner.infer({"input": x})["output"]
    finally:
        runner.release()


def assert_nhwc_equals_nchw(root):
    """``root/nhwc`` gives ``root/nchw``'s outputs bit for bit, with the custom ops off and required."""
    x = _calibration(n=3, seed=5)
    want = _run(root / "nchw", x, "off")
    assert (want != 0).any()
    for mode in ("off", "require"):
        got = _run(root / "nhwc", x, mode)
        assert np.array_equal(got.view(np.int32), want.view(np.int32)), mode


@pytest.mark.parametrize("neuron,all_layers", [("qdq", False), ("quantized", False), ("quantized", True)])
def test_nhwc_structure_and_same_outputs_as_nchw(tmp_path, neuron, all_layers):
    ensure_ort_library()
    opts = {"int8_neuron": neuron, "int8_all_layers": all_layers}
    _export(tmp_path, "nchw", **opts)
    manifest, model = _export(tmp_path, "nhwc", int8_layout="nhwc", **opts)
    record = manifest["artifacts"][0]["quantization"]
    # c1, c2, c3 and the spike term of the residual Add (its BatchNorm folded: a depthwise 1x1 scale on the
    # spikes, tests/test_int8_residual.py); --int8-all-layers: the analog first convolution too
    convs = 5 if all_layers else 4
    assert record["layout"] == "nhwc" and record["channels_last"]["qlinear_convs"] == convs
    assert any(o.domain == "com.microsoft" for o in model.opset_import)
    qconvs = [n for n in model.graph.node if n.op_type in ("QLinearConv", "SpikeQLinearConv")]
    assert len(qconvs) == convs
    assert all(n.domain == ("dsr" if n.op_type == "SpikeQLinearConv" else "com.microsoft") for n in qconvs)
    assert all({a.name: a.i for a in n.attribute}["channels_last"] == 1 for n in qconvs)
    # The convolutions on spikes (c1, c2, c3) are event-driven; the analog first layer and the residual's depthwise
    # scale (group C) stay ONNX Runtime's QLinearConv.
    assert record["event_convs"] == 3 == sum(n.op_type == "SpikeQLinearConv" for n in qconvs)
    # Only the first layer's input or output and the readout's input change layout: nothing between quantised
    # layers.
    transposes = [n for n in model.graph.node if n.op_type == "Transpose"]
    assert len(transposes) == 2
    assert not any(n.op_type == "Conv" and any("int8" in i for i in n.input) for n in model.graph.node)
    assert_nhwc_equals_nchw(tmp_path)


def test_nhwc_probes_give_each_layer_in_the_original_layout(tmp_path):
    """Probes put back the nodes only they need and transpose channels-last spikes: each layer's spikes equal the
    portable file's, shape and bits."""
    from dsr_deploy.export.onnx_neurons import META_PROBE_NODES, probe_nodes
    from dsr_deploy.export.onnx_writer import add_probe_outputs

    _, nchw = _export(tmp_path, "nchw", int8_neuron="quantized")
    _, nhwc = _export(tmp_path, "nhwc", int8_neuron="quantized", int8_layout="nhwc")
    # The spike DequantizeLinear ops no layer reads are kept out of the inference graph, for probes only.
    assert META_PROBE_NODES in {p.key for p in nhwc.metadata_props} and probe_nodes(nhwc)
    x = _calibration(n=3, seed=6)
    outs = []
    for model in (nchw, nhwc):
        probe = add_probe_outputs(model)
        sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs() if o.name.startswith("spikes_")]
        outs.append(dict(zip(names, sess.run(names, {"input": x}))))
    assert len(outs[1]) == 5 and outs[0].keys() == outs[1].keys()
    for k, v in outs[0].items():
        assert v.shape == outs[1][k].shape and np.array_equal(v, outs[1][k]), k
    assert any((v != 0).any() for v in outs[1].values())


@pytest.mark.parametrize("neuron", ["qdq", "quantized"])
def test_verify_teacher_forces_the_nhwc_neurons(tmp_path, neuron):
    from dsr_deploy.verify import Reference, Run
    from dsr_deploy.verify.checks import run_neuron_check

    ensure_ort_library()
    _export(tmp_path, "nhwc", int8_neuron=neuron, int8_layout="nhwc")
    ref = Reference(Net())
    x = _calibration(n=3, seed=7)
    out, calls = ref.run(x)
    infos = {n.index: n for n in ref.infos}
    for mode in ("off", "require"):
        run = Run("model.onnx", "onnx", "onnxruntime", precision="int8")
        with load_runner(tmp_path / "nhwc", backend="onnxruntime", custom_ops=mode) as runner:
            run_neuron_check(run, runner, [("x", x, out, calls)], infos, ref.neurons())
        assert run.neuron_checked, run.neuron_note
        assert len(run.layers) == 5
        assert all(layer.neuron_equal == layer.neuron_total > 0 for layer in run.layers), mode


def test_nhwc_streaming_step_equals_multistep(tmp_path):
    from dsr_deploy.export import export_model

    cal = _calibration()
    _export(tmp_path, "m", int8_layout="nhwc")
    manifest = export_model(Net(), SHAPE, tmp_path / "s", mode="streaming", formats=("onnx",), precision="int8",
                                int8=Int8Options(calibration=cal, layout="nhwc"))
    step = onnx.load(str(tmp_path / "s" / "model.onnx"))
    assert any(n.op_type == "QLinearConv" and n.domain == "com.microsoft" for n in step.graph.node)
    x = _calibration(n=3, seed=9)
    want = _run(tmp_path / "m", x, "off")
    sess = ort.InferenceSession(str(tmp_path / "s" / "model.onnx"), providers=["CPUExecutionProvider"])
    states = manifest["states"]
    v = {s["input"]: np.zeros((3, *s["shape"]), np.float32) for s in states}
    got = []
    for t in range(T):
        outs = sess.run([manifest["outputs"][0]] + [s["output"] for s in states], {manifest["inputs"][0]: x[t], **v})
        got.append(outs[0])
        v = {s["input"]: o for s, o in zip(states, outs[1:])}
    assert (want != 0).any()
    assert np.array_equal(np.stack(got).view(np.int32), want.view(np.int32))


def test_nhwc_metadata_is_checked(tmp_path):
    import json

    from dsr_deploy.export.onnx_neurons import META_CHANNELS_LAST, META_PROBE_NODES, channels_last_map, probe_nodes
    from dsr_deploy.manifest import read_manifest

    _, model = _export(tmp_path, "nhwc", int8_neuron="quantized", int8_layout="nhwc")
    path = tmp_path / "nhwc" / "manifest.json"
    assert read_manifest(path.parent)["artifacts"][0]["quantization"]["layout"] == "nhwc"
    data = json.loads(path.read_text())
    data["artifacts"][0]["quantization"]["layout"] = "nwhc"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="layout"):
        read_manifest(path.parent)
    perms = channels_last_map(model)
    assert perms and all(sorted(p) == list(range(len(p))) for p in perms.values())
    for key, bad, reader in ((META_CHANNELS_LAST, '{"x": [0, 0, 1]}', channels_last_map),
                             (META_CHANNELS_LAST, "[1, 2]", channels_last_map),
                             (META_PROBE_NODES, '["%%%"]', probe_nodes),
                             (META_PROBE_NODES, "{", probe_nodes)):
        tampered = onnx.ModelProto()
        tampered.CopyFrom(model)
        next(p for p in tampered.metadata_props if p.key == key).value = bad
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            reader(tampered)


def test_nhwc_cli_errors_and_build_engine_refuses_it(tmp_path, capsys):
    from dsr_deploy.engine import build_engine

    code, _, err = run_cli(capsys, "export", "zoo:digits-cnn", "--format", "onnx", "--precision", "int8",
                           "--int8-layout", "nhwc8", "--out", str(tmp_path / "z"))
    assert code == 2 and "unknown --int8-layout" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "export", "zoo:digits-cnn", "--format", "onnx", "--int8-layout", "nhwc",
                           "--out", str(tmp_path / "y"))
    assert code == 2 and "apply to --precision int8" in err
    _export(tmp_path, "nhwc", int8_layout="nhwc")
    with pytest.raises(UserError, match="--int8-layout nchw"):
        build_engine(tmp_path / "nhwc" / "model.onnx", tmp_path / "model.engine")
    assert not (tmp_path / "model.engine").exists()
