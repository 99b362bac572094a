"""The GPU check script runs on CUDA machines only; its logic is smoke-tested here on the CPU kernels."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from _native_util import ensure_torch_native, repo_root


def test_gpu_check_script_dry_run_on_cpu(tmp_path):
    ensure_torch_native()
    out = tmp_path / "report.md"
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, str(repo_root() / "scripts" / "gpu_check.py"), "--dry-run-cpu", "--quick", "--repeats", "1",
         "--shape", "3", "2", "64", "--out", str(out)],
        capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = out.read_text()
    assert "CPU DRY RUN" in report and "| IF | float32 |" in report and "| LIF | bfloat16 |" in report
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["correctness"] and all(r["ok"] for r in data["correctness"])
    assert {r["dtype"] for r in data["correctness"]} == {"float32", "float16", "bfloat16"}
    assert all(r["same_as_cpu"] for r in data["correctness"] if r.get("same_as_cpu") is not None)
    # the TorchScript export's neurons are checked on the device too
    assert {r["kind"] for r in data["torchscript"]} == {"if", "lif"}
    assert all(r["bit_exact"] for r in data["torchscript"])
    assert "TorchScript export's neurons" in report
    # small-layer latency rows (N = 4K, 32K, 256K) and the TensorRT step, which degrades to a one-line skip
    assert sorted({r["N"] for r in data["small_n"]}) == [4096, 32768, 262144]
    assert all(r["bit_exact"] for r in data["small_n"]) and "## Small layers" in report
    assert "## TensorRT" in report and data["tensorrt"] == []
    # the quantised ops' CUDA check needs device pointers: a one-line skip on the dry run
    assert "## Quantised ops" in report and data["quantized"] == [] and "dry run" in data["quantized_note"]
