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


def test_exit_codes_of_commands_propagate(monkeypatch):
    # main() runs click outside standalone mode; a command's `typer.Exit(n)` must still end the process with n.
    import pytest
    import typer

    from dsr_deploy import cli

    sub = typer.Typer()

    @sub.callback()
    def _group():
        """A group, so the command is named on the command line."""

    @sub.command("exit-with")
    def _exit_with(code: int):
        raise typer.Exit(code)

    monkeypatch.setattr(cli, "app", sub)
    with pytest.raises(SystemExit) as info:
        cli.main(["exit-with", "3"])
    assert info.value.code == 3
