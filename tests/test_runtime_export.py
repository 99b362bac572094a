"""Runners and bench on a real export folder written by `dsr_deploy.export` (the trained digits CNN)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dsr_deploy import bench as B
from dsr_deploy.cli import main
from dsr_deploy.runtime import backends_for, load_runner

SPEC = "zoo:digits-cnn"


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    from dsr_deploy import models
    from dsr_deploy.export import export_model

    model = models.build("digits-cnn").eval()
    T = models.input_shape("digits-cnn")[0]
    out = tmp_path_factory.mktemp("exp") / "digits"
    export_model(model, (T, 2, 1, 8, 8), out, spec=SPEC)
    return out


def _input(dir_, batch=3, seed=0):
    shape = json.loads((dir_ / "manifest.json").read_text())["input_shape"]
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, size=(shape[0], batch, *shape[2:])).astype(np.float32)


def test_every_artifact_within_pass_rule_of_the_manifest_model(export_dir):
    assert {"torchscript", "pt2", "onnxruntime"} <= set(backends_for(export_dir))
    x = _input(export_dir)
    torch_runner = load_runner(export_dir, backend="torch")
    assert torch_runner.backend == "torch" and torch_runner.inputs()[0].shape[2:] == (1, 8, 8)
    ref = torch_runner.infer({"input": x})["output"]
    assert ref.shape[:2] == x.shape[:2] and 0 < (ref != 0).mean() < 1
    for backend in ("torchscript", "pt2", "onnxruntime"):
        out = load_runner(export_dir, backend=backend).infer({"input": x})["output"]
        assert out.shape == ref.shape, backend
        assert (out == ref).mean() >= 0.99, backend
        np.testing.assert_array_equal(out.mean(0).argmax(-1), ref.mean(0).argmax(-1), err_msg=backend)


def test_bench_cli_on_export_folder(export_dir, tmp_path, capsys):
    js = tmp_path / "r.json"
    main(["bench", str(export_dir), "-b", "torch,onnxruntime,torchscript", "--batch", "1,2", "--warmup", "0",
          "--iters", "2", "--json", str(js)])
    doc = json.loads(js.read_text())
    assert [r["label"] for r in doc["results"]] == ["torch", "torch", "onnxruntime", "onnxruntime",
                                                    "torchscript", "torchscript"]
    assert all(r["error"] is None for r in doc["results"])
    T = json.loads((export_dir / "manifest.json").read_text())["T"]
    assert {r["timesteps"] for r in doc["results"]} == {T}
    n = doc["settings"]["neurons_per_sample"]
    assert n and n > 0  # counted on the eager model
    r = doc["results"][0]
    assert r["throughput"]["neuron_steps_per_s"] == pytest.approx(r["throughput"]["samples_per_s"] * T * n)
    assert "torch" in capsys.readouterr().out


def test_bench_defaults_to_the_folder_artifacts(export_dir):
    result = B.run_benchmark([B.BenchEntry(b, load_runner(export_dir, backend=b)) for b in backends_for(export_dir)],
                             [1], None, warmup=0, iters=1, memcpy=False)
    assert {r["backend"] for r in result.rows} >= {"torchscript", "pt2", "onnxruntime"}
    assert all(r["error"] is None for r in result.rows)
