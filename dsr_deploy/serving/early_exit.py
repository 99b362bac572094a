"""Early exit against a served streaming model: the client steps one sequence, reads the running readout after
every step and ends the sequence as soon as the exit rule fires (:mod:`dsr_deploy.early_exit`).

Works with ``dsr-deploy serve`` (:class:`~dsr_deploy.serving.client.StreamClient`) and with the generated Triton
repository (:func:`triton_step`: tritonclient's sequence parameters). The server keeps the membranes; the client
keeps the sequence's output spikes for the readout, so the readout and the exit step are exactly those of a local
run (:meth:`dsr_deploy.runtime.stream.StreamSession.run_early_exit`).

Ending a sequence: Triton's sequence protocol carries ``sequence_end`` on a step request, so a sequence that
stops before T is released with one more request (zeros, ``sequence_end``) whose output is discarded
(``release="end"``, the default), or left to the server's idle timeout (``release="idle"``: no extra request).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import numpy as np

from ..contract import EXIT_PREDICTION, EXIT_READOUT, EXIT_STEPS, STREAM_INPUT, STREAM_OUTPUT
from ..early_exit import ExitRule, ExitTracker, Readout
from ..errors import UserError

Step = Callable[[np.ndarray, bool], np.ndarray]  # (x_t [1, ...], end) -> y_t [1, ...]


def stream_early_exit(step: Step, x_seq: np.ndarray, rule: Any, readout: Optional[Readout] = None,
                      release: str = "end") -> Dict[str, np.ndarray]:
    """Send the steps of one sequence ``x_seq [T, 1, ...]`` until its rule fires (at most T); returns
    ``prediction`` [1], ``steps`` [1] and ``readout`` [1, C] as a local run does."""
    if release not in ("end", "idle"):
        raise UserError(f"release must be 'end' or 'idle', got {release!r}")
    rule, readout = ExitRule.of(rule), readout or Readout()
    x = np.asarray(x_seq, np.float32)
    if x.ndim < 2 or x.shape[1] != 1:
        raise UserError(f"one sequence at a time: x_seq must be [T, 1, ...], got {list(x.shape)}")
    T = x.shape[0]
    tracker = ExitTracker(rule, 1, T)
    history = []
    for t in range(tracker.cap):
        last = t + 1 == T
        y = np.asarray(step(x[t], last))
        history.append(y.reshape(1, -1))
        r = readout(np.stack(history))
        if tracker.done(r, t + 1)[0]:
            if not last and release == "end":
                step(np.zeros_like(x[t]), True)  # releases the server's membranes; output discarded
            return {EXIT_PREDICTION: r.argmax(-1).astype(np.int64), EXIT_STEPS: np.array([t + 1], np.int64),
                    EXIT_READOUT: r}
    raise AssertionError("unreachable: the tracker stops every sample by its last step")


def serve_step(stream_client: Any) -> Step:
    """The step of a ``dsr-deploy serve`` stream (:class:`~dsr_deploy.serving.client.StreamClient`)."""
    stream_client.reset()
    return lambda x_t, end: stream_client.step(x_t, end=end)


def triton_step(client: Any, model: str, sequence_id: int) -> Step:
    """The step of a sequence on a Triton server running the generated repository (a ``tritonclient.http``
    client): Triton keeps the membranes as implicit sequence state."""
    from ..errors import require

    http = require("tritonclient.http", "serve", "the Triton client")
    started = [False]

    def step(x_t: np.ndarray, end: bool) -> np.ndarray:
        x = np.ascontiguousarray(x_t, np.float32)
        inp = http.InferInput(STREAM_INPUT, list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        res = client.infer(model, [inp], outputs=[http.InferRequestedOutput(STREAM_OUTPUT)],
                           sequence_id=int(sequence_id), sequence_start=not started[0], sequence_end=bool(end))
        started[0] = not end
        return res.as_numpy(STREAM_OUTPUT)
    return step
