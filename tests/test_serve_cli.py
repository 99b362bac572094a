"""`dsr-deploy serve` / `triton-repo` command-line errors: one line, exit 2, no server started."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dsr_deploy.serving.pytriton_server import SequenceStore, ensure_libpython_path


def _run(*args):
    return subprocess.run([sys.executable, "-m", "dsr_deploy", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, message", [
    (["serve", "/nonexistent/export"], "does not exist"),
    (["serve", "/tmp", "--port", "0"], "--port must be in 1..65535"),
    (["serve", "/tmp", "--max-batch", "-1"], "--max-batch must be >= 0"),
    (["triton-repo", "/nonexistent/export", "--out", "/tmp/never-written-repo"], "does not exist"),
])
def test_cli_errors_are_one_line(args, message):
    res = _run(*args)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.stderr


def test_libpython_dir_goes_first():
    import sysconfig

    env = {"LD_LIBRARY_PATH": "/a:" + sysconfig.get_config_var("LIBDIR") + ":/b"}
    ensure_libpython_path(env)
    assert env["LD_LIBRARY_PATH"].split(":") == [sysconfig.get_config_var("LIBDIR"), "/a", "/b"]


def test_sequence_store_idle_sweep_oldest_first():
    now = [0.0]
    store = SequenceStore([(2,), (3, 1)], idle_timeout_s=10, clock=lambda: now[0])
    store.put(1, store.zeros())
    now[0] = 5
    store.put(2, store.zeros())
    now[0] = 12
    assert store.sweep() == 1 and 1 not in store and 2 in store
    store.put(2, store.get(2))  # used again: its idle clock restarts
    now[0] = 21
    assert store.sweep() == 0 and len(store) == 1
    assert [z.shape for z in store.zeros()] == [(2,), (3, 1)]


@pytest.mark.parametrize("which", ["--port", "--grpc-port"])
def test_taken_port_is_one_line_before_anything_starts(tmp_path, which):
    import socket
    import time

    from dsr_deploy.serving.process import free_ports

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    other = free_ports(1)[0]
    ports = ["--port", str(port), "--grpc-port", str(other)] if which == "--port" else \
        ["--port", str(other), "--grpc-port", str(port)]
    try:
        t0 = time.monotonic()
        res = _run("serve", str(tmp_path), *ports)
        elapsed = time.monotonic() - t0
    finally:
        taken.close()
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0] == f"error: cannot listen on 127.0.0.1:{port} ({which}): Address already in use"
    assert elapsed < 30  # no server was started
