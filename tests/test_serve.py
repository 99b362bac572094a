"""`dsr-deploy serve`: a real Triton server (PyTriton) on 127.0.0.1, started once for the module.

Bounded: one server start, a few thousand small requests, every wait with a timeout.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

pytest.importorskip("pytriton", reason="nvidia-pytriton (the serve extra) is not installed")
httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient (the serve extra) is not installed")
from _streaming_nets import conv_net, mlp_net  # noqa: E402
from _triton_server import post_raw  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from dsr_deploy.export import export_model  # noqa: E402
from dsr_deploy.runtime import load_runner  # noqa: E402
from dsr_deploy.serving.client import ServeClient, StreamClient  # noqa: E402
from dsr_deploy.serving.process import ServerProcess, alive  # noqa: E402

T = 6
IDLE_TIMEOUT_S = 3.0
START_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    net_multi, net_stream = conv_net(), mlp_net()
    multi = root / "conv"
    export_model(net_multi, (T, 2, 2, 8, 8), multi, formats=("onnx",))  # onnxruntime backend
    stream = root / "mlp_stream"
    export_model(net_stream, (T, 2, 6), stream, mode="streaming", formats=("torchscript",))  # torchscript backend
    server = ServerProcess(root, [multi, stream], ["--max-batch", "16", "--idle-timeout", str(IDLE_TIMEOUT_S)],
                           start_timeout_s=START_TIMEOUT_S)
    state = {"server": server, "stopped": False}
    yield {"server": server, "multi": multi, "stream": stream, "net_multi": net_multi, "net_stream": net_stream,
           "state": state}
    if not state["stopped"] and server.proc.poll() is None:
        server.kill()


def _x(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * 2).numpy()


def test_models_described(served):
    models = {m["name"]: m for m in served["server"].info["models"]}
    assert set(models) == {"conv", "mlp_stream"}
    assert models["conv"]["backend"] == "onnxruntime" and not models["conv"]["streaming"]
    assert models["mlp_stream"]["backend"] == "torchscript" and models["mlp_stream"]["streaming"]
    # The ONNX export has a dynamic T (Scan body): batch and T are both free.
    assert models["conv"]["inputs"][0] == {"name": "input", "dtype": "float32", "shape": [-1, -1, 2, 8, 8]}
    assert served["server"].info["http"].startswith("http://127.0.0.1:")


def test_multistep_results_equal_local_inference(served):
    with load_runner(served["multi"], "onnxruntime") as local, ServeClient(served["server"].url) as client:
        for batch, seed in ((1, 0), (3, 1), (5, 2)):
            x = _x((T, batch, 2, 8, 8), seed)
            want = local.infer({"input": x})["output"]
            got = client.infer_multistep("conv", x)
            assert got.dtype == np.float32 and got.shape == want.shape
            assert np.array_equal(got, want)
            with torch.no_grad():
                assert np.array_equal(got, served["net_multi"](torch.from_numpy(x)).numpy())
    assert want.any()


def test_concurrent_clients(served):
    """8 clients x 200 requests, all at once (dynamic batching merges them): no error, every result exact."""
    pool = [_x((T, 1, 2, 8, 8), 100 + i) for i in range(16)]
    with load_runner(served["multi"], "onnxruntime") as local:
        expected = [local.infer({"input": x})["output"] for x in pool]
    errors, mismatches, done = [], [], []

    def worker(k):
        try:
            with ServeClient(served["server"].url) as client:
                for r in range(200):
                    i = (k * 7 + r) % len(pool)
                    if not np.array_equal(client.infer_multistep("conv", pool[i]), expected[i]):
                        mismatches.append((k, r))
                    done.append(1)
        except Exception as exc:  # collected, asserted below
            errors.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors[:3]
    assert not mismatches
    assert len(done) == 8 * 200


def test_interleaved_streams_match_offline(served):
    xa, xb = _x((T, 1, 6), 7), _x((T, 1, 6), 8)
    with torch.no_grad():
        ref_a = served["net_stream"](torch.from_numpy(xa)).numpy()
        ref_b = served["net_stream"](torch.from_numpy(xb)).numpy()
    assert ref_a.any() and not np.array_equal(ref_a, ref_b)
    with ServeClient(served["server"].url) as client:
        a, b = StreamClient(client, "mlp_stream"), StreamClient(client, "mlp_stream")
        ya, yb = [], []
        for t in range(T):
            ya.append(a.step(xa[t], end=t == T - 1))
            yb.append(b.step(xb[t], end=t == T - 1))
        assert np.array_equal(np.stack(ya), ref_a)
        assert np.array_equal(np.stack(yb), ref_b)
        # Both streams' rows in one request (batched into one runner call), and the same stream twice in one
        # request (its two rows run one after the other).
        ids = np.array([[101], [102]], np.uint64)
        ys = []
        for t in range(T):
            res = client.infer("mlp_stream", {"x_t": np.concatenate([xa[t], xb[t]]), "sequence_id": ids,
                                              "sequence_start": np.full((2, 1), t == 0),
                                              "sequence_end": np.full((2, 1), t == T - 1)}, ["y_t"])
            ys.append(res["y_t"])
        ys = np.stack(ys)
        assert np.array_equal(ys[:, :1], ref_a) and np.array_equal(ys[:, 1:], ref_b)
        two = client.infer("mlp_stream", {"x_t": np.concatenate([xa[0], xa[1]]),
                                          "sequence_id": np.array([[103], [103]], np.uint64),
                                          "sequence_start": np.array([[True], [False]]),
                                          "sequence_end": np.array([[False], [True]])}, ["y_t"])["y_t"]
        assert np.array_equal(two, ref_a[:2, 0])


def test_sequence_end_and_idle_timeout_drop_state(served):
    x = _x((T, 1, 6), 9)
    with ServeClient(served["server"].url) as client:
        s = StreamClient(client, "mlp_stream")

        def continue_sequence(x_t):  # a step of an already started sequence (no start flag)
            return client.infer("mlp_stream", {"x_t": x_t, "sequence_id": np.array([[s.sequence_id]], np.uint64)})

        s.step(x[0])
        continue_sequence(x[1])
        s.step(x[2], end=True)
        with pytest.raises(InferenceServerException, match="unknown sequence id"):
            continue_sequence(x[3])
        s.reset()
        s.step(x[0])
        time.sleep(IDLE_TIMEOUT_S + 1.5)  # the server sweeps idle sequences every second
        with pytest.raises(InferenceServerException, match="unknown sequence id"):
            continue_sequence(x[1])


def test_bad_requests_get_errors_and_server_keeps_serving(served):
    x = _x((T, 1, 2, 8, 8), 3)
    with ServeClient(served["server"].url) as client:
        good = client.infer_multistep("conv", x)
        bad = [
            ("wrong shape", lambda: client.infer("conv", {"input": np.zeros((1, T, 2, 8, 7), np.float32)})),
            ("wrong dtype", lambda: client.infer("conv", {"input": np.zeros((1, T, 2, 8, 8), np.float64)})),
            ("unknown model", lambda: client.infer("nope", {"input": np.zeros((1, T, 2, 8, 8), np.float32)})),
            ("missing input", lambda: client.infer("mlp_stream", {"x_t": np.zeros((1, 6), np.float32)})),
            ("unknown sequence", lambda: client.infer("mlp_stream", {
                "x_t": np.zeros((1, 6), np.float32), "sequence_id": np.array([[424242]], np.uint64)})),
            ("reserved id 0", lambda: client.infer("mlp_stream", {
                "x_t": np.zeros((1, 6), np.float32), "sequence_id": np.array([[0]], np.uint64),
                "sequence_start": np.array([[True]])})),
        ]
        for what, call in bad:
            with pytest.raises(InferenceServerException):
                call()
            assert np.array_equal(client.infer_multistep("conv", x), good), f"server broken after {what}"
        assert client.client.is_server_live() and client.client.is_model_ready("mlp_stream")


def _post(server, path: str, body: bytes, headers=None):
    return post_raw(server.http_port, path, body, headers)


HOSTILE = [
    # (what, model, JSON request or raw bytes, extra headers, expected status, expected words)
    ("the issue's request", "conv", {"inputs": [{"name": "input", "shape": [100000000, 6, 16], "datatype": "FP32",
                                                 "data": [0.0]}]}, {}, 400, "the model expects"),
    ("batch over --max-batch", "conv", {"inputs": [{"name": "input", "shape": [100000000, T, 2, 8, 8],
                                                    "datatype": "FP32", "data": [0.0]}]}, {}, 400, "--max-batch"),
    ("huge dynamic T", "conv", {"inputs": [{"name": "input", "shape": [1, 10 ** 9, 2, 8, 8], "datatype": "FP32",
                                            "data": [0.0]}]}, {}, 400, "--max-request-mb"),
    ("negative dimension", "conv", {"inputs": [{"name": "input", "shape": [1, -5, 2, 8, 8], "datatype": "FP32",
                                                "data": [0.0]}]}, {}, 400, "negative"),
    ("not JSON", "conv", b"{nope", {}, 400, "not valid JSON"),
    ("absurdly nested JSON", "conv", b'{"inputs": ' + b"[" * 100000 + b"]" * 100000 + b"}", {}, 400,
     "not valid JSON"),
    ("gzip bomb", "conv", "gzip-bomb", {"Content-Encoding": "gzip"}, 413, "inflates to more than"),
    ("unknown sequence id", "mlp_stream", {"inputs": [
        {"name": "x_t", "shape": [1, 6], "datatype": "FP32", "data": [0.0] * 6},
        {"name": "sequence_id", "shape": [1, 1], "datatype": "UINT64", "data": [424242]}]}, {}, 400,
     "unknown sequence id 424242"),
    ("END without START", "mlp_stream", {"inputs": [
        {"name": "x_t", "shape": [1, 6], "datatype": "FP32", "data": [0.0] * 6},
        {"name": "sequence_id", "shape": [1, 1], "datatype": "UINT64", "data": [77]},
        {"name": "sequence_end", "shape": [1, 1], "datatype": "BOOL", "data": [True]}]}, {}, 400,
     "unknown sequence id 77"),
    ("sequence_id 0", "mlp_stream", {"inputs": [
        {"name": "x_t", "shape": [1, 6], "datatype": "FP32", "data": [0.0] * 6},
        {"name": "sequence_id", "shape": [1, 1], "datatype": "UINT64", "data": [0]},
        {"name": "sequence_start", "shape": [1, 1], "datatype": "BOOL", "data": [True]}]}, {}, 400,
     "sequence_id 0 is reserved"),
]


@pytest.mark.parametrize("what, model, request_, headers, status, words", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_request_is_refused_and_the_server_survives(served, what, model, request_, headers, status, words):
    import gzip
    import json

    server = served["server"]
    if request_ == "gzip-bomb":
        body = gzip.compress(b"0" * (80 << 20))  # 80 MiB of zeros in about 80 KiB
    else:
        body = request_ if isinstance(request_, bytes) else json.dumps(request_).encode()
    code, answer = _post(server, f"/v2/models/{model}/infer", body, headers)
    assert code == status, answer
    message = json.loads(answer)["error"]
    assert words in message and "\n" not in message and "Traceback" not in message and ".py" not in message
    assert server.proc.poll() is None, "the server died"
    # ... and a valid request right after it is answered.
    x = _x((T, 1, 2, 8, 8), 5)
    with ServeClient(server.url) as client:
        assert client.infer_multistep("conv", x).shape[:2] == (T, 1)


def test_request_body_over_the_limit_is_refused_unread(served):
    import http.client

    server = served["server"]
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=60)
    try:
        conn.putrequest("POST", "/v2/models/conv/infer")
        conn.putheader("Content-Length", str(1 << 40))  # a terabyte announced, nothing sent
        conn.endheaders()
        resp = conn.getresponse()
        assert resp.status == 413 and b"--max-request-mb" in resp.read()
    finally:
        conn.close()
    assert server.proc.poll() is None


def test_shutdown_leaves_no_process_or_folder(served):
    """Last test of the module: SIGTERM stops the server cleanly."""
    server, state = served["server"], served["state"]
    assert server.children, "the server runs tritonserver and backend stubs as child processes"
    assert any(server.pytriton_home.iterdir()), "PyTriton's workspace exists while serving"
    assert all(f.is_dir() for f in server.backend_folders)
    t0 = time.monotonic()
    rc = server.stop(timeout_s=60)
    state["stopped"] = True
    assert rc == 0
    assert time.monotonic() - t0 < 30  # no 30 s exit timeout waiting on an open connection
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(p) for p in server.children):
        time.sleep(0.2)
    assert not [p for p in server.children if alive(p)]
    assert not server.pytriton_home.exists() or list(server.pytriton_home.iterdir()) == []
    # `import onnxruntime` itself writes $TMPDIR/.ses (a small session-id file it keeps across runs; /tmp/.ses
    # exists on any machine that ran it): not a server leftover.
    assert [p.name for p in server.tmpdir.iterdir() if p.name != ".ses"] == []
    assert len(server.backend_folders) == 2  # one python-backend stub per model, each with its unpacked folder
    assert [f for f in server.backend_folders if f.exists()] == []
