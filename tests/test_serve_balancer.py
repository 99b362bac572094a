"""Two `dsr-deploy serve` replicas behind nginx on loopback: streams keep to their replica by the sequence header.

nginx (Debian's package; `.ci/run` installs it best-effort) runs with its own prefix, config, pid and logs under the
test's temporary folder, in the foreground, started and stopped here. One nginx, two listeners over the same two
replicas: consistent hashing on ``X-DSR-Sequence-Id`` (the documented rule) and round robin (what breaks streams).
Its access log records which replica served each step. Bounded: two server starts, a few hundred small requests,
every wait with a timeout.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("pytriton", reason="nvidia-pytriton (the serve extra) is not installed")
pytest.importorskip("tritonclient.http", reason="tritonclient (the serve extra) is not installed")
from _streaming_nets import mlp_net  # noqa: E402

from dsr_deploy.export import export_model  # noqa: E402
from dsr_deploy.serving.balancer import NginxProcess, find_nginx  # noqa: E402
from dsr_deploy.serving.client import SequenceStateLost, ServeClient, StreamClient  # noqa: E402
from dsr_deploy.serving.process import ServerProcess, free_ports  # noqa: E402

pytestmark = pytest.mark.skipif(find_nginx() is None, reason="nginx is not installed (Debian: apt-get install "
                                "nginx-light; .ci/run tries that before make test)")

T = 6
STREAMS = 8
MODEL = "mlp_stream"
JOIN_S = 120  # no thread may outlive this: nothing hangs


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("balancer")
    net = mlp_net()
    art = root / MODEL
    export_model(net, (T, 1, 6), art, mode="streaming", formats=("torchscript",))
    replicas = [None, None]

    # PyTriton's IPC sockets live in its workspace, and a Unix socket path has at most 107 bytes: pytest's
    # temporary folders can be deeper than that allows, so the replicas' workspaces go under a short /tmp folder.
    short = Path(tempfile.mkdtemp(prefix="dsrlb", dir="/tmp"))

    def start(i):
        replicas[i] = ServerProcess(short / f"r{i}", [art], ["--max-batch", "8"], start_timeout_s=240)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(2)]  # the two start side by side
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    nginx = None
    try:
        assert all(replicas), "a replica did not start (its log is under the test's temporary folder)"
        ups = [r.url for r in replicas]
        affinity_port, rr_port = free_ports(2)
        nginx = NginxProcess(root / "nginx", {affinity_port: "dsr_affinity", rr_port: "dsr_round_robin"},
                             {"dsr_affinity": (ups, True), "dsr_round_robin": (ups, False)})
        yield {"net": net, "replicas": replicas, "nginx": nginx, "affinity": f"127.0.0.1:{affinity_port}",
               "round_robin": f"127.0.0.1:{rr_port}"}
    finally:
        if nginx is not None:
            nginx.stop()
        for r in replicas:
            if r is not None:
                r.__exit__(None, None, None)  # SIGTERM, SIGKILL if it does not stop
        shutil.rmtree(short, ignore_errors=True)


def _x(seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn((T, 1, 6), generator=g) * 2).numpy()


def _reference(net, x):
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


def _run_streams(url, streams, first, last, results, pause=None):
    """Each ``(StreamClient-args, x)`` stepped from step ``first`` to ``last`` (exclusive) in its own thread and
    client; ``results[k]`` gets the outputs so far or the exception. ``pause``: a barrier before step ``first``."""
    def worker(k):
        sid, x = streams[k]
        try:
            with ServeClient(url, timeout_s=30) as c:
                s = StreamClient(c, MODEL, sid)
                s.started = first > 0
                if pause is not None:
                    pause.wait(JOIN_S)
                out = results.setdefault(k, [])
                for t in range(first, last):
                    out.append(s.step(x[t], end=t == T - 1))
        except Exception as exc:  # collected, asserted by the caller
            results[k] = exc

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(len(streams))]
    for t in threads:
        t.start()
    return threads


def _join(threads):
    for t in threads:
        t.join(JOIN_S)
    assert not [t for t in threads if t.is_alive()], "a stream hung"


def _placement(nginx, port):
    """sequence id -> the set of replicas (upstream addresses) that served its steps through ``port``."""
    where = defaultdict(set)
    for p, sid, ups, _ in nginx.routes():
        if p == port and sid:
            where[int(sid)].add(ups)
    return where


def test_streams_through_the_balancer_are_exact_and_stay_on_their_replica(cluster):
    from dsr_deploy.serving.client import new_sequence_id

    streams = [(new_sequence_id(), _x(k)) for k in range(STREAMS)]
    results: dict = {}
    _join(_run_streams(cluster["affinity"], streams, 0, T, results))
    for k, (_, x) in enumerate(streams):
        assert not isinstance(results[k], Exception), results[k]
        got = np.stack(results[k])
        assert got.dtype == np.float32 and np.array_equal(got, _reference(cluster["net"], x)), f"stream {k}"
    assert any(np.stack(results[k]).any() for k in results)
    where = _placement(cluster["nginx"], int(cluster["affinity"].rsplit(":", 1)[1]))
    for sid, _ in streams:
        assert len(where[sid]) == 1, f"the steps of sequence {sid} went to {where[sid]}"
    assert {u for s in where.values() for u in s} <= {r.url for r in cluster["replicas"]}


def test_round_robin_breaks_streams_as_documented(cluster):
    """Without affinity the steps of a stream alternate between the replicas: the other one holds no state."""
    from dsr_deploy.serving.client import new_sequence_id

    streams = [(new_sequence_id(), _x(100 + k)) for k in range(STREAMS)]
    results: dict = {}
    _join(_run_streams(cluster["round_robin"], streams, 0, T, results))
    lost = [k for k in results if isinstance(results[k], Exception)]
    assert lost, "round robin kept every stream whole (2**-40 odds): the comparison shows nothing"
    for k in lost:
        exc = results[k]
        assert isinstance(exc, SequenceStateLost), (str(exc), getattr(exc, "status", lambda: None)())
        assert "membrane state is lost" in str(exc) and "unknown sequence id" in str(exc)
        assert str(streams[k][0]) in str(exc)
    for k, (_, x) in enumerate(streams):  # a stream round robin happened to keep whole is still exact
        if k not in lost:
            assert np.array_equal(np.stack(results[k]), _reference(cluster["net"], x))


def _streams_on_both(cluster, port, first_steps):
    """Streams started through the balancer (``first_steps`` steps each), at least one on each replica."""
    from dsr_deploy.serving.client import new_sequence_id

    streams, results = [], {}
    for _ in range(6):  # 8 random ids all on one replica: 1 in 128; six rounds make that ~1e-13
        batch = [(new_sequence_id(), _x(200 + len(streams) + k)) for k in range(STREAMS if not streams else 4)]
        part: dict = {}
        _join(_run_streams(cluster["affinity"], batch, 0, first_steps, part))
        for k, r in part.items():
            assert not isinstance(r, Exception), r
            results[len(streams) + k] = r
        streams += batch
        where = _placement(cluster["nginx"], port)
        if len({next(iter(where[sid])) for sid, _ in streams}) == 2:
            break
    return streams, results, {sid: next(iter(where[sid])) for sid, _ in streams}


def test_a_replica_stopped_mid_run(cluster):
    """Replica A stops while streams are open: A's streams get a clear "state lost" error on their next step,
    B's streams (stepping while A stops) and every new stream (now all on B) stay exact; nothing hangs."""
    port = int(cluster["affinity"].rsplit(":", 1)[1])
    net, nginx = cluster["net"], cluster["nginx"]
    first = 2
    streams, results, on = _streams_on_both(cluster, port, first)
    a = cluster["replicas"][0]
    on_a = [k for k, (sid, _) in enumerate(streams) if on[sid] == a.url]
    on_b = [k for k in range(len(streams)) if k not in on_a]
    assert on_a and on_b
    # B's streams go on while A stops; A's resume once A is gone.
    b_results = {k: list(results[on_b[k]]) for k in range(len(on_b))}
    b_threads = _run_streams(cluster["affinity"], [streams[k] for k in on_b], first, T, b_results)
    assert a.stop(timeout_s=60) == 0
    a_results = {k: list(results[on_a[k]]) for k in range(len(on_a))}
    _join(_run_streams(cluster["affinity"], [streams[k] for k in on_a], first, T, a_results) + b_threads)
    for k, idx in enumerate(on_a):
        exc = a_results[k]
        assert isinstance(exc, SequenceStateLost), repr(exc)
        assert exc.sequence_id == streams[idx][0] and "membrane state is lost" in str(exc)
    for k, idx in enumerate(on_b):
        assert not isinstance(b_results[k], Exception), b_results[k]
        assert np.array_equal(np.stack(b_results[k]), _reference(net, streams[idx][1])), f"survivor stream {k}"
    # New sequences: all on the survivor, all exact.
    from dsr_deploy.serving.client import new_sequence_id

    fresh = [(new_sequence_id(), _x(300 + k)) for k in range(STREAMS)]
    fresh_results: dict = {}
    _join(_run_streams(cluster["affinity"], fresh, 0, T, fresh_results))
    survivor = cluster["replicas"][1].url
    where = _placement(nginx, port)
    for k, (sid, x) in enumerate(fresh):
        assert not isinstance(fresh_results[k], Exception), fresh_results[k]
        assert np.array_equal(np.stack(fresh_results[k]), _reference(net, x)), f"new stream {k}"
        assert where[sid] == {survivor}
