"""dsr-deploy bench: statistics, the JSON / CSV schemas, the CLI, bad arguments (no timing assertions)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from runtime_nets import NeuronNet, save_onnx_dsr_nodes, save_onnx_unrolled, spiky_input

from dsr_deploy import bench as B
from dsr_deploy.cli import main
from dsr_deploy.errors import UserError
from dsr_deploy.runtime import load_runner
from dsr_deploy.runtime.base import Runner, TensorSpec

JSON_TOP = {"schema", "schema_version", "created", "artifact", "machine", "libraries", "settings", "entries",
            "results"}
ROW_KEYS = {"label", "backend", "device", "batch", "timesteps", "input_shape", "iterations", "latency_ms",
            "throughput", "speedup_vs_first", "memcpy_ms", "vs_memcpy", "error"}
MACHINE_KEYS = {"cpu_model", "cpu_cores", "cpu_cores_usable", "gpu", "gpu_driver", "os", "memory_gib"}


class EchoRunner(Runner):
    """A runner doing a known amount of numpy work; counts its calls."""

    backend = "echo"

    def __init__(self, artifact="echo", **options):
        super().__init__(artifact, **options)
        self.calls = 0

    def _load(self):
        pass

    def inputs(self):
        return [TensorSpec("input", ("T", "B", 4), "float32")]

    def outputs(self):
        return [TensorSpec("output", ("T", "B", 4), "float32")]

    def _infer(self, feeds, copy_outputs):
        self.calls += 1
        x = feeds["input"]
        return {"output": np.cumsum(x, axis=0)}


@pytest.fixture(scope="module")
def chain_onnx(tmp_path_factory):
    return save_onnx_dsr_nodes(tmp_path_factory.mktemp("bench") / "chain.onnx", shape_tail=(4,))


def test_parse_int_list():
    assert B.parse_int_list("1,8, 32", "--batch") == [1, 8, 32]
    assert B.parse_int_list(None, "--batch") is None
    with pytest.raises(UserError, match=r"--batch: 'x' is not an integer"):
        B.parse_int_list("1,x", "--batch")
    with pytest.raises(UserError, match="must be >= 1"):
        B.parse_int_list("0", "--timesteps")


def test_parse_backends():
    got = B.parse_backends(["torchscript,onnxruntime:fallback", "onnxruntime", "torchscript"])
    assert got == [("torchscript", "torchscript", {}), ("onnxruntime:fallback", "onnxruntime", {"custom_ops": "off"}),
                   ("onnxruntime", "onnxruntime", {})]
    with pytest.raises(UserError, match="unknown backend 'tensorflow'"):
        B.parse_backends(["tensorflow"])


def test_summarize_statistics():
    times = [float(v) for v in range(1, 101)]  # 1..100 ms
    s = B.summarize(times, batch=8, timesteps=20, neurons=1000)
    lat = s["latency_ms"]
    assert lat["min"] == 1.0 and lat["max"] == 100.0 and lat["mean"] == pytest.approx(50.5)
    assert lat["p50"] == pytest.approx(50.5) and lat["p90"] == pytest.approx(90.1)
    assert lat["p99"] == pytest.approx(99.01)
    assert s["iterations"] == 100
    assert s["throughput"]["samples_per_s"] == pytest.approx(8 / 0.0505)
    assert s["throughput"]["neuron_steps_per_s"] == pytest.approx(8 / 0.0505 * 20 * 1000)
    assert B.summarize([2.0], 1, 5, None)["throughput"]["neuron_steps_per_s"] is None


def test_run_timed_counts_warmup_and_iterations():
    calls = []
    times = B.run_timed(lambda: calls.append(1), B.Timer("cpu", lambda: None), warmup=3, iters=5, seconds=None)
    assert len(times) == 5 and len(calls) == 8 and all(t >= 0 for t in times)
    times = B.run_timed(lambda: None, B.Timer("cpu", lambda: None), warmup=0, iters=None, seconds=0.01)
    assert len(times) >= 1


def test_benchmark_rows_ratios_and_schemas(tmp_path):
    a, b = EchoRunner(), EchoRunner()
    result = B.run_benchmark([B.BenchEntry("first", a), B.BenchEntry("second", b)], [1, 3], [2, 5], warmup=2,
                             iters=4, neurons=4, artifact="echo")
    assert a.calls == b.calls == 4 * (1 + 2 + 4)  # per config: 1 shape check + 2 warm-up + 4 timed
    doc = result.to_dict()
    assert set(doc) == JSON_TOP
    assert doc["schema"] == "dsr-deploy-bench" and doc["schema_version"] == B.SCHEMA_VERSION == 1
    assert MACHINE_KEYS <= set(doc["machine"]) and doc["machine"]["cpu_cores"] >= 1
    assert doc["libraries"]["torch"] and doc["libraries"]["numpy"]
    assert doc["settings"]["baseline"] == "first"
    rows = doc["results"]
    assert [(r["label"], r["batch"], r["timesteps"]) for r in rows] == [
        (lab, bb, t) for lab in ("first", "second") for bb in (1, 3) for t in (2, 5)]
    for r in rows:
        assert set(r) >= ROW_KEYS and r["error"] is None and r["iterations"] == 4
        assert set(r["latency_ms"]) == {"p50", "p90", "p99", "mean", "min", "max", "std"}
        lat = r["latency_ms"]
        assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        thr = r["throughput"]
        assert thr["samples_per_s"] == pytest.approx(r["batch"] / lat["mean"] * 1e3)
        assert thr["neuron_steps_per_s"] == pytest.approx(thr["samples_per_s"] * r["timesteps"] * 4)
        base = next(x for x in rows if x["label"] == "first" and x["batch"] == r["batch"]
                    and x["timesteps"] == r["timesteps"])
        assert r["speedup_vs_first"] == pytest.approx(base["latency_ms"]["mean"] / lat["mean"])
        assert r["memcpy_ms"] > 0 and r["vs_memcpy"] == pytest.approx(lat["mean"] / r["memcpy_ms"])
        assert r["input_shape"] == [r["timesteps"], r["batch"], 4]
    json.loads(json.dumps(doc))  # plain JSON types only

    text = result.csv_text()
    table = list(csv.DictReader(io.StringIO(text)))
    assert text.splitlines()[0].split(",") == B.CSV_COLUMNS
    assert len(table) == len(rows)
    assert table[0]["schema_version"] == "1" and table[0]["label"] == "first"
    assert float(table[0]["mean_ms"]) == pytest.approx(rows[0]["latency_ms"]["mean"], rel=1e-5)

    B.write_json(result, tmp_path / "r.json")
    B.write_csv(result, tmp_path / "r.csv")
    assert json.loads((tmp_path / "r.json").read_text())["results"][0]["label"] == "first"
    assert (tmp_path / "r.csv").read_text() == text


def test_schema_doc_lists_every_field():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "bench-schema.md").read_text()
    for key in sorted(JSON_TOP | ROW_KEYS | MACHINE_KEYS | set(B.CSV_COLUMNS)):
        assert f"`{key}`" in doc, key


def test_failing_entry_keeps_the_others():
    class Broken(EchoRunner):
        def _infer(self, feeds, copy_outputs):
            raise RuntimeError("device fell off\nsecond line")

    result = B.run_benchmark([B.BenchEntry("ok", EchoRunner()), B.BenchEntry("broken", Broken())], [1], [2],
                             warmup=0, iters=2, memcpy=False)
    ok, broken = result.rows
    assert ok["error"] is None and ok["latency_ms"]
    assert broken["latency_ms"] is None and broken["error"] == "RuntimeError: device fell off"


def test_fixed_time_steps_are_skipped_not_faked(tmp_path):
    import torch

    p = save_onnx_unrolled(NeuronNet(), torch.from_numpy(spiky_input((4, 2, 5))), tmp_path / "fixed_t.onnx")
    result = B.run_benchmark([B.BenchEntry("ort", load_runner(p))], [2], [4, 6], warmup=0, iters=2, memcpy=False)
    assert result.rows[0]["error"] is None
    assert result.rows[1]["error"] == "skipped: the artifact has a fixed T=4"


def test_benchmark_argument_errors():
    e = [B.BenchEntry("echo", EchoRunner())]
    with pytest.raises(UserError, match="iteration count or a time budget"):
        B.run_benchmark(e, [1], [2], iters=None, seconds=None)
    with pytest.raises(UserError, match="batch sizes must be >= 1"):
        B.run_benchmark(e, [0], [2])
    with pytest.raises(UserError, match="nothing to benchmark"):
        B.run_benchmark([], [1], [2])


def test_count_neurons_on_eager_model():
    import torch

    from dsr_deploy.neuron import DSRIFNode, DSRLIFNode

    model = torch.nn.Sequential(torch.nn.Flatten(2), DSRIFNode(T=None), DSRLIFNode(T=None))
    assert B.count_neurons(model, (3, 1, 2, 5)) == 20
    assert B.count_neurons(torch.nn.Linear(2, 2), (3, 1, 2)) is None


def test_neurons_from_manifest():
    assert B.neurons_from_manifest({"neurons": [{"size": 10}, {"shape": [20, 1, 4, 2]}]}) == 18
    assert B.neurons_from_manifest({"neurons": [{"type": "if"}]}) is None
    assert B.neurons_from_manifest(None) is None


def _cli(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    cap = capsys.readouterr()
    return e.value.code, cap.out, cap.err


def test_cli_bench_writes_json_csv_plot(chain_onnx, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    js, cs, png = tmp_path / "b.json", tmp_path / "b.csv", tmp_path / "b.png"
    main(["bench", str(chain_onnx), "-b", "onnxruntime,onnxruntime:fallback", "--batch", "1,2", "-T", "3",
          "--input-shape", "3,1,4", "--warmup", "1", "--iters", "3",
          "--json", str(js), "--csv", str(cs), "--plot", str(png)])  # returns normally on success
    out = capsys.readouterr().out
    assert "onnxruntime:fallback" in out and "dsr ops: function fallback" in out
    doc = json.loads(js.read_text())
    assert len(doc["results"]) == 4 and all(r["iterations"] == 3 for r in doc["results"])
    assert doc["entries"]["onnxruntime:fallback"]["dsr_ops"] == "function fallback (custom ops disabled)"
    assert len(list(csv.DictReader(cs.open()))) == 4
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv,message", [
    (["bench", "/nonexistent/model.onnx"], "no such file"),
    (["bench", "{chain}", "--iters", "3", "--seconds", "1"], "give --iters or --seconds, not both"),
    (["bench", "{chain}", "--batch", "1,two"], "--batch: 'two' is not an integer"),
    (["bench", "{chain}", "-b", "tensorflow"], "unknown backend 'tensorflow'"),
    (["bench", "{chain}", "--batch", "1", "--iters", "1"], "number of time steps is dynamic; pass --timesteps"),
    (["bench", "{chain}", "-T", "3", "--batch", "1", "--iters", "1", "--input-shape", "3,1,4,4"],
     "--input-shape 3,1,4,4 does not match the onnxruntime model input [?,?,4]"),
])
def test_cli_bench_bad_arguments_one_line(chain_onnx, capsys, argv, message):
    argv = [a.replace("{chain}", str(chain_onnx)) for a in argv]
    code, out, err = _cli(argv, capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err


def test_cli_one_line_error_in_a_real_process(tmp_path):
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"garbage")
    proc = subprocess.run([sys.executable, "-m", "dsr_deploy", "bench", str(bad), "-T", "2", "--iters", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: ")
    assert "cannot read" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_bench_time_budget(chain_onnx, tmp_path, capsys):
    cs = tmp_path / "b.csv"
    main(["bench", str(chain_onnx), "-b", "onnxruntime", "--batch", "1", "-T", "2,5", "--warmup", "0",
          "--seconds", "0.05", "--no-memcpy", "--csv", str(cs)])
    rows = list(csv.DictReader(cs.open()))
    assert [int(r["timesteps"]) for r in rows] == [2, 5]  # dynamic T: every requested T runs
    assert all(int(r["iterations"]) >= 1 and r["memcpy_ms"] == "" and r["error"] == "" for r in rows)
    assert "wrote" in capsys.readouterr().out
