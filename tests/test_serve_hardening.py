"""Issue 21, serving: one reading of a request (duplicate keys refused, the guard's own serialisation forwarded),
client errors answered 4xx in one line without a server path, the server alive after each; only the manifest's
artifacts served. A real ``dsr-deploy serve`` on 127.0.0.1, started once for the module (bounded)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("pytriton", reason="nvidia-pytriton (the serve extra) is not installed")
pytest.importorskip("tritonclient.http", reason="tritonclient (the serve extra) is not installed")
from _streaming_nets import conv_net, mlp_net  # noqa: E402
from _triton_server import post_raw  # noqa: E402

from dsr_deploy.export import export_model  # noqa: E402
from dsr_deploy.serving.client import ServeClient  # noqa: E402
from dsr_deploy.serving.process import ServerProcess  # noqa: E402

T = 6


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("sh")  # short: PyTriton's socket paths under it have 107 bytes at most
    multi = root / "conv"
    export_model(conv_net(), (T, 2, 2, 8, 8), multi, formats=("onnx",))
    # A model file lying in the folder, not listed in its manifest: never served.
    (multi / "model.ts").write_bytes(b"not listed")
    stream = root / "mlp_stream"
    export_model(mlp_net(), (T, 2, 6), stream, mode="streaming", formats=("torchscript",))
    server = ServerProcess(root, [multi, stream], ["--max-batch", "16"], start_timeout_s=120)
    yield {"server": server, "multi": multi}
    if server.proc.poll() is None:
        server.stop(timeout_s=60)


def _post(server, path: str, body: bytes, headers=None):
    return post_raw(server.http_port, path, body, headers)


X_CONV = {"name": "input", "shape": [1, T, 2, 8, 8], "datatype": "FP32", "data": [0.0] * (T * 2 * 8 * 8)}
X_STEP = {"name": "x_t", "shape": [1, 6], "datatype": "FP32", "data": [0.0] * 6}
START = {"name": "sequence_start", "shape": [1, 1], "datatype": "BOOL", "data": [True]}


def _sid(value, datatype="UINT64"):
    return {"name": "sequence_id", "shape": [1, 1], "datatype": datatype, "data": [value]}


def _dup_inputs() -> bytes:
    """The issue's request: the first "inputs" declares 100000000 x 6 x 16, the second is valid."""
    bad = json.dumps([{"name": "input", "shape": [100000000, T, 16], "datatype": "FP32", "data": [0.0]}])
    return f'{{"inputs": {bad}, "inputs": {json.dumps([X_CONV])}}}'.encode()


def _dup_shape() -> bytes:
    """"shape" twice inside one input: the first huge, the second valid."""
    inp = json.dumps(X_CONV)  # ends with the data list and "}"
    return f'{{"inputs": [{{"shape": [100000000, {T}, 2, 8, 8], {inp[1:]}]}}'.encode()


CASES = [
    # (what, model, raw body, expected status, words in the one-line reason)
    ("duplicate inputs key", "conv", _dup_inputs(), 400, "twice"),
    ("duplicate shape key inside an input", "conv", _dup_shape(), 400, "'shape' twice"),
    ("NaN literal", "conv", json.dumps({"inputs": [dict(X_CONV, data=[float("nan")] * (T * 128))]}).encode(), 400,
     "not JSON"),
    ("a number overflowing a double", "conv",
     json.dumps({"inputs": [X_CONV]}).replace("0.0", "1e400", 1).encode(), 400, "every element must be a number"),
    ("sequence_id 2**64", "mlp_stream", json.dumps({"inputs": [X_STEP, _sid(1 << 64), START]}).encode(), 400,
     "sequence_id"),
    ("sequence_id a string", "mlp_stream", json.dumps({"inputs": [X_STEP, _sid("seven"), START]}).encode(), 400,
     "sequence_id"),
    ("sequence_id negative", "mlp_stream", json.dumps({"inputs": [X_STEP, _sid(-1), START]}).encode(), 400,
     "sequence_id"),
    ("data shorter than its shape", "conv", json.dumps({"inputs": [dict(X_CONV, data=[0.0] * 7)]}).encode(), 400,
     "needs"),
    ("data longer than its shape", "conv",
     json.dumps({"inputs": [dict(X_CONV, data=[0.0] * (T * 128 + 1))]}).encode(), 400, "needs"),
    ("multistep T=0", "conv", json.dumps({"inputs": [dict(X_CONV, shape=[1, 0, 2, 8, 8], data=[])]}).encode(), 400,
     "empty dimension"),
    ("batch of 0", "conv", json.dumps({"inputs": [dict(X_CONV, shape=[0, T, 2, 8, 8], data=[])]}).encode(), 400,
     "empty dimension"),
    ("unknown datatype", "conv", json.dumps({"inputs": [dict(X_CONV, datatype="FP128")]}).encode(), 400,
     "datatype"),
    ("binary size that lies", "conv", json.dumps({"inputs": [{"name": "input", "shape": [1, T, 2, 8, 8],
                                                               "datatype": "FP32",
                                                               "parameters": {"binary_data_size": 8}}]}).encode(),
     400, "binary_data_size"),
]


@pytest.mark.parametrize("what, model, body, status, words", CASES, ids=[c[0] for c in CASES])
def test_client_error_is_4xx_one_line_and_the_server_lives(served, what, model, body, status, words):
    server = served["server"]
    code, answer = _post(server, f"/v2/models/{model}/infer", body)
    assert code == status, answer
    message = json.loads(answer)["error"]
    assert words in message, message
    assert "\n" not in message and "Traceback" not in message and ".py" not in message and "/" not in message
    assert server.proc.poll() is None, "the server died"
    with ServeClient(server.url) as client:  # ... and a valid request right after it is answered
        x = np.zeros((T, 1, 2, 8, 8), np.float32)
        assert client.infer_multistep("conv", x).shape[:2] == (T, 1)


def test_forwarded_request_is_the_guards_reading(served):
    """A valid request with odd spacing, escapes and nested data is answered as the plain one: what reaches
    tritonserver is the guard's serialisation of what it checked."""
    server = served["server"]
    flat = {"inputs": [X_CONV]}
    nested = {"inputs": [dict(X_CONV, data=np.zeros((1, T, 2, 8, 8)).tolist())]}
    code1, a1 = _post(server, "/v2/models/conv/infer", json.dumps(flat).encode())
    odd = json.dumps(nested, indent=3).replace('"input"', '"\\u0069nput"', 1).encode()
    code2, a2 = _post(server, "/v2/models/conv/infer", odd)
    assert code1 == code2 == 200, (a1[:200], a2[:200])
    assert json.loads(a1)["outputs"][0]["data"] == json.loads(a2)["outputs"][0]["data"]


def test_only_listed_artifacts_are_served(served):
    models = {m["name"]: m for m in served["server"].info["models"]}
    assert models["conv"]["backend"] == "onnxruntime"
    assert (served["multi"] / "model.ts").read_bytes() == b"not listed"
