"""`triton-repo --backend python` repositories loaded by a real tritonserver (the one PyTriton ships, python backend
only), so Triton itself checks every config rule (dims, dynamic and sequence batching, START/READY, the membrane
state's initial_state), and queried over HTTP on 127.0.0.1: batched multi-step requests and interleaved streaming
sequences give what ONNX Runtime gives on the repository's own model. The server is bounded (killed after 10
minutes whatever happens) and stopped at the end of the module."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from _streaming_nets import export_multistep_onnx, mlp_net
from _triton_server import TritonServer, pytriton_dir

from dsr_deploy.export import export_model
from dsr_deploy.serving import triton_repo as TR

http = pytest.importorskip("tritonclient.http", reason="tritonclient (the serve extra) is not installed")
pytestmark = pytest.mark.skipif(pytriton_dir() is None, reason="nvidia-pytriton (the serve extra, with its "
                                "bundled tritonserver) is not installed")

T, B = 5, 3


def _ort(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("triton_server")
    net = mlp_net()
    x = torch.randn(T, B, 6, generator=torch.Generator().manual_seed(3)) * 2
    multi = root / "mlp"
    multi.mkdir()
    export_multistep_onnx(net, x, multi / "model.onnx")
    (multi / "manifest.json").write_text(json.dumps({"artifacts": [{"format": "onnx", "path": "model.onnx"}]}))
    stream = root / "mlp_stream"
    export_model(net, tuple(x.shape), stream, mode="streaming", formats=("onnx",))
    r8, r0, bad = root / "r8", root / "r0", root / "bad"
    TR.write_repository([multi, stream], r8, max_batch=8, backend="python")
    TR.write_repository([stream], r0, max_batch=0, backend="python", name="s0")
    # The config the -1 fix replaced: Triton must refuse it (proves the rule is Triton's, not only ours).
    TR.write_repository([stream], bad, max_batch=0, backend="python", name="bad")
    cfg = bad / "bad_py" / "config.pbtxt"
    cfg.write_text(re.sub(r"(initial_state \{\s*data_type: TYPE_FP32\s*dims: \[ )1,", r"\1-1,", cfg.read_text()))
    assert "dims: [ -1, 8 ]" in cfg.read_text()
    server = TritonServer([r8, r0, bad], root)
    try:
        server.wait_ready()
        yield {"server": server, "x": x, "r8": r8, "r0": r0, "stream": stream,
               "client": http.InferenceServerClient(server.url, network_timeout=60)}
    finally:
        server.stop()


def _infer(client, model, name, array, out, **seq):
    i = http.InferInput(name, list(array.shape), "FP32")
    i.set_data_from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    return client.infer(model, [i], **seq).as_numpy(out)


def test_models_load_and_triton_refuses_variable_initial_state(served):
    s = served["server"]
    for name in ("mlp_py", "mlp_stream_py", "s0_py"):
        assert s.model_ready(name), s.log.read_text()[-3000:]
    assert not s.model_ready("bad_py")
    assert "variable" in s.log.read_text()  # Triton's own reason ("... contains variable dimensions")


def test_batched_multistep_requests(served):
    """Dynamic batching: concurrent [b, T, 6] requests (batch first), each equal to ONNX Runtime on the model."""
    x = served["x"]
    so = _ort(served["r8"] / "mlp_py" / "1" / "model.onnx")
    xb = np.ascontiguousarray(x.numpy().transpose(1, 0, 2))  # [B, T, 6]
    parts = [xb[:1], xb[1:], xb]
    # one client per thread (a tritonclient HTTP client is not shared between threads)
    with ThreadPoolExecutor(3) as pool:
        got = list(pool.map(lambda a: _infer(http.InferenceServerClient(served["server"].url, network_timeout=60),
                                             "mlp_py", "input", a, "output"), parts))
    for a, y in zip(parts, got):
        want = so.run(["output"], {"input": a})[0]
        assert y.shape == (a.shape[0], T, 3) and np.array_equal(y, want)
    assert (got[2] != 0).any()


def _step_reference(stream_dir, x):
    """The exported step model run by ONNX Runtime one step at a time, membranes carried: [T, B, classes]."""
    so = _ort(stream_dir / "model.onnx")
    names = [o.name for o in so.get_outputs()]
    ins = {i.name: i for i in so.get_inputs()}
    v = [np.zeros((x.shape[1], ins[f"v_in_{k}"].shape[1]), np.float32) for k in range(2)]
    ys = []
    for t in range(x.shape[0]):
        res = dict(zip(names, so.run(None, {"x_t": x[t], "v_in_0": v[0], "v_in_1": v[1]})))
        ys.append(res["y_t"])
        v = [res["v_out_0"], res["v_out_1"]]
    return np.stack(ys)


def test_streaming_sequences_interleaved(served):
    """Sequence batching with max_batch_size 8: three sequences interleaved step by step (one row per request, as
    Triton's sequence batcher requires), each carrying its own membranes from START to END; a sequence id reused
    after END starts from zero again."""
    x, client = served["x"].numpy(), served["client"]
    want = _step_reference(served["stream"], x)
    for rnd in range(2):
        got = np.zeros_like(want)
        for t in range(T):
            for b in range(B):
                got[t, b] = _infer(client, "mlp_stream_py", "x_t", x[t, b:b + 1], "y_t", sequence_id=50 + b,
                                   sequence_start=t == 0, sequence_end=t == T - 1)[0]
        assert np.array_equal(got, want), rnd
    assert (want != 0).any()


def test_streaming_without_batching(served):
    """max_batch_size 0: the config's fixed [1, ...] dims (Triton accepted the initial_state); a sequence of
    batch-1 steps gives the step model's output; a request of another batch is refused by Triton."""
    x, client = served["x"].numpy(), served["client"]
    want = _step_reference(served["stream"], x[:, :1])
    got = np.stack([_infer(client, "s0_py", "x_t", x[t, :1], "y_t", sequence_id=9, sequence_start=t == 0,
                           sequence_end=t == T - 1) for t in range(T)])
    assert np.array_equal(got, want)
    with pytest.raises(Exception, match="shape|dims|batch"):
        _infer(client, "s0_py", "x_t", x[0], "y_t", sequence_id=10, sequence_start=True, sequence_end=True)
