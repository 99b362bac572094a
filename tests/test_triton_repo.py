"""Triton model repositories: configs parse as Triton's ModelConfig protobuf; the repository's ONNX models
(with their rewritten edges) compute exactly what the exported models compute."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from _streaming_nets import export_multistep_onnx, mlp_net

from dsr_deploy.errors import UserError
from dsr_deploy.export import export_model
from dsr_deploy.serving import triton_repo as TR

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                       reason="tritonclient (the serve extra) is not installed")
from google.protobuf import text_format  # noqa: E402

T, B = 5, 3


def _parse(path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _ort(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo_src")
    net = mlp_net()
    x = torch.randn(T, B, 6) * 2
    with torch.no_grad():
        ref = net(x).numpy()
    # A multi-step export folder ([T, B, ...], batch symbolic at dim 1) with a (fake-content) plan beside it.
    multi = root / "mlp"
    multi.mkdir()
    export_multistep_onnx(net, x, multi / "model.onnx")
    (multi / "model.plan").write_bytes(b"not a real engine: the repository writer only copies it")
    (multi / "manifest.json").write_text(json.dumps({"artifacts": [
        {"format": "onnx", "path": "model.onnx"}, {"format": "tensorrt", "path": "model.plan"}]}))
    stream = root / "mlp_stream"
    export_model(net, tuple(x.shape), stream, mode="streaming", formats=("onnx",))
    return net, x, ref, multi, stream


@pytest.fixture(scope="module")
def repo(exports, tmp_path_factory):
    _, _, _, multi, stream = exports
    out = tmp_path_factory.mktemp("repo") / "models"
    summary = TR.write_repository([multi, stream], out, max_batch=8)
    return out, summary


def test_layout_and_readme(repo):
    out, summary = repo
    names = sorted(m["name"] for m in summary["models"])
    assert names == ["mlp_onnx", "mlp_stream_onnx", "mlp_trt"]
    for n in names:
        assert (out / n / "config.pbtxt").is_file()
        assert (out / n / "1").is_dir()
    readme = (out / "README.md").read_text()
    assert "LD_PRELOAD=" in readme and "--backend-config=tensorrt,plugins=" in readme
    assert (out / "mlp_trt" / "1" / "model.plan").read_bytes().startswith(b"not a real engine")


def test_multistep_onnx_config(repo):
    out, _ = repo
    cfg = _parse(out / "mlp_onnx" / "config.pbtxt")
    assert cfg.name == "mlp_onnx" and cfg.backend == "onnxruntime" and cfg.max_batch_size == 8
    assert cfg.HasField("dynamic_batching")
    assert [(i.name, list(i.dims), i.data_type) for i in cfg.input] == [("input", [T, 6], model_config_pb2.TYPE_FP32)]
    assert [(o.name, list(o.dims)) for o in cfg.output] == [("output", [T, 3])]
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU


def test_multistep_onnx_batch_first_is_exact(exports, repo):
    _, x, ref, _, _ = exports
    out, _ = repo
    so = _ort(out / "mlp_onnx" / "1" / "model.onnx")
    assert [i.name for i in so.get_inputs()] == ["input"]
    y = so.run(None, {"input": np.ascontiguousarray(x.numpy().transpose(1, 0, 2))})[0]
    assert y.shape == (B, T, 3)
    assert ref.any()
    assert np.array_equal(y.transpose(1, 0, 2), ref)


def test_plan_config_keeps_layout(repo):
    out, _ = repo
    cfg = _parse(out / "mlp_trt" / "config.pbtxt")
    assert cfg.platform == "tensorrt_plan"
    assert cfg.max_batch_size == 0  # the plan is [T, B, ...]: batch not first, no dynamic batching
    assert [list(i.dims) for i in cfg.input] == [[T, -1, 6]]
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU


def test_streaming_config_sequence_batching(repo):
    out, _ = repo
    cfg = _parse(out / "mlp_stream_onnx" / "config.pbtxt")
    assert cfg.max_batch_size == 8
    assert not cfg.HasField("dynamic_batching")
    sb = cfg.sequence_batching
    assert [i.name for i in cfg.input] == ["x_t"] and [o.name for o in cfg.output] == ["y_t"]
    kinds = {c.name: c.control[0].kind for c in sb.control_input}
    K = model_config_pb2.ModelSequenceBatching.Control
    assert kinds == {"START": K.CONTROL_SEQUENCE_START, "READY": K.CONTROL_SEQUENCE_READY}
    assert all(list(c.control[0].bool_false_true) == [False, True] for c in sb.control_input)
    states = [(s.input_name, s.output_name, list(s.dims), s.initial_state[0].zero_data) for s in sb.state]
    assert states == [("v_in_0", "v_out_0", [8], True), ("v_in_1", "v_out_1", [3], True)]
    assert all(s.data_type == model_config_pb2.TYPE_FP32 for s in sb.state)
    assert sb.max_sequence_idle_microseconds > 0


def test_streaming_repo_model_controls(exports, repo):
    """What Triton does with the repository's streaming model: state carried, START zeroes it, READY keeps it."""
    _, x, ref, _, _ = exports
    out, _ = repo
    so = _ort(out / "mlp_stream_onnx" / "1" / "model.onnx")
    names = [o.name for o in so.get_outputs()]
    ones = np.ones((B, 1), dtype=bool)
    garbage = [np.full((B, 8), 123.0, np.float32), np.full((B, 3), -7.0, np.float32)]
    v, ys = garbage, []
    for t in range(T):
        res = dict(zip(names, so.run(None, {"x_t": x[t].numpy(), "v_in_0": v[0], "v_in_1": v[1],
                                             "START": ones if t == 0 else ~ones, "READY": ones})))
        ys.append(res["y_t"])
        v = [res["v_out_0"], res["v_out_1"]]
    assert np.array_equal(np.stack(ys), ref)  # START replaced the garbage by zeros
    res = dict(zip(names, so.run(None, {"x_t": x[0].numpy(), "v_in_0": v[0], "v_in_1": v[1],
                                         "START": ~ones, "READY": ~ones})))
    assert np.array_equal(res["v_out_0"], v[0]) and np.array_equal(res["v_out_1"], v[1])


def test_ort_ops_library_and_no_batching(exports, tmp_path):
    _, _, _, multi, _ = exports
    TR.write_repository([multi / "model.onnx"], tmp_path / "r", max_batch=0, name="m",
                        ort_ops_library="/dsr_lib/libdsr_ort_ops.so")
    cfg = _parse(tmp_path / "r" / "m_onnx" / "config.pbtxt")
    assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
    assert list(cfg.input[0].dims) == [T, -1, 6]
    assert list(cfg.model_operations.op_library_filename) == ["/dsr_lib/libdsr_ort_ops.so"]


def test_bad_inputs(exports, tmp_path):
    _, _, _, multi, _ = exports
    with pytest.raises(UserError, match="does not exist"):
        TR.write_repository([tmp_path / "nope"], tmp_path / "r")
    with pytest.raises(UserError, match="exactly one ONNX"):
        TR.write_repository([multi / "model.plan"], tmp_path / "r")
    (tmp_path / "bad.onnx").write_bytes(b"garbage")
    with pytest.raises(UserError, match="not a readable ONNX"):
        TR.write_repository([tmp_path / "bad.onnx"], tmp_path / "r")
    assert not (tmp_path / "r").exists()  # nothing half-written
    TR.write_repository([multi], tmp_path / "r")
    with pytest.raises(UserError, match="exists"):
        TR.write_repository([multi], tmp_path / "r")


def test_cli_triton_repo(exports, tmp_path):
    import subprocess
    import sys

    _, _, _, multi, stream = exports
    out = tmp_path / "repo"
    res = subprocess.run([sys.executable, "-m", "dsr_deploy", "triton-repo", str(multi), str(stream), "--out", str(out),
                          "--max-batch", "4", "--json"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert sorted(m["name"] for m in summary["models"]) == ["mlp_onnx", "mlp_stream_onnx", "mlp_trt"]
    assert _parse(out / "mlp_stream_onnx" / "config.pbtxt").max_batch_size == 4
    again = subprocess.run([sys.executable, "-m", "dsr_deploy", "triton-repo", str(multi), "--out", str(out)],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and again.stderr.strip().startswith("error: ") and "exists" in again.stderr


def _static_batch_copy(src, dst):
    """The multi-step model with its batch dimension fixed, as a --static-batch export has it."""
    m = onnx.load(str(src))
    for vi in list(m.graph.input) + list(m.graph.output):
        d = vi.type.tensor_type.shape.dim[1]
        d.ClearField("dim_param")
        d.dim_value = B
    onnx.save(m, str(dst))
    return dst


def test_static_batch_is_refused_for_batching(exports, tmp_path):
    """Triton's onnxruntime backend needs the first dimension -1 when max_batch_size > 0."""
    net, x, _, multi, _ = exports
    static = _static_batch_copy(multi / "model.onnx", tmp_path / "static.onnx")
    with pytest.raises(UserError, match="batch dimension is fixed .*--static-batch.*--max-batch 0"):
        TR.write_repository([static], tmp_path / "r", max_batch=4)
    assert not (tmp_path / "r").exists()
    stream = tmp_path / "stream_static"
    export_model(net, tuple(x.shape), stream, mode="streaming", formats=("onnx",), static_batch=True)
    with pytest.raises(UserError, match="batch dimension is fixed"):
        TR.write_repository([stream], tmp_path / "r", max_batch=4)
    TR.write_repository([static], tmp_path / "r", max_batch=0)
    cfg = _parse(tmp_path / "r" / "static_onnx" / "config.pbtxt")
    assert cfg.max_batch_size == 0 and list(cfg.input[0].dims) == [T, B, 6]


def test_streaming_without_batching_has_controls_of_shape_1(exports, tmp_path):
    _, x, ref, _, stream = exports
    TR.write_repository([stream], tmp_path / "r", max_batch=0)
    model = onnx.load(str(tmp_path / "r" / "mlp_stream_onnx" / "1" / "model.onnx"))
    dims = {i.name: [d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert dims["START"] == [1] and dims["READY"] == [1]
    cfg = _parse(tmp_path / "r" / "mlp_stream_onnx" / "config.pbtxt")
    assert cfg.max_batch_size == 0 and {c.name for c in cfg.sequence_batching.control_input} == {"START", "READY"}
    # One control value for the whole request still starts, carries and holds every row's membranes.
    so = _ort(tmp_path / "r" / "mlp_stream_onnx" / "1" / "model.onnx")
    names = [o.name for o in so.get_outputs()]
    v, ys = [np.full((B, 8), 5.0, np.float32), np.full((B, 3), 5.0, np.float32)], []
    for t in range(T):
        res = dict(zip(names, so.run(None, {"x_t": x[t].numpy(), "v_in_0": v[0], "v_in_1": v[1],
                                             "START": np.array([t == 0]), "READY": np.array([True])})))
        ys.append(res["y_t"])
        v = [res["v_out_0"], res["v_out_1"]]
    assert np.array_equal(np.stack(ys), ref)


def test_streaming_without_batching_state_dims_are_fixed(exports, tmp_path):
    """Triton's sequence batcher refuses variable dims (-1) in initial_state: with --max-batch 0 the state's batch
    dim is part of its shape and is fixed to 1, and the stream input/output say the same batch."""
    _, _, _, _, stream = exports
    TR.write_repository([stream], tmp_path / "r", max_batch=0)
    cfg = _parse(tmp_path / "r" / "mlp_stream_onnx" / "config.pbtxt")
    for s in cfg.sequence_batching.state:
        assert all(d > 0 for d in s.dims) and all(d > 0 for d in s.initial_state[0].dims)
    assert [(s.input_name, list(s.dims), list(s.initial_state[0].dims)) for s in cfg.sequence_batching.state] == [
        ("v_in_0", [1, 8], [1, 8]), ("v_in_1", [1, 3], [1, 3])]
    assert [(i.name, list(i.dims)) for i in cfg.input] == [("x_t", [1, 6])]
    assert [(o.name, list(o.dims)) for o in cfg.output] == [("y_t", [1, 3])]


def _stream_with_plan(stream, dst, profile):
    import shutil

    shutil.copytree(stream, dst)
    (dst / "model.plan").write_bytes(b"fake engine")
    m = json.loads((dst / "manifest.json").read_text())
    entry = {"format": "tensorrt", "path": "model.plan", "onnx": "model.onnx"}
    if profile is not None:
        entry["profile"] = profile
    m["artifacts"].append(entry)
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def _profile(lo, hi):
    return {n: [[lo, d], [hi, d], [hi, d]] for n, d in (("x_t", 6), ("v_in_0", 8), ("v_in_1", 3))}


@pytest.mark.parametrize("profile, want", [(_profile(1, 4), 4), (_profile(1, 16), 8), (None, 0),
                                          (_profile(2, 16), 0)])
def test_plan_max_batch_from_engine_profile(exports, tmp_path, profile, want):
    """The tensorrt backend refuses a max_batch_size above the engine's profile: it is read from the manifest
    (build-engine records it), clamped to it; unknown, or a profile not starting at batch 1: no batching."""
    _, _, _, _, stream = exports
    src = _stream_with_plan(stream, tmp_path / "s", profile)
    summary = TR.write_repository([src], tmp_path / "r", max_batch=8)
    cfg = _parse(tmp_path / "r" / "s_trt" / "config.pbtxt")
    assert cfg.max_batch_size == want
    assert next(m for m in summary["models"] if m["name"] == "s_trt")["max_batch_size"] == want
    if want == 0:  # explicit dims then: the state's batch dim fixed (initial_state has no -1)
        assert all(d > 0 for s in cfg.sequence_batching.state for d in s.initial_state[0].dims)


def test_plan_profile_tampered_is_refused(exports, tmp_path):
    _, _, _, _, stream = exports
    src = _stream_with_plan(stream, tmp_path / "s", {"x_t": [[1, 6], [4, 6]]})
    with pytest.raises(UserError, match="profile"):
        TR.write_repository([src], tmp_path / "r", max_batch=8)


@pytest.mark.parametrize("kind, triton_kind, build_flag", [("cpu", "KIND_CPU", "--no-cuda"),
                                                          ("gpu", "KIND_GPU", "--cuda")])
def test_instance_kind_and_ops_library_readme(exports, tmp_path, kind, triton_kind, build_flag):
    _, _, _, multi, _ = exports
    summary = TR.write_repository([multi], tmp_path / "r", instance_kind=kind,
                                  ort_ops_library="/dsr_lib/libdsr_ort_ops.so")
    cfg = _parse(tmp_path / "r" / "mlp_onnx" / "config.pbtxt")
    K = model_config_pb2.ModelInstanceGroup
    assert cfg.instance_group[0].kind == getattr(K, triton_kind)
    assert _parse(tmp_path / "r" / "mlp_trt" / "config.pbtxt").instance_group[0].kind == K.KIND_GPU
    assert summary["models"][0]["instance_kind"] == triton_kind
    readme = (tmp_path / "r" / "README.md").read_text()
    assert "IN THE SERVING IMAGE" in readme and build_flag in readme and "another CUDA major" in readme
    with pytest.raises(UserError, match="--instance-kind must be one of cpu, gpu"):
        TR.write_repository([multi], tmp_path / "r2", instance_kind="tpu")


def test_cli_instance_kind(exports, tmp_path):
    from dsr_deploy.cli import main

    _, _, _, multi, _ = exports
    main(["triton-repo", str(multi / "model.onnx"), "--out", str(tmp_path / "r"), "--instance-kind", "gpu",
          "--name", "m"])
    cfg = _parse(tmp_path / "r" / "m_onnx" / "config.pbtxt")
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU


def test_python_backend_variant(exports, tmp_path):
    """`--backend python`: <name>_py models with model.py (ONNX Runtime in Triton's python backend), the same
    config fields as the onnxruntime variant, the custom-op library as a parameter model.py registers; bad
    backends refused (tests/test_triton_server.py loads these in a real tritonserver)."""
    _, _, _, multi, stream = exports
    out = tmp_path / "r"
    summary = TR.write_repository([multi, stream], out, max_batch=8, backend="python",
                                  ort_ops_library="/dsr_lib/libdsr_ort_ops.so")
    assert sorted(m["name"] for m in summary["models"]) == ["mlp_py", "mlp_stream_py", "mlp_trt"]
    for name in ("mlp_py", "mlp_stream_py"):
        cfg = _parse(out / name / "config.pbtxt")
        assert cfg.backend == "python" and cfg.max_batch_size == 8 and not cfg.HasField("model_operations")
        assert cfg.parameters["dsr_ops_library"].string_value == "/dsr_lib/libdsr_ort_ops.so"
        assert "class TritonPythonModel" in (out / name / "1" / "model.py").read_text()
        assert (out / name / "1" / "model.onnx").is_file()
    assert _parse(out / "mlp_py" / "config.pbtxt").HasField("dynamic_batching")
    sb = _parse(out / "mlp_stream_py" / "config.pbtxt").sequence_batching
    assert {c.name for c in sb.control_input} == {"START", "READY"} and len(sb.state) == 2
    with pytest.raises(UserError, match="--backend must be one of onnxruntime, python"):
        TR.write_repository([multi], tmp_path / "x", backend="tensorflow")


def test_readme_and_tensorrt_doc_name_the_right_library_versions_and_ops(repo):
    """The repository README and docs/tensorrt.md: Triton loads the static-registration library, dsr_deploy the
    getCreators one; plugin-vs-function precedence from 10.7 (10.15: before built-ins); the quantised ops listed."""
    from pathlib import Path

    out, _ = repo
    readme = (out / "README.md").read_text()
    assert "DSRIFSpikeQ" in readme and "DSRLIFSpikeQ" in readme
    assert "10.0 - 10.6" in readme and "from\n10.7" in readme.replace("from 10.7", "from\n10.7")
    assert "10.15" in readme and "plugins=\"/dsr_lib/libdsr_trt_plugin.so\"" in readme
    doc = (Path(__file__).resolve().parent.parent / "docs" / "tensorrt.md").read_text()
    assert "(TensorRT >= 10.15) picks the plugin before the\n  model-local function" not in doc
    assert "`libdsr_trt_plugin_dynamic.so` (loaded through TensorRT's registry" in doc
    assert "From TensorRT 10.7 a\n  registered plugin wins" in doc and "DSRIFSpikeQ" in doc
    assert "cudart_static" in doc
