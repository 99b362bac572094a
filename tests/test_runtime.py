"""Runners: every CPU backend against the eager torch runner, thread safety, export folders, bad inputs."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from runtime_nets import (
    ConvNet,
    NeuronChain,
    NeuronNet,
    quiet,
    save_onnx_dsr_nodes,
    save_onnx_unrolled,
    save_pt2,
    save_torchscript,
    spiky_input,
)

from dsr_deploy.errors import UserError
from dsr_deploy.runtime import available_backends, backends_for, load_runner, resolve_artifact
from dsr_deploy.runtime.onnxruntime import find_ort_library

T, B = 6, 3
NEURON_SHAPE = (T, B, 5)
CONV_SHAPE = (4, 2, 3, 8, 8)


def _artifacts(d: Path, model: torch.nn.Module, shape):
    """The model and its TorchScript, pt2 and ONNX files, by the backend that runs each."""
    quiet()
    example = torch.from_numpy(spiky_input(shape))
    return model, {
        "torchscript": save_torchscript(model, d / "model.ts"),
        "pt2": save_pt2(model, example, d / "model.pt2"),
        "onnxruntime": save_onnx_unrolled(model, example, d / "model.onnx"),
    }


@pytest.fixture(scope="module")
def neuron_artifacts(tmp_path_factory):
    return _artifacts(tmp_path_factory.mktemp("neuron"), NeuronNet(), NEURON_SHAPE)


@pytest.fixture(scope="module")
def conv_artifacts(tmp_path_factory):
    return _artifacts(tmp_path_factory.mktemp("conv"), ConvNet(), CONV_SHAPE)


@pytest.fixture(scope="module")
def chain_onnx(tmp_path_factory):
    return save_onnx_dsr_nodes(tmp_path_factory.mktemp("chain") / "chain.onnx")


def test_backends_are_registered():
    found = available_backends()
    assert {"torch", "torchscript", "pt2", "onnxruntime", "tensorrt"} <= set(found)
    for name in ("torch", "torchscript", "pt2", "onnxruntime"):
        assert found[name] is None, f"{name}: {found[name]}"


@pytest.mark.parametrize("backend", ["torchscript", "pt2", "onnxruntime"])
def test_neuron_net_bit_exact_with_torch(neuron_artifacts, backend):
    model, arts = neuron_artifacts
    x = spiky_input(NEURON_SHAPE, seed=1)
    ref = load_runner(model).infer({"input": x})["output"]
    assert ref.any() and (ref == 0).any(), "the test input must make neurons fire and stay silent"
    with load_runner(arts[backend]) as runner:
        assert runner.backend == backend
        out = runner.infer({"input": x})
    assert list(out) == ["output"]
    assert out["output"].dtype == np.float32
    np.testing.assert_array_equal(out["output"], ref)


@pytest.mark.parametrize("backend", ["torchscript", "pt2"])
def test_dynamic_time_and_batch(neuron_artifacts, backend):
    model, arts = neuron_artifacts
    runner = load_runner(arts[backend]).load()
    for shape in [(3, 1, 5), (9, 4, 5)]:
        x = spiky_input(shape, seed=2)
        np.testing.assert_array_equal(runner.infer({"input": x})["output"],
                                      load_runner(model).infer({"input": x})["output"])


def test_onnx_dynamic_batch(neuron_artifacts):
    model, arts = neuron_artifacts
    x = spiky_input((T, 7, 5), seed=3)
    np.testing.assert_array_equal(load_runner(arts["onnxruntime"]).infer({"input": x})["output"],
                                  load_runner(model).infer({"input": x})["output"])


@pytest.mark.parametrize("backend", ["torchscript", "pt2", "onnxruntime"])
def test_conv_net_within_pass_rule(conv_artifacts, backend):
    model, arts = conv_artifacts
    x = spiky_input(CONV_SHAPE, seed=4)
    ref = load_runner(model).infer({"input": x})["output"]
    out = load_runner(arts[backend]).infer({"input": x})["output"]
    assert ref.shape == out.shape == (CONV_SHAPE[0], CONV_SHAPE[1], 10)
    assert 0 < ref.mean() < 1, "spikes must be mixed for the check to mean something"
    # Convolutions may sum in another order per backend: spikes agree almost everywhere, top-1 everywhere.
    assert (out == ref).mean() >= 0.99
    np.testing.assert_array_equal(out.mean(0).argmax(-1), ref.mean(0).argmax(-1))


def test_onnx_function_fallback_bit_exact(chain_onnx):
    x = spiky_input((T, B, 3), seed=5)
    ref = load_runner(NeuronChain()).infer({"input": x})["output"]
    runner = load_runner(chain_onnx, custom_ops="off").load()
    assert runner.describe()["dsr_ops"].startswith("function fallback")
    np.testing.assert_array_equal(runner.infer({"input": x})["output"], ref)
    spec = runner.inputs()[0]
    assert spec.name == "input" and spec.shape[:2] == ("T", "B") and spec.dtype == "float32"


def test_onnx_describe_says_fallback_or_library(chain_onnx):
    desc = load_runner(chain_onnx).load().describe()["dsr_ops"]
    if find_ort_library() is None:
        assert desc == "function fallback (libdsr_ort_ops.so not built)"
    else:
        assert desc.startswith("custom-op library")


def test_onnx_custom_op_library_bit_exact(chain_onnx):
    from _native_util import ensure_ort_library

    ensure_ort_library()  # no SDK needed: built here when missing
    x = spiky_input((T, B, 3), seed=6)
    ref = load_runner(NeuronChain()).infer({"input": x})["output"]
    runner = load_runner(chain_onnx, custom_ops="require").load()
    assert runner.describe()["dsr_ops"].startswith("custom-op library")
    np.testing.assert_array_equal(runner.infer({"input": x})["output"], ref)


def test_onnx_require_custom_ops_without_library(chain_onnx, monkeypatch, tmp_path):
    monkeypatch.setenv("DSR_DEPLOY_LIB_DIR", str(tmp_path))
    monkeypatch.setattr("dsr_deploy.runtime.onnxruntime.find_ort_library", lambda: None)
    with pytest.raises(UserError, match="libdsr_ort_ops.so not found"):
        load_runner(chain_onnx, custom_ops="require").load()


def test_onnx_io_binding_and_threads_option(chain_onnx):
    x = spiky_input((T, B, 3), seed=7)
    ref = load_runner(NeuronChain()).infer({"input": x})["output"]
    runner = load_runner(chain_onnx, io_binding=True, threads=1).load()
    assert runner.describe()["io_binding"] is True
    np.testing.assert_array_equal(runner.infer({"input": torch.from_numpy(x)})["output"], ref)


@pytest.mark.parametrize("backend", ["torch", "torchscript", "pt2", "onnxruntime"])
def test_one_runner_shared_by_8_threads(neuron_artifacts, backend):
    model, arts = neuron_artifacts
    runner = load_runner(model if backend == "torch" else arts[backend])  # loaded lazily by the threads
    inputs = [spiky_input(NEURON_SHAPE, seed=10 + i) for i in range(8)]
    serial = [load_runner(model).infer({"input": x})["output"] for x in inputs]
    results: list = [None] * 8
    errors = []
    barrier = threading.Barrier(8)

    def work(i):
        try:
            barrier.wait()
            for _ in range(3):
                results[i] = runner.infer({"input": inputs[i]})["output"]
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for got, want in zip(results, serial):
        np.testing.assert_array_equal(got, want)


def test_copy_outputs_false_returns_tensors_on_cpu(neuron_artifacts):
    model, arts = neuron_artifacts
    x = spiky_input(NEURON_SHAPE)
    out = load_runner(arts["torchscript"]).infer({"input": x}, copy_outputs=False)["output"]
    assert isinstance(out, torch.Tensor)
    np.testing.assert_array_equal(out.numpy(), load_runner(model).infer({"input": x})["output"])


def test_fp16_torchscript_matches_torch_fp16(conv_artifacts):
    model, arts = conv_artifacts
    x = spiky_input(CONV_SHAPE, seed=8).astype(np.float16)
    ts = load_runner(arts["torchscript"], fp16=True)
    assert ts.inputs()[0].dtype == "float16"
    out = ts.infer({"input": x})["output"]
    ref = load_runner(ConvNet(), fp16=True).infer({"input": x})["output"]
    assert out.dtype == ref.dtype == np.float16
    np.testing.assert_array_equal(out, ref)
    with pytest.raises(UserError, match="fp16 is not supported"):
        load_runner(arts["pt2"], fp16=True).load()


def test_torch_runner_model_spec(monkeypatch):
    import sys
    import types

    mod = types.ModuleType("runtime_spec_mod")
    mod.make = NeuronNet
    monkeypatch.setitem(sys.modules, "runtime_spec_mod", mod)
    runner = load_runner("runtime_spec_mod:make", input_shape=NEURON_SHAPE)
    assert runner.backend == "torch"
    assert runner.inputs()[0].shape == ("T", "B", 5)
    x = spiky_input(NEURON_SHAPE)
    np.testing.assert_array_equal(runner.infer({"input": x})["output"],
                                  load_runner(NeuronNet()).infer({"input": x})["output"])


# -- export folders ----------------------------------------------------------------------------------------

def _export_dir(tmp_path: Path, arts: dict) -> Path:
    d = tmp_path / "export"
    d.mkdir()
    entries = []
    for fmt, src in (("torchscript", arts["torchscript"]), ("onnx", arts["onnxruntime"]), ("pt2", arts["pt2"])):
        dst = d / Path(src).name
        dst.write_bytes(Path(src).read_bytes())
        entries.append({"format": fmt, "path": dst.name})
    (d / "manifest.json").write_text(json.dumps({
        "artifacts": entries, "input_names": ["input"], "output_names": ["output"],
        "input_shape": list(NEURON_SHAPE)}))
    return d


def test_export_folder_resolution(neuron_artifacts, tmp_path):
    model, arts = neuron_artifacts
    d = _export_dir(tmp_path, arts)
    assert set(backends_for(d)) == {"torchscript", "pt2", "onnxruntime"}
    assert resolve_artifact(d, "onnxruntime") == d / "model.onnx"
    x = spiky_input(NEURON_SHAPE, seed=3)
    ref = load_runner(model).infer({"input": x})["output"]
    for backend in ("torchscript", "pt2", "onnxruntime"):
        runner = load_runner(d, backend=backend)
        assert runner.backend == backend
        np.testing.assert_array_equal(runner.infer({"input": x})["output"], ref)
    # The manifest's shape describes the TorchScript input (which has no shapes of its own).
    assert load_runner(d, backend="torchscript").inputs()[0].shape == ("T", "B", 5)
    with pytest.raises(UserError, match="no artifact for backend 'tensorrt'"):
        load_runner(d, backend="tensorrt")


def test_export_folder_without_manifest(tmp_path):
    with pytest.raises(UserError, match="without manifest.json"):
        load_runner(tmp_path, backend="onnxruntime")


# -- bad inputs: one-line UserErrors -----------------------------------------------------------------------

def _one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and msg
    return msg


@pytest.mark.parametrize("backend", ["torch", "torchscript", "pt2", "onnxruntime"])
def test_bad_feeds(neuron_artifacts, backend):
    model, arts = neuron_artifacts
    runner = load_runner(model, input_shape=NEURON_SHAPE) if backend == "torch" else load_runner(arts[backend])
    x = spiky_input(NEURON_SHAPE)
    with pytest.raises(UserError) as e:
        runner.infer({"input": x.astype(np.float64)})
    assert "dtype float64, expected float32" in _one_line(e)
    with pytest.raises(UserError) as e:
        runner.infer({})
    assert "missing input(s) 'input'" in _one_line(e)
    with pytest.raises(UserError) as e:
        runner.infer({"input": x, "extra": x})
    assert "unknown input(s) 'extra'" in _one_line(e)
    if backend != "torchscript":  # TorchScript keeps no shapes (an elementwise net takes any shape)
        with pytest.raises(UserError) as e:
            runner.infer({"input": x[:, :, :4]})
        assert "dimension 2 must be 5" in _one_line(e)
    with pytest.raises(UserError) as e:
        runner.infer({"input": x.tolist()})
    _one_line(e)


@pytest.mark.parametrize("backend", ["torch", "torchscript"])
def test_model_failure_on_wrong_shape_is_one_line(conv_artifacts, backend):
    model, arts = conv_artifacts
    runner = load_runner(model if backend == "torch" else arts[backend])
    with pytest.raises(UserError) as e:
        runner.infer({"input": spiky_input((4, 2, 5, 8, 8))})  # 5 channels, the stem takes 3
    assert "the model failed on" in _one_line(e)


def test_wrong_rank_is_caught_before_running(neuron_artifacts):
    _, arts = neuron_artifacts
    with pytest.raises(UserError) as e:
        load_runner(arts["onnxruntime"]).infer({"input": np.zeros((T, B), np.float32)})
    assert "expected rank 3" in _one_line(e)


@pytest.mark.parametrize("name", ["model.onnx", "model.ts", "model.pt2"])
def test_corrupt_file(tmp_path, name):
    p = tmp_path / name
    p.write_bytes(b"\x00not a model at all" * 10)
    with pytest.raises(UserError) as e:
        load_runner(p).load()
    assert "cannot" in _one_line(e)


def test_unknown_artifact_type(tmp_path):
    p = tmp_path / "weights.bin"
    p.write_bytes(b"1234")
    with pytest.raises(UserError) as e:
        load_runner(p)
    assert "unknown artifact type" in _one_line(e)
    with pytest.raises(UserError) as e:
        load_runner(tmp_path / "missing.onnx")
    assert "no such file" in _one_line(e)
    with pytest.raises(UserError) as e:
        load_runner(NeuronNet(), backend="nope")
    assert "unknown backend 'nope'" in _one_line(e)


def test_onnx_dsr_nodes_without_fallback_or_library(tmp_path, chain_onnx, monkeypatch):
    import onnx

    m = onnx.load(str(chain_onnx))
    del m.functions[:]
    p = tmp_path / "nofallback.onnx"
    onnx.save(m, str(p))
    monkeypatch.setattr("dsr_deploy.runtime.onnxruntime.find_ort_library", lambda: None)
    with pytest.raises(UserError) as e:
        load_runner(p).load()
    assert "without a function fallback" in _one_line(e)


def test_tensorrt_missing_is_one_line(tmp_path):
    p = tmp_path / "model.plan"
    p.write_bytes(b"not an engine")
    runner = load_runner(p)
    assert runner.backend == "tensorrt"
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(UserError) as e:
            runner.load()
        assert "pip install 'dsr-deploy[tensorrt]'" in _one_line(e)
        return
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU"):
            runner.load()
    else:
        with pytest.raises(UserError, match="cannot deserialize"):
            runner.load()


@pytest.mark.slow
def test_aoti_package_bit_exact_dynamic_shapes(tmp_path):
    """An AOTInductor package (compiled code, ~30 s to build on 2 cores) through the pt2 runner."""
    model = NeuronNet()
    x = spiky_input(NEURON_SHAPE)
    T_, B_ = torch.export.Dim("T", min=2), torch.export.Dim("B", min=1)
    ep = torch.export.export(model, (torch.from_numpy(x),), dynamic_shapes={"input": {0: T_, 1: B_}})
    path = tmp_path / "model.aoti.pt2"
    torch._inductor.aoti_compile_and_package(ep, package_path=str(path))
    runner = load_runner(path).load()
    assert runner.backend == "pt2" and runner.describe()["kind"] == "aoti"
    for shape in [NEURON_SHAPE, (9, 2, 5)]:
        xx = spiky_input(shape, seed=12)
        np.testing.assert_array_equal(runner.infer({"input": xx})["output"],
                                      load_runner(model).infer({"input": xx})["output"])


@pytest.mark.parametrize("gpu_fusion", [False, True])
def test_torchscript_on_cuda_turns_the_gpu_fuser_off(neuron_artifacts, monkeypatch, gpu_fusion):
    # NNC compiles fused GPU kernels with NVRTC's default --fmad=true (a fused LIF update is then no longer
    # bit-exact): loading for CUDA turns TorchScript's GPU fusion off unless asked to keep it. No GPU here (and a
    # CPU build of torch reports GPU fusion off whatever it is told), so the load is redirected to the CPU and the
    # switch itself is recorded.
    _, arts = neuron_artifacts
    real_load = torch.jit.load
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.jit, "load", lambda path, map_location=None: real_load(path, map_location="cpu"))
    monkeypatch.setattr(torch._C, "_jit_override_can_fuse_on_gpu", calls.append)
    monkeypatch.setattr(torch._C, "_jit_can_fuse_on_gpu", lambda: calls[-1] if calls else True)
    runner = load_runner(arts["torchscript"], backend="torchscript", device="cuda", gpu_fusion=gpu_fusion)
    runner.ensure_loaded()
    assert calls == ([] if gpu_fusion else [False])
    assert runner.describe()["gpu_fusion"] is gpu_fusion
