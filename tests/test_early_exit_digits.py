"""``dsr-deploy exit-calibrate`` on the shipped digits model (issue 27): the chosen rule, recorded in the manifest,
keeps the held-out accuracy (the quickstart's split) within the bound when the streaming artifact really stops
early; bad input exits 2 with one line."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from _cli_util import run_cli  # (exit code, stdout, stderr) of one CLI call

from dsr_deploy import models
from dsr_deploy.contract import EXIT_PREDICTION, EXIT_STEPS
from dsr_deploy.encoding import direct_encode
from dsr_deploy.export import export_model
from dsr_deploy.models.digits import DIGITS_T, load_digits_split
from dsr_deploy.runtime import load_runner

MAX_DROP = 0.5


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    pytest.importorskip("sklearn", reason="the digits data ship with scikit-learn (the test extra)")
    d = tmp_path_factory.mktemp("ee_digits")
    split = load_digits_split()  # the quickstart's held-out split
    x = np.ascontiguousarray(direct_encode(split.x_test, DIGITS_T).numpy().astype(np.float32))
    y = split.y_test.numpy()
    np.save(d / "x.npy", x)
    np.save(d / "y.npy", y)
    export_model(models.build("digits-cnn").eval(), (DIGITS_T, 1, 1, 8, 8), d / "stream", mode="streaming",
                 formats=("onnx",),
                     spec="zoo:digits-cnn")
    return d, x, y


def test_calibrated_rule_keeps_heldout_accuracy_within_the_bound(digits, capsys):
    d, x, y = digits
    plot = ["--plot", str(d / "curve.png")] if importlib.util.find_spec("matplotlib") else []
    code, out, err = run_cli(capsys, "exit-calibrate", str(d / "stream"), "--input", str(d / "x.npy"),
                             "--labels", str(d / "y.npy"), "--max-drop", str(MAX_DROP), *plot)
    assert code == 0, err
    assert "chosen" in out and "mean steps" in out
    if plot:  # the curve as PNG (matplotlib: the bench extra)
        assert (d / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads((d / "stream" / "manifest.json").read_text())["early_exit"]
    cal = record["calibration"]
    assert cal["samples"] == len(y) and cal["T"] == DIGITS_T and cal["max_drop"] == MAX_DROP
    with load_runner(d / "stream", "onnxruntime", custom_ops="off") as r:
        full = r.infer({"x_t": x}, early_exit="full")
        early = r.infer({"x_t": x}, early_exit="manifest")  # the recorded rule, the run really stops
    assert (full[EXIT_STEPS] == DIGITS_T).all()
    full_acc = float((full[EXIT_PREDICTION] == y).mean())
    acc = float((early[EXIT_PREDICTION] == y).mean())
    assert full_acc == pytest.approx(cal["full_accuracy"]) and acc == pytest.approx(cal["accuracy"])
    assert 100 * (full_acc - acc) <= MAX_DROP + 1e-9
    assert early[EXIT_STEPS].mean() == pytest.approx(cal["mean_steps"]) and early[EXIT_STEPS].mean() < DIGITS_T


def test_exit_calibrate_bad_input_exits_2(digits, tmp_path, capsys):
    d, x, y = digits
    np.save(tmp_path / "short.npy", y[:-1])
    np.save(tmp_path / "float_labels.npy", y.astype(np.float32))
    np.save(tmp_path / "wrong_T.npy", x[:3])
    base = ["exit-calibrate", str(d / "stream"), "--input", str(d / "x.npy"), "--labels", str(d / "y.npy")]
    cases = [
        (base + ["--max-drop", "-1"], "--max-drop"),
        (base + ["--max-drop", "nan"], "--max-drop"),
        (["exit-calibrate", str(tmp_path / "nope"), "--input", str(d / "x.npy"), "--labels", str(d / "y.npy")],
         "not an export folder"),
        (base[:4] + ["--labels", str(tmp_path / "short.npy")], "labels"),
        (base[:4] + ["--labels", str(tmp_path / "float_labels.npy")], "labels"),
        (["exit-calibrate", str(d / "stream"), "--input", str(tmp_path / "wrong_T.npy"), "--labels",
          str(d / "y.npy")], "T=3"),
        (base + ["--plot", str(tmp_path)], "--plot"),
    ]
    before = (d / "stream" / "manifest.json").read_text()
    for argv, msg in cases:
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and msg in err and "Traceback" not in err, (argv, err)
        assert len(err.strip().splitlines()) == 1
    assert (d / "stream" / "manifest.json").read_text() == before  # nothing half-written


def test_a_tampered_early_exit_record_is_refused(digits, tmp_path, capsys):
    import shutil

    d, x, _ = digits
    bad = tmp_path / "bad"
    shutil.copytree(d / "stream", bad)
    m = json.loads((bad / "manifest.json").read_text())
    m["early_exit"] = {"rule": "stable", "threshold": "3; rm -rf /"}
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(Exception, match="early_exit.threshold"):
        with load_runner(bad, "onnxruntime") as r:
            r.infer({"x_t": x[:, :2]}, early_exit="manifest")


def test_cli_per_step_readout_export_verifies_and_its_last_step_is_the_logits(tmp_path, capsys):
    out = tmp_path / "ps"
    code, _, err = run_cli(capsys, "export", "zoo:digits-cnn", "--encode", "direct", "--readout", "mean",
                           "--per-step-readout", "--format", "torchscript,onnx", "--out", str(out))
    assert code == 0, err
    m = json.loads((out / "manifest.json").read_text())
    assert m["io"]["per_step_readout"] is True and m["outputs"] == ["output", "readout_steps"]
    code, stdout, err = run_cli(capsys, "verify", str(out))  # verify's reference: the logits output
    assert code == 0 and "PASSED" in stdout, err
    x = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
    with load_runner(out, "torchscript") as r:
        got = r.infer({"input": x})
    assert got["readout_steps"].shape == (DIGITS_T, 3, 10)
    np.testing.assert_array_equal(got["readout_steps"][-1], got["output"])
    code, _, err = run_cli(capsys, "export", "zoo:digits-cnn", "--per-step-readout", "--out", str(tmp_path / "x"))
    assert code == 2 and "--readout" in err and not (tmp_path / "x").exists()


def test_bench_early_exit_reports_steps_latency_and_throughput_next_to_full_T(digits, tmp_path, capsys):
    d, x, y = digits
    out = tmp_path / "bench.json"
    code, stdout, err = run_cli(capsys, "bench", str(d / "stream"), "--early-exit", "stable=3", "--input",
                                str(d / "x.npy"), "--labels", str(d / "y.npy"), "--batch", "32", "--iters", "1",
                                "--json", str(out), "-b", "onnxruntime:fallback")
    assert code == 0, err
    rows = {r["entry"]: r for r in json.loads(out.read_text())["rows"]}
    full, early = rows["all T steps"], rows["early exit (stable=3)"]
    assert full["mean_steps"] == DIGITS_T and early["mean_steps"] < DIGITS_T
    for r in (full, early):
        assert r["batch"] == 32 and r["p50_ms"] > 0 and r["p99_ms"] >= r["p50_ms"] and r["samples_per_s"] > 0
    assert 0.9 < early["accuracy"] <= full["accuracy"] + 0.005
    code, _, err = run_cli(capsys, "bench", str(d / "stream"), "--early-exit", "stable=3")
    assert code == 2 and "--input" in err
