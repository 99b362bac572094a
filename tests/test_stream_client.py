"""StreamClient without a server: the sequence header, the ids, lost state and collateral batch failures."""

from __future__ import annotations

import numpy as np
import pytest

from dsr_deploy.contract import SEQUENCE_ID_HEADER
from dsr_deploy.serving import client as C


class FakeServer:
    """Records every call; answers with ``errors`` (popped first) or y = x + 1."""

    def __init__(self, errors=()):
        self.calls, self.errors = [], list(errors)

    def infer(self, model, feeds, outputs, **options):
        self.calls.append((model, feeds, options))
        if self.errors:
            raise self.errors.pop(0)
        return {"y_t": feeds["x_t"] + 1}


class ServerError(Exception):  # what tritonclient raises: message() holds the server's sentence
    def message(self):
        return str(self.args[0])


def test_ids_are_random_nonzero_64_bit():
    ids = {C.new_sequence_id() for _ in range(2000)}
    assert len(ids) == 2000 and all(0 < i <= 2**64 - 1 for i in ids)
    assert max(ids) > 2**63  # drawn from the whole range, not a counter or a pid-prefixed one
    with pytest.raises(ValueError):
        C.StreamClient(FakeServer(), "m", sequence_id=2**64)


def test_every_step_carries_the_sequence_header_and_the_id():
    srv = FakeServer()
    s = C.StreamClient(srv, "m")
    x = np.zeros((1, 6), np.float32)
    s.step(x)
    s.step(x, end=True)
    for k, (_, feeds, options) in enumerate(srv.calls):
        assert options["headers"] == {SEQUENCE_ID_HEADER: str(s.sequence_id)}
        assert feeds["sequence_id"].dtype == np.uint64 and int(feeds["sequence_id"][0, 0]) == s.sequence_id
        assert bool(feeds["sequence_start"][0, 0]) == (k == 0) and bool(feeds["sequence_end"][0, 0]) == (k == 1)


def test_triton_sequence_mode_sends_sequence_parameters():
    srv = FakeServer()
    s = C.StreamClient(srv, "m_onnx", triton_sequence=True)
    s.step(np.zeros((1, 6), np.float32))
    _, feeds, options = srv.calls[0]
    assert set(feeds) == {"x_t"}
    assert options["sequence_id"] == s.sequence_id and options["sequence_start"] and not options["sequence_end"]
    assert options["headers"] == {SEQUENCE_ID_HEADER: str(s.sequence_id)}


def test_own_unknown_sequence_is_state_lost():
    srv = FakeServer()
    s = C.StreamClient(srv, "m", sequence_id=42)
    s.step(np.zeros((1, 6), np.float32))
    srv.errors = [ServerError("unknown sequence id 42: this server holds no membrane state for it")]
    with pytest.raises(C.SequenceStateLost, match="stream 42 of model 'm': its membrane state is lost") as exc:
        s.step(np.zeros((1, 6), np.float32))
    assert exc.value.sequence_id == 42 and not s.started  # the next step starts the stream again
    assert len(srv.calls) == 2  # not retried
    # tritonserver's sequence batcher says it its own way.
    t = C.StreamClient(srv, "m_onnx", sequence_id=43, triton_sequence=True)
    t.started = True
    srv.errors = [ServerError("inference request for sequence 43 to model 'm_onnx' must specify the START flag on "
                              "the first request of the sequence")]
    with pytest.raises(C.SequenceStateLost, match="stream 43"):
        t.step(np.zeros((1, 6), np.float32))


def test_a_step_failed_by_another_streams_step_is_sent_again():
    srv = FakeServer([ServerError("unknown sequence id 7: ..."), ServerError("unknown sequence id 9: ...")])
    s = C.StreamClient(srv, "m", sequence_id=42)
    s.started = True
    y = s.step(np.ones((1, 6), np.float32))
    assert np.array_equal(y, np.full((1, 6), 2, np.float32)) and len(srv.calls) == 3
    # Bounded: a server that keeps failing the batch is reported, not retried forever.
    srv.errors = [ServerError("unknown sequence id 7: ...")] * (C.COLLATERAL_RETRIES + 1)
    with pytest.raises(ServerError):
        s.step(np.ones((1, 6), np.float32))
    # Other errors are passed on at once.
    srv.errors, n = [ServerError("too many open sequences")], len(srv.calls)
    with pytest.raises(ServerError, match="too many"):
        s.step(np.ones((1, 6), np.float32))
    assert len(srv.calls) == n + 1
