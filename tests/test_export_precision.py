"""``export --precision float16 | bfloat16``: the ONNX activations, dsr nodes and function bodies in that dtype,
membranes float32 (as the reference and every kernel hold them), and the float16 rule of the fidelity contract
checked teacher-forced per layer through the ONNX Runtime runner: each dsr node, given the very input ONNX
Runtime computed for it, must give the reference's spikes (>= 99.9 %; the function body is in fact exact).
TensorRT builds of these models (strongly typed) need a GPU: scripts/gpu_check.py runs one."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto

from dsr_deploy import functional as F
from dsr_deploy.errors import UserError
from dsr_deploy.export import export_model
from dsr_deploy.neuron import DSRIFNode, DSRLIFNode
from dsr_deploy.runtime import load_runner

SHAPE = (6, 2, 5)
LIF = dict(v_threshold=0.3, tau=1.0, delta_t=0.05, alpha=0.3)
IF = dict(v_threshold=0.5, alpha=0.5)


def _mlp():
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), DSRIFNode(T=None, **IF), torch.nn.Linear(8, 4),
                               DSRLIFNode(T=None, **LIF)).eval()


def _neurons():
    return torch.nn.Sequential(DSRIFNode(T=None, **IF), DSRLIFNode(T=None, **LIF)).eval()


def _dsr_nodes(model):
    return [n for n in model.graph.node if n.domain == "dsr"]


@pytest.mark.parametrize("precision, elem", [("float16", TensorProto.FLOAT16), ("bfloat16", TensorProto.BFLOAT16)])
def test_half_export_types(tmp_path, precision, elem):
    manifest = export_model(_mlp(), SHAPE, tmp_path / "e", formats=("onnx",), precision=precision)
    assert manifest["dtype"] == precision
    model = onnx.load(str(tmp_path / "e" / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert model.graph.input[0].type.tensor_type.elem_type == elem
    assert model.graph.output[0].type.tensor_type.elem_type == elem
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type
             for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    assert all(types[n.output[0]] == elem for n in _dsr_nodes(model))  # the dsr nodes are in that dtype
    for fn in model.functions:  # the body: x cast up exactly, float32 membrane (Scan state), spikes cast down
        ops = [n.op_type for n in fn.node]
        assert ops[0] == "Cast" and ops[-1] == "Cast"
        assert [a.i for a in fn.node[0].attribute if a.name == "to"] == [TensorProto.FLOAT]
        assert [a.i for a in fn.node[-1].attribute if a.name == "to"] == [elem]
        scan = next(n for n in fn.node if n.op_type == "Scan")
        body = next(a.g for a in scan.attribute if a.name == "body")
        assert all(i.type.tensor_type.elem_type == TensorProto.FLOAT for i in body.input)


def _with_layer_io(path, out_path):
    """The model with every dsr node's input and output as extra graph outputs (teacher forcing)."""
    model = onnx.load(str(path))
    pairs = []
    for node in _dsr_nodes(model):
        for name in (node.input[0], node.output[0]):
            if name not in {o.name for o in model.graph.output}:
                model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
        pairs.append((node.op_type, node.input[0], node.output[0]))
    onnx.save(model, str(out_path))
    return pairs


def test_float16_rule_teacher_forced_through_the_ort_runner(tmp_path):
    export_model(_mlp(), SHAPE, tmp_path / "e", formats=("onnx",), precision="float16")
    pairs = _with_layer_io(tmp_path / "e" / "model.onnx", tmp_path / "probe.onnx")
    runner = load_runner(tmp_path / "probe.onnx", backend="onnxruntime").load()
    assert runner.inputs()[0].dtype == "float16"
    x = (torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)) * 3).to(torch.float16)
    outs = runner.infer({"input": x.numpy()})
    assert outs["output"].dtype == np.float16
    fired = 0
    for op, xin, yout in pairs:
        layer_in = torch.from_numpy(outs[xin])
        assert layer_in.dtype == torch.float16
        if op == "DSRIFSpike":
            want, _ = F.if_forward(layer_in, IF["v_threshold"], IF["alpha"])
        else:
            want, _ = F.lif_forward(layer_in, LIF["v_threshold"], LIF["alpha"], LIF["tau"], LIF["delta_t"])
        got = torch.from_numpy(outs[yout])
        agreement = float((got == want).float().mean())
        assert agreement >= 0.999, (op, agreement)
        assert torch.equal(got.view(torch.int16), want.view(torch.int16)), op  # the body is exact, bit for bit
        fired += int((want != 0).sum())
    assert fired > 0


def test_bfloat16_function_bodies_are_exact_in_ort(tmp_path):
    """ONNX Runtime's CPU provider has no bfloat16 MatMul / Conv (that path is for TensorRT and the CUDA EP), but
    the dsr function bodies run: a neuron-only model, fed and read as raw bfloat16 OrtValues."""
    import onnxruntime as ort

    export_model(_neurons(), SHAPE, tmp_path / "e", formats=("onnx",), precision="bfloat16")
    sess = ort.InferenceSession(str(tmp_path / "e" / "model.onnx"), providers=["CPUExecutionProvider"])
    x = (torch.randn(SHAPE, generator=torch.Generator().manual_seed(1)) * 3).to(torch.bfloat16)
    feed = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(x.view(torch.int16).numpy(), TensorProto.BFLOAT16)
    out = sess.run_with_ort_values(["output"], {"input": feed})[0]
    got = torch.empty(SHAPE, dtype=torch.bfloat16)
    import ctypes

    ctypes.memmove(got.data_ptr(), out.data_ptr(), got.numel() * 2)
    with torch.no_grad():
        want = _neurons()(x)
    assert want.dtype == torch.bfloat16 and bool((want != 0).any())
    assert torch.equal(got.view(torch.int16), want.view(torch.int16))


def test_precision_errors(tmp_path):
    with pytest.raises(UserError, match="unknown --precision 'int4'"):
        export_model(_mlp(), SHAPE, tmp_path / "a", formats=("onnx",), precision="int4")
    with pytest.raises(UserError, match="--precision float16 is written for onnx only .*torchscript"):
        export_model(_mlp(), SHAPE, tmp_path / "b", formats=("onnx", "torchscript"), precision="float16")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cli_precision(tmp_path, capsys):
    from export_nets import nets_file

    from dsr_deploy.cli import main

    with pytest.raises(SystemExit) as e:
        main(["export", f"{nets_file()}:ours_neuron_net", "--input-shape", "5,2,4,6", "--out", str(tmp_path / "x"),
              "--precision", "float16"])  # --format all: torchscript and pt2 cannot
    assert e.value.code == 2 and "pass --format onnx" in capsys.readouterr().err
    main(["export", f"{nets_file()}:ours_neuron_net", "--input-shape", "5,2,4,6", "--out", str(tmp_path / "h"),
          "--format", "onnx", "--precision", "float16", "--json"])
    model = onnx.load(str(tmp_path / "h" / "model.onnx"))
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16


def test_streaming_float16_steps_teacher_forced(tmp_path):
    """The streaming export in float16: x_t / y_t half, membranes float32; every step node, fed what ONNX Runtime
    computed for it, gives the reference step's spikes and membrane bit for bit."""
    import onnxruntime as ort

    from dsr_deploy.export import export_model

    net = _mlp()
    manifest = export_model(net, SHAPE, tmp_path / "s", mode="streaming", formats=("onnx",), precision="float16")
    assert manifest["dtype"] == "float16" and all(s["dtype"] == "float32" for s in manifest["states"])
    model = onnx.load(str(tmp_path / "s" / "model.onnx"))
    types = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    assert types["x_t"] == TensorProto.FLOAT16 and types["v_in_0"] == TensorProto.FLOAT
    nodes = _dsr_nodes(model)
    extra = []
    for node in nodes:
        extra += [n for n in list(node.input) + list(node.output) if n not in {o.name for o in model.graph.output}]
    for name in dict.fromkeys(extra):
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    onnx.save(model, str(tmp_path / "probe.onnx"))
    sess = ort.InferenceSession(str(tmp_path / "probe.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    x = (torch.randn(SHAPE, generator=torch.Generator().manual_seed(2)) * 3).to(torch.float16)
    v = [np.zeros((SHAPE[1], 8), np.float32), np.zeros((SHAPE[1], 4), np.float32)]
    fired = 0
    for t in range(SHAPE[0]):
        res = dict(zip(names, sess.run(None, {"x_t": x[t].numpy(), "v_in_0": v[0], "v_in_1": v[1]})))
        for node in nodes:
            xin, vin = (torch.from_numpy(res[n]) for n in node.input[:2])
            assert xin.dtype == torch.float16 and vin.dtype == torch.float32
            if node.op_type == "DSRIFStep":
                y, vn = F.if_step(xin, vin, IF["v_threshold"], IF["alpha"])
            else:
                y, vn = F.lif_step(xin, vin, LIF["v_threshold"], LIF["alpha"], LIF["tau"], LIF["delta_t"])
            assert torch.equal(torch.from_numpy(res[node.output[0]]).view(torch.int16), y.view(torch.int16))
            assert torch.equal(torch.from_numpy(res[node.output[1]]), vn)
            fired += int((y != 0).sum())
        v = [res["v_out_0"], res["v_out_1"]]
    assert fired > 0


# ---- bfloat16 CNNs (Conv + BatchNorm) ----------------------------------------------------------------------------
# ONNX Runtime's CPU provider has no bfloat16 Conv (opset 22), BatchNormalization, Gemm or pooling: the export is
# run there as a twin whose non-dsr compute nodes take float32 between Casts (bfloat16 values widened exactly,
# results rounded back to bfloat16, as a GPU's float accumulation does), while the dsr nodes run as exported, in
# bfloat16. The neurons are then checked teacher-forced: each dsr node, given the input ORT computed for it, gives
# the reference's spikes bit for bit. (TensorRT and the CUDA EP run the bfloat16 graph natively; a GPU only.)
_SHAPE_OPS = {"Shape", "Squeeze", "Unsqueeze", "Reshape", "Flatten", "Transpose", "Concat", "Constant", "Slice",
              "Gather", "Cast"}


def _float32_twin(model):
    from onnx import helper

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type
             for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    nodes, extra_out = [], []
    for k, n in enumerate(model.graph.node):
        if n.domain == "dsr":
            extra_out += [n.input[0], n.output[0]]
        if n.domain == "dsr" or n.op_type in _SHAPE_OPS:
            nodes.append(n)
            continue
        for i, name in enumerate(n.input):
            if types.get(name) == TensorProto.BFLOAT16:
                nodes.append(helper.make_node("Cast", [name], [f"{name}__f32_{k}"], to=TensorProto.FLOAT))
                n.input[i] = f"{name}__f32_{k}"
        outs = list(n.output)
        for i, name in enumerate(outs):
            if types.get(name) == TensorProto.BFLOAT16:
                n.output[i] = f"{name}__f32"
        nodes.append(n)
        nodes += [helper.make_node("Cast", [f"{o}__f32"], [o], to=TensorProto.BFLOAT16)
                  for o in outs if types.get(o) == TensorProto.BFLOAT16]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.BFLOAT16, None) for n in extra_out)
    return model, extra_out


def _bf16_value(v):
    import ctypes

    got = torch.empty(v.shape(), dtype=torch.bfloat16)
    ctypes.memmove(got.data_ptr(), v.data_ptr(), got.numel() * 2)
    return got


def _reference_node(node, x):
    from dsr_deploy import ops

    a = {at.name: onnx.helper.get_attribute_value(at) for at in node.attribute}
    if node.op_type.startswith("DSRIF"):
        return ops.if_spike(x, a["v_threshold"], a["alpha"], native=False)
    return ops.lif_spike(x, a["v_threshold"], a["alpha"], a["tau"], a["delta_t"], native=False, decay=a.get("decay"),
                         gain=a.get("gain"))


def test_bfloat16_conv_batchnorm_export_runs_in_ort(tmp_path):
    """A Conv + BatchNorm CNN at --precision bfloat16: opset 22 (Conv has bfloat16 from 22), every weight bfloat16
    (no float32 BatchNorm folding), full ONNX check; in ONNX Runtime (the float32 twin above) every dsr node gives
    the reference's spikes bit for bit given its input. Before: opset 18 had no bfloat16 Conv, and at opset 22 the
    exporter's folding wrote float32 weights; both failed the export."""
    import onnxruntime as ort
    from export_nets import ours_conv_net

    shape = (4, 2, 3, 8, 8)
    manifest = export_model(ours_conv_net(), shape, tmp_path / "e", formats=("onnx",), precision="bfloat16")
    assert manifest["dtype"] == "bfloat16"
    model = onnx.load(str(tmp_path / "e" / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 22
    assert {"Conv", "BatchNormalization"} <= {n.op_type for n in model.graph.node}
    assert all(i.data_type == TensorProto.BFLOAT16 for i in model.graph.initializer
               if i.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16))
    dsr = _dsr_nodes(model)
    twin, names = _float32_twin(model)
    sess = ort.InferenceSession(twin.SerializeToString(), providers=["CPUExecutionProvider"])
    x = (torch.rand(shape, generator=torch.Generator().manual_seed(5)) * 2).to(torch.bfloat16)
    feed = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(x.view(torch.int16).numpy(), TensorProto.BFLOAT16)
    values = dict(zip(names, map(_bf16_value, sess.run_with_ort_values(names, {"input": feed}))))
    fired = 0
    for node in dsr:
        want = _reference_node(node, values[node.input[0]])
        want = want[0] if isinstance(want, tuple) else want
        got = values[node.output[0]]
        assert torch.equal(got.view(torch.int16), want.view(torch.int16)), node.op_type
        fired += int((want != 0).sum())
    assert fired > 0


def test_bfloat16_conv_needs_opset_22(tmp_path):
    from export_nets import ours_conv_net

    with pytest.raises(UserError, match="--precision bfloat16 with convolutions needs --opset 22"):
        export_model(ours_conv_net(), (4, 2, 3, 8, 8), tmp_path / "e", formats=("onnx",), precision="bfloat16",
                     opset=18)
    assert not (tmp_path / "e").exists()


def test_streaming_bfloat16_conv_batchnorm_export(tmp_path):
    """The streaming (step) export of the same CNN at bfloat16: opset 22, bfloat16 weights, checked."""
    from export_nets import ours_conv_net

    from dsr_deploy.export import export_model

    export_model(ours_conv_net(), (4, 2, 3, 8, 8), tmp_path / "s", mode="streaming",
                 formats=("onnx",), precision="bfloat16")
    model = onnx.load(str(tmp_path / "s" / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 22
    assert all(i.data_type == TensorProto.BFLOAT16 for i in model.graph.initializer
               if i.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16))
