"""`dsr-deploy --version` and `dsr-deploy info` in a real subprocess."""

import json
import subprocess
import sys

import dsr_deploy


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "dsr_deploy", *args], capture_output=True, text=True, timeout=120)


def test_version():
    r = _cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"dsr-deploy {dsr_deploy.__version__}"


def test_info_json_lists_versions_and_backends():
    r = _cli("info", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    for key in ("torch", "numpy", "onnx", "onnxruntime", "native_torch_ops", "optional"):
        assert key in data
    assert data["onnxruntime"]["version"]
    assert set(data["optional"]) >= {"tensorrt", "pytriton", "spikingjelly"}
    assert all(isinstance(v["importable"], bool) for v in data["optional"].values())


def test_info_table_and_unknown_command():
    r = _cli("info")
    assert r.returncode == 0 and "torch" in r.stdout and "onnxruntime" in r.stdout
    r = _cli("no-such-command")
    assert r.returncode != 0 and "Traceback" not in r.stderr
