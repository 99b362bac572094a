"""`dsr-deploy quickstart` end to end (the README's main job): export, verify (every backend's neurons bit-exact
given the same input), each artifact's held-out accuracy within the rule, a short benchmark, every file where the
summary says. One CLI run (about a minute on 2 cores) shared by the tests of this module.

Nothing here depends on which convolution kernels ONNX Runtime or oneDNN pick on this CPU: end-to-end logits may
differ in the last bits between backends, and the assertions allow exactly what the pass rule allows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _native_util import ensure_ort_library, ensure_torch_native

pytest.importorskip("sklearn", reason="the digits data ships with scikit-learn")

FORMATS = {"torchscript", "onnx", "pt2"}


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    ensure_torch_native()  # `make quickstart` / `make test` build both libraries first; a bare pytest run here
    ensure_ort_library()
    out = tmp_path_factory.mktemp("qs") / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "dsr_deploy", "quickstart", "--out", str(out), "--iters", "3",
                           "--batch", "1,4", "--json"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads(proc.stdout), proc.stderr


def test_quickstart_passes_neuron_exact(quickstart):
    out, summary, log = quickstart
    assert summary["passed"] and summary["neurons_exact"] and summary["verify_passed"]
    assert summary["model"] == "zoo:digits-cnn" and summary["T"] == 8 and summary["heldout_images"] == 360
    ran = [r for r in summary["verify"] if r["status"] == "ok"]
    assert {r["format"] for r in ran} >= FORMATS | {"pytorch"}
    assert all(r["neuron_exact"] is True and r["passed"] and not r["failures"] for r in ran)
    assert all(r["top1_agreement"] >= 0.99 for r in ran)
    # The inference copy runs the same torch convolutions as the model: identical end to end on any CPU.
    torch_row = next(r for r in ran if r["format"] == "pytorch")
    assert torch_row["max_abs_diff"] == 0.0 and torch_row["divergence"] is None and torch_row["bit_exact"]
    for r in summary["verify"]:
        if r["status"] == "skipped":
            assert r["reason"]  # a skipped backend says why
    assert summary["backends"] and all(isinstance(v, str) and v for v in summary["backends"].values())
    for step in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"):
        assert step in log


def test_each_artifact_accuracy_within_the_rule(quickstart):
    out, summary, _ = quickstart
    assert summary["pytorch_accuracy"] >= 0.95
    ok = [a for a in summary["accuracy"] if a["status"] == "ok"]
    assert {a["format"] for a in ok} == FORMATS
    for a in ok:
        assert a["total"] == 360
        assert 100 * (summary["pytorch_accuracy"] - a["accuracy"]) <= summary["max_accuracy_drop"]
        if a["identical_to_pytorch"]:
            assert a["predictions_differing"] == 0 and a["accuracy"] == summary["pytorch_accuracy"]
        else:
            assert a["predictions_differing"] is not None


def test_files_are_where_the_summary_says(quickstart):
    out, summary, _ = quickstart
    files = summary["files"]
    for key in ("export", "manifest", "verify_report", "bench_report", "summary", "heldout_input", "heldout_labels",
                "artifact:torchscript", "artifact:onnx", "artifact:pt2"):
        assert Path(files[key]).exists(), key
    assert json.loads(Path(files["summary"]).read_text())["passed"] is True
    manifest = json.loads(Path(files["manifest"]).read_text())
    assert {a["format"] for a in manifest["artifacts"]} >= FORMATS
    x = np.load(files["heldout_input"])
    assert x.shape == (8, 360, 1, 8, 8) and x.dtype == np.float32
    bench = json.loads(Path(files["bench_report"]).read_text())
    labels = {r["label"] for r in bench["results"]}
    assert "pytorch eager" in labels and {"torchscript/torchscript", "onnx/onnxruntime (function fallback)",
                                          "onnx/onnxruntime (dsr custom-op library)", "pt2/pt2"} <= labels
    timed = [r for r in bench["results"] if r["latency_ms"]]
    assert timed and all(r["latency_ms"]["mean"] > 0 and r["iterations"] == 3 for r in timed)


def test_the_fast_path_is_verified_scored_and_benchmarked(quickstart):
    # The native kernels are built (make quickstart builds them first): the ORT custom-op library runs next to the
    # function fallback in verify, accuracy and the benchmark, and the torch op serves pt2 and the eager neurons.
    out, summary, log = quickstart
    native = summary["native_kernels"]
    assert native["torch op (libdsr_torch_ops.so)"].startswith("loaded from"), native
    assert native["ONNX Runtime custom ops (libdsr_ort_ops.so)"].startswith("built:"), native
    assert "native torch op" in log
    for variant in ("function fallback", "dsr custom-op library"):
        runs = [r for r in summary["verify"] if r["backend"] == "onnxruntime" and r.get("variant") == variant]
        assert runs and all(r["status"] == "ok" and r["passed"] and r["neuron_exact"] for r in runs), runs
        acc = [a for a in summary["accuracy"] if a["backend"] == "onnxruntime" and a["variant"] == variant]
        assert len(acc) == 1 and acc[0]["status"] == "ok", acc
        assert 100 * (summary["pytorch_accuracy"] - acc[0]["accuracy"]) <= summary["max_accuracy_drop"]
        timed = [r for r in summary["bench"] if r["label"] == f"onnx/onnxruntime ({variant})"]
        assert timed and all(r["mean_ms"] and r["mean_ms"] > 0 for r in timed), summary["bench"]


def test_without_a_compiler_the_custom_op_rows_say_why(quickstart, tmp_path, monkeypatch):
    # No library built (an empty cache) and no compiler on PATH: the custom-op variant is a skipped row whose reason
    # says the compiler is missing; the function fallback still runs.
    from dsr_deploy import plugins
    from dsr_deploy.quickstart import _artifact_targets

    out, summary, _ = quickstart
    monkeypatch.setenv("DSR_DEPLOY_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("DSR_DEPLOY_LIB_DIR", raising=False)
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert plugins.ort_library() is None
    ort_rows = {t[3]: t for t in _artifact_targets(Path(summary["files"]["export"])) if t[2] == "onnxruntime"}
    assert ort_rows["function fallback"][5] is None
    why = ort_rows["dsr custom-op library"][5]
    assert why.startswith("libdsr_ort_ops.so not built: no C++ compiler"), why


def test_torchscript_artifact_scores_the_same_without_dsr_deploy(quickstart):
    """The deployed TorchScript file alone (a fresh process that never imports dsr_deploy) scores what the
    quickstart reported for it."""
    out, summary, _ = quickstart
    files = summary["files"]
    code = (
        "import sys, numpy as np, torch\n"
        f"m = torch.jit.load({files['artifact:torchscript']!r})\n"
        f"x = torch.from_numpy(np.load({files['heldout_input']!r}))\n"
        f"y = np.load({files['heldout_labels']!r})\n"
        "s = m(x)\n"
        "assert 'dsr_deploy' not in sys.modules\n"
        "rate = (s != 0).float().sum(0)  # IF spikes share one amplitude: the count ranks like the rate\n"
        "print((rate.argmax(-1).numpy() == y).mean())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    # The same TorchScript runtime on the same machine as the summary's torchscript row: the same score.
    ts_row = next(a for a in summary["accuracy"] if a["format"] == "torchscript" and a["status"] == "ok")
    assert float(proc.stdout.strip()) == ts_row["accuracy"]


def test_bad_out_is_one_line_error(tmp_path):
    f = tmp_path / "a-file"
    f.write_text("x")
    proc = subprocess.run([sys.executable, "-m", "dsr_deploy", "quickstart", "--out", str(f), "--no-bench"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "dsr_deploy", "quickstart", "--out", str(tmp_path / "o"),
                           "--model", "mlp"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "no" in proc.stderr and "weights" in proc.stderr


def test_int8_quickstart_reports_accuracy_next_to_float32(tmp_path):
    """`quickstart --precision int8` (no benchmark): the int8 ONNX export, calibrated on the training split, keeps
    the digits model's held-out accuracy within the int8 rule, its neurons exact given their dequantised input."""
    from dsr_deploy.quickstart import run_quickstart

    ensure_ort_library()
    result = run_quickstart(tmp_path / "q8", bench=False, precision="int8", log=lambda m: None)
    summary = result.to_dict()
    assert summary["precision"] == "int8" and summary["max_accuracy_drop"] == 1.0
    assert result.manifest["artifacts"][0]["precision"] == "int8"
    rows = [a for a in result.accuracy if a.status == "ok"]
    assert {a.variant for a in rows} >= {"function fallback", "dsr custom-op library"}
    assert summary["pytorch_accuracy"] >= 0.99  # the float32 model's, reported next to the int8 rows
    # --target onnxruntime-cpu (the default) quantises the first layer and the readout too: within 0.5 points
    # of float32 (issue 26)
    assert all(a.accuracy >= summary["pytorch_accuracy"] - 0.005 for a in rows), [(a.variant, a.accuracy)
                                                                                  for a in rows]
    assert result.neurons_exact and result.passed


def test_quickstart_shows_the_early_exit_curve_and_batch1_latency(quickstart):
    """Issue 27: the streaming export with the calibrated rule recorded, its curve and its batch-1 latency."""
    out, summary, log = quickstart
    ee = summary["early_exit"]
    rec = ee["record"]["calibration"]
    assert ee["rule"] and 100 * (ee["full_accuracy"] - rec["accuracy"]) <= 0.5 + 1e-9
    assert rec["mean_steps"] < summary["T"] and len(ee["fixed_steps"]) == summary["T"] and ee["frontier"]
    manifest = json.loads((Path(ee["export"]) / "manifest.json").read_text())
    assert manifest["mode"] == "streaming" and manifest["early_exit"]["calibration"] == rec
    rows = {r["entry"].split(",")[0] + ("/exit" if "early" in r["entry"] else ""): r for r in ee["batch1_latency"]}
    assert set(rows) == {"multi-step ONNX", "streaming ONNX", "streaming ONNX/exit"}
    assert all(r["batch"] == 1 and r["p50_ms"] > 0 for r in rows.values())
    assert rows["streaming ONNX/exit"]["mean_steps"] < summary["T"] == rows["streaming ONNX"]["mean_steps"]
    assert "[+] early exit" in log
