"""Small clients for ``dsr-deploy serve`` (tritonclient over HTTP): whole sequences and streams by id.

Close a client (``close()`` or ``with``) before stopping the server: PyTriton waits for open connections.

Past one machine: a stream's membranes live in one server, so every step of a sequence must reach the replica
that holds it. :class:`StreamClient` sends the sequence id in the ``X-DSR-Sequence-Id`` header
(:data:`dsr_deploy.contract.SEQUENCE_ID_HEADER`) as well as in the request, for a balancer to hash on, and draws
ids at random from the whole non-zero uint64 range, so streams of different clients do not collide.
"""

from __future__ import annotations

import re
import secrets
import time
from typing import Optional

import numpy as np

from ..contract import SEQUENCE_ID_HEADER, STREAM_INPUT, STREAM_OUTPUT
from ..errors import require

_TYPES = {np.dtype(np.float32): "FP32", np.dtype(np.float16): "FP16", np.dtype(np.float64): "FP64",
          np.dtype(np.uint64): "UINT64", np.dtype(np.bool_): "BOOL", np.dtype(np.int64): "INT64",
          np.dtype(np.int32): "INT32"}


def _input(httpclient, name: str, array: np.ndarray):
    array = np.ascontiguousarray(array)
    inp = httpclient.InferInput(name, list(array.shape), _TYPES.get(array.dtype, "FP32"))
    inp.set_data_from_numpy(array)
    return inp


class ServeClient:
    """``infer(model, {name: array})`` against a dsr-deploy (or any Triton) HTTP endpoint."""

    def __init__(self, url: str = "127.0.0.1:8000", timeout_s: float = 60.0):
        self._http = require("tritonclient.http", "serve", "the serve client")
        url = url.split("://", 1)[-1]
        self.client = self._http.InferenceServerClient(url, connection_timeout=timeout_s, network_timeout=timeout_s)

    def infer(self, model: str, inputs: dict, outputs: Optional[list] = None, **options) -> dict:
        """``options``: passed to tritonclient's ``infer`` (``headers``, ``sequence_id``, ...)."""
        res = self.client.infer(model, [_input(self._http, k, v) for k, v in inputs.items()], **options)
        names = outputs or [o["name"] for o in res.get_response()["outputs"]]
        return {n: res.as_numpy(n) for n in names}

    def infer_multistep(self, model: str, x_tb: np.ndarray) -> np.ndarray:
        """A multi-step model on ``[T, B, ...]``: sent batch first, returned as ``[T, B, ...]``."""
        y = self.infer(model, {"input": np.swapaxes(np.asarray(x_tb, np.float32), 0, 1)}, ["output"])["output"]
        return np.swapaxes(y, 0, 1)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> ServeClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# serve's answer, and tritonserver's sequence batcher's for a step of a sequence it does not hold.
_UNKNOWN_ID = re.compile(r"unknown sequence id (\d+)|request for sequence (\d+) .*must specify the START flag",
                         re.IGNORECASE | re.S)
COLLATERAL_RETRIES = 8  # a step failed only because another stream's step in its batch did: sent again
MAX_SEQUENCE_ID = 2**64 - 1  # Triton's sequence ids are uint64; 0 means "no sequence"


def new_sequence_id() -> int:
    """A sequence id drawn at random from 1 .. 2**64-1: two clients that never talk to each other pick the same id
    with probability about n**2 / 2**65 for n open streams (a clash would run one stream on another's state)."""
    return secrets.randbelow(MAX_SEQUENCE_ID) + 1


class SequenceStateLost(RuntimeError):
    """The server that answered a step holds no membrane state for its sequence: the replica that held it stopped
    or restarted, the balancer sent the step elsewhere, or the sequence ended or idled out. Start it again."""

    def __init__(self, model: str, sequence_id: int, server_message: str):
        super().__init__(f"stream {sequence_id} of model {model!r}: its membrane state is lost (the server that "
                         f"answered holds none for it: {server_message}); reset() and resend the stream from its "
                         "first step")
        self.model, self.sequence_id, self.server_message = model, sequence_id, server_message


class StreamClient:
    """One stream of a streaming model served by ``dsr-deploy serve``: the server keeps its membranes.

    ``step(x_t)`` sends one time step ``[1, ...]`` (or ``[...]``); the first step starts the sequence.
    ``end()`` (or ``step(x_t, end=True)``) releases the server's state; ``reset()`` starts a new sequence.
    Every step carries the ``X-DSR-Sequence-Id`` header (for a balancer's sequence affinity). A step the server
    answers with "unknown sequence id" (this stream's) raises :class:`SequenceStateLost`; one that failed only
    because the server batched it with another stream's failing step is sent again (a failed batch changes no
    sequence's state).

    ``triton_sequence=True`` talks to a model of a ``triton-repo`` repository instead (tritonserver's sequence
    batcher): the id and the start/end flags go as Triton's request parameters, not as inputs.
    """

    def __init__(self, client: ServeClient, model: str, sequence_id: Optional[int] = None,
                 triton_sequence: bool = False):
        self.client, self.model = client, model
        self.sequence_id = sequence_id or new_sequence_id()
        if not 0 < int(self.sequence_id) <= MAX_SEQUENCE_ID:
            raise ValueError(f"sequence_id must be in 1..2**64-1, got {self.sequence_id}")
        self.triton_sequence = triton_sequence
        self.started = False

    def step(self, x_t: np.ndarray, end: bool = False) -> np.ndarray:
        x = np.asarray(x_t, np.float32)
        n = x.shape[0]
        sid, start = self.sequence_id, not self.started
        options = {"headers": {SEQUENCE_ID_HEADER: str(sid)}}
        if self.triton_sequence:
            feeds = {STREAM_INPUT: x}
            options.update(sequence_id=sid, sequence_start=start, sequence_end=bool(end))
        else:
            feeds = {STREAM_INPUT: x, "sequence_id": np.full((n, 1), sid, np.uint64),
                     "sequence_start": np.full((n, 1), start), "sequence_end": np.full((n, 1), bool(end))}
        for attempt in range(COLLATERAL_RETRIES + 1):
            try:
                y = self.client.infer(self.model, feeds, [STREAM_OUTPUT], **options)[STREAM_OUTPUT]
                break
            except Exception as exc:
                found = _UNKNOWN_ID.search(_server_message(exc))
                if found is None:
                    raise
                if int(found.group(1) or found.group(2)) == sid and not start:
                    self.started = False
                    raise SequenceStateLost(self.model, sid, _server_message(exc)) from exc
                # Another stream's unknown id: this step was batched with that stream's failing step, and a failed
                # batch changes no sequence's state (served_model.infer_streaming), so sending it again is safe.
                if attempt == COLLATERAL_RETRIES:
                    raise
                time.sleep(0.005 * (attempt + 1))
        self.started = not end
        return y

    def end(self, x_t: np.ndarray) -> np.ndarray:
        """The last step: the server releases the sequence's state."""
        return self.step(x_t, end=True)

    def run(self, x_seq: np.ndarray) -> np.ndarray:
        """Every step of ``x_seq [T, 1, ...]`` as one sequence (started, then ended); ``[T, 1, ...]`` out."""
        self.reset()
        T = x_seq.shape[0]
        return np.stack([self.step(x_seq[t], end=t == T - 1) for t in range(T)])

    def reset(self) -> None:
        """The next step starts the sequence again from zero membranes."""
        self.started = False


def _server_message(exc: Exception) -> str:
    message = getattr(exc, "message", None)
    text = message() if callable(message) else str(exc)
    return str(text).strip()
