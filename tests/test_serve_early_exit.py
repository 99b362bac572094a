"""Early exit against ``dsr-deploy serve`` (issue 27): a real Triton server (PyTriton) on 127.0.0.1 keeps the
membranes; the client helper reads the running readout after each step and ends the sequence when the rule fires.
Bounded: one server start, a few dozen small requests, every wait with a timeout."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pytriton", reason="nvidia-pytriton (the serve extra) is not installed")
pytest.importorskip("tritonclient.http", reason="tritonclient (the serve extra) is not installed")
from test_early_exit import T, exact_input, exact_net  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from dsr_deploy.contract import EXIT_PREDICTION, EXIT_READOUT, EXIT_STEPS  # noqa: E402
from dsr_deploy.early_exit import ExitRule, Readout  # noqa: E402
from dsr_deploy.export import export_model
from dsr_deploy.runtime import load_runner  # noqa: E402
from dsr_deploy.runtime.stream import StreamSession  # noqa: E402
from dsr_deploy.serving.client import ServeClient, StreamClient  # noqa: E402
from dsr_deploy.serving.early_exit import serve_step, stream_early_exit  # noqa: E402
from dsr_deploy.serving.process import ServerProcess  # noqa: E402


def test_served_sequences_stop_early_with_the_local_result(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("ee")  # short: the server's AF_UNIX socket paths live under it
    stream = tmp_path / "exact_stream"
    export_model(exact_net("if"), (T, 1, 8), stream, mode="streaming", formats=("onnx",))
    x = exact_input(6, seed=4)
    rule = ExitRule("stable", 2)
    with load_runner(stream, "onnxruntime") as r:
        local = StreamSession.from_manifest(r, stream).run_early_exit(x, rule)
    assert local[EXIT_STEPS].min() < T  # some sequences end early
    # a second folder whose manifest holds the calibrated rule: the server itself ends its sequences
    import json
    import shutil

    served = tmp_path / "exact_exit"
    shutil.copytree(stream, served)
    m = json.loads((served / "manifest.json").read_text())
    m["early_exit"] = {**rule.to_record(), "max_steps": None, "readout": {"kind": "mean"}}
    (served / "manifest.json").write_text(json.dumps(m))
    server = ServerProcess(tmp_path, [stream, served], ["--idle-timeout", "30"], start_timeout_s=180)
    try:
        with ServeClient(server.url, timeout_s=60) as client:
            for i in range(x.shape[1]):
                sid = np.array([[9000 + i]], np.uint64)
                for t in range(T):
                    res = client.infer("exact_exit", {"x_t": x[t, i:i + 1], "sequence_id": sid,
                                                      "sequence_start": np.array([[t == 0]])},
                                       ["y_t", "steps", "exit", "readout"])
                    assert res["steps"][0, 0] == t + 1
                    if res["exit"][0, 0]:
                        break
                assert t + 1 == local[EXIT_STEPS][i]
                np.testing.assert_array_equal(res["readout"][0], local[EXIT_READOUT][i])
                with pytest.raises(InferenceServerException, match="unknown sequence id"):  # ended by the server
                    client.infer("exact_exit", {"x_t": x[0, i:i + 1], "sequence_id": sid})
        with ServeClient(server.url, timeout_s=60) as client:
            for i in range(x.shape[1]):
                s = StreamClient(client, "exact_stream")
                got = stream_early_exit(serve_step(s), x[:, i:i + 1], rule, Readout("mean"))
                assert got[EXIT_STEPS][0] == local[EXIT_STEPS][i]
                assert got[EXIT_PREDICTION][0] == local[EXIT_PREDICTION][i]
                np.testing.assert_array_equal(got[EXIT_READOUT][0], local[EXIT_READOUT][i])
                # the server released the sequence: continuing it is refused
                with pytest.raises(InferenceServerException, match="unknown sequence id"):
                    client.infer("exact_stream", {"x_t": x[0, i:i + 1],
                                                  "sequence_id": np.array([[s.sequence_id]], np.uint64)})
    finally:
        server.kill()
