"""Small clients for ``dsr-deploy serve`` (tritonclient over HTTP): whole sequences and streams by id.

Close a client (``close()`` or ``with``) before stopping the server: PyTriton waits for open connections.
"""

from __future__ import annotations

import itertools
import os
import threading
from typing import Optional

import numpy as np

from ..contract import STREAM_INPUT, STREAM_OUTPUT
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

    def infer(self, model: str, inputs: dict, outputs: Optional[list] = None) -> dict:
        res = self.client.infer(model, [_input(self._http, k, v) for k, v in inputs.items()])
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


_ids = itertools.count(1)
_ids_lock = threading.Lock()


def new_sequence_id() -> int:
    """A sequence id unique in this process and unlikely to clash with other processes' (pid in the high bits)."""
    with _ids_lock:
        return ((os.getpid() & 0xFFFFFF) << 32) | next(_ids)


class StreamClient:
    """One stream of a streaming model served by ``dsr-deploy serve``: the server keeps its membranes.

    ``step(x_t)`` sends one time step ``[1, ...]`` (or ``[...]``); the first step starts the sequence.
    ``end()`` (or ``step(x_t, end=True)``) releases the server's state; ``reset()`` starts a new sequence.
    """

    def __init__(self, client: ServeClient, model: str, sequence_id: Optional[int] = None):
        self.client, self.model = client, model
        self.sequence_id = sequence_id or new_sequence_id()
        self.started = False

    def step(self, x_t: np.ndarray, end: bool = False) -> np.ndarray:
        x = np.asarray(x_t, np.float32)
        n = x.shape[0]
        feeds = {STREAM_INPUT: x, "sequence_id": np.full((n, 1), self.sequence_id, np.uint64),
                 "sequence_start": np.full((n, 1), not self.started), "sequence_end": np.full((n, 1), bool(end))}
        y = self.client.infer(self.model, feeds, [STREAM_OUTPUT])[STREAM_OUTPUT]
        self.started = not end
        return y

    def run(self, x_seq: np.ndarray) -> np.ndarray:
        """Every step of ``x_seq [T, 1, ...]`` as one sequence (started, then ended); ``[T, 1, ...]`` out."""
        self.reset()
        T = x_seq.shape[0]
        return np.stack([self.step(x_seq[t], end=t == T - 1) for t in range(T)])

    def reset(self) -> None:
        """The next step starts the sequence again from zero membranes."""
        self.started = False
