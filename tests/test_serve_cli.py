"""`dsr-deploy serve` / `triton-repo` command-line errors: one line, exit 2, no server started."""

from __future__ import annotations

import subprocess
import sys
import time

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


def test_http_guard_checks_declared_shapes_without_a_server():
    """The guard's rules on their own (the live server is tested in test_serve.py)."""
    from dsr_deploy.serving.http_guard import ModelLimits, Refused, check_request, clean_error

    limits = ModelLimits({"input": (-1, 2, 8, 8)}, max_batch=8)
    ok = {"inputs": [{"name": "input", "shape": [8, 100, 2, 8, 8], "datatype": "FP32"}]}
    check_request(ok, limits, 64 << 20)
    bad = [
        ({"inputs": [{"name": "input", "shape": [100000000, 6, 16], "datatype": "FP32"}]}, "the model expects"),
        ({"inputs": [{"name": "input", "shape": [9, 1, 2, 8, 8], "datatype": "FP32"}]}, "at most 8"),
        ({"inputs": [{"name": "input", "shape": [1, 1, 3, 8, 8], "datatype": "FP32"}]}, "the model expects"),
        ({"inputs": [{"name": "input", "shape": [1, 2 ** 40, 2, 8, 8], "datatype": "FP32"}]}, "MiB"),
        ({"inputs": [{"name": "input", "shape": [1, -1, 2, 8, 8], "datatype": "FP32"}]}, "negative"),
        ({"inputs": [{"name": "input", "shape": "big"}]}, "list of integers"),
        ({"inputs": [{"name": "other", "shape": [2 ** 62, 2 ** 62], "datatype": "FP64"}]}, "MiB"),
        ({"inputs": {}}, "list of inputs"),
        ([], "list of inputs"),
    ]
    for request, words in bad:
        with pytest.raises(Refused, match=words):
            check_request(request, limits, 64 << 20)
    assert check_request(ok, None, 64 << 20) is None  # unknown model: Triton answers it
    tb = 'Traceback (most recent call last):\n  File "/x/y.py", line 3\ndsr_deploy.errors.UserError: unknown id 5\n'
    assert clean_error(tb) == (True, "unknown id 5")
    assert clean_error('Traceback (most recent call last):\n  File "/x.py"\nValueError: bad') == (
        False, "inference failed: ValueError: bad")


def test_http_guard_bounds_open_connections(monkeypatch):
    import socket

    from dsr_deploy.serving import http_guard
    from dsr_deploy.serving.process import free_ports

    monkeypatch.setattr(http_guard, "MAX_CONNECTIONS", 2)
    port, backend = free_ports(2)
    guard = http_guard.HttpGuard("127.0.0.1", port, backend, {})
    guard.start()
    socks = []
    try:
        for _ in range(3):  # idle clients: two hold a slot each, the third is closed at once
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            socks.append(s)
            time.sleep(0.2)
        assert socks[2].recv(10) == b""
        socks[0].settimeout(0.5)
        with pytest.raises(socket.timeout):
            socks[0].recv(10)  # still open, waiting for a request
        # A request on a held connection is answered (no server behind: 503, one sentence).
        socks[1].sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
        assert socks[1].recv(200).startswith(b"HTTP/1.1 503")
    finally:
        for s in socks:
            s.close()
        guard.stop()


def test_pytriton_home_too_long_for_its_sockets_is_refused():
    from pathlib import Path

    from dsr_deploy.errors import UserError
    from dsr_deploy.serving.pytriton_server import UNIX_PATH_MAX, check_socket_room

    check_socket_room(["digits"], home=Path("/tmp/pt"))  # short: fine
    with pytest.raises(UserError, match="PYTRITON_HOME") as err:
        check_socket_room(["digits"], home=Path("/tmp/" + "d" * (UNIX_PATH_MAX - 20)))
    assert "\n" not in str(err.value)


def test_serve_with_a_too_long_pytriton_home_exits_2_before_starting(tmp_path):
    import os

    from _streaming_nets import mlp_net

    from dsr_deploy.export import export_model

    export_model(mlp_net(), (4, 1, 6), tmp_path / "mlp", formats=("torchscript",))
    home = tmp_path / ("h" * 100)
    env = dict(os.environ, PYTRITON_HOME=str(home))
    res = subprocess.run([sys.executable, "-m", "dsr_deploy", "serve", str(tmp_path / "mlp")], capture_output=True,
                         text=True, timeout=120, env=env)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "set PYTRITON_HOME to a shorter folder" in lines[0], res.stderr
    assert not home.exists() or not any(home.iterdir())  # no workspace was made
