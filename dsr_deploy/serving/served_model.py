"""What ``dsr-deploy serve`` serves: each exported model as a Triton inference callable over a
:mod:`dsr_deploy.runtime` runner (:class:`ServedModel`, built by :func:`prepare_model`), and the membrane state of
streaming sequences kept between requests (:class:`SequenceStore`). The server around them:
:mod:`dsr_deploy.serving.pytriton_server`."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ..contract import STREAM_INPUT, STREAM_OUTPUT, state_input_name, state_output_name
from ..errors import UserError
from ..manifest import Manifest

SEQUENCE_ID, SEQUENCE_START, SEQUENCE_END = "sequence_id", "sequence_start", "sequence_end"


# ---------------------------------------------------------------------------------------------------------
# Per-sequence membranes.


class SequenceStore:
    """Membranes of the open sequences, keyed by sequence id (one float32 array per neuron layer, no batch)."""

    def __init__(self, state_shapes: Sequence[Sequence[int]], idle_timeout_s: float = 60.0, max_sequences: int = 4096,
                 clock: Callable[[], float] = time.monotonic):
        self.state_shapes = [tuple(int(d) for d in s) for s in state_shapes]
        self.idle_timeout_s = float(idle_timeout_s)
        self.max_sequences = int(max_sequences)
        self._clock = clock
        self._seq: OrderedDict[int, tuple[list[np.ndarray], float]] = OrderedDict()  # oldest use first
        self.lock = threading.Lock()
        self.dropped_idle = 0

    def __len__(self) -> int:
        return len(self._seq)

    def __contains__(self, sid: int) -> bool:
        return sid in self._seq

    def zeros(self) -> list[np.ndarray]:
        return [np.zeros(s, dtype=np.float32) for s in self.state_shapes]

    def get(self, sid: int) -> list[np.ndarray]:
        return self._seq[sid][0]

    def put(self, sid: int, states: list[np.ndarray]) -> None:
        self._seq[sid] = (states, self._clock())
        self._seq.move_to_end(sid)

    def drop(self, sid: int) -> None:
        self._seq.pop(sid, None)

    def sweep(self) -> int:
        """Drop sequences idle for longer than the timeout; returns how many."""
        now, n = self._clock(), 0
        while self._seq:
            sid, (_, last) = next(iter(self._seq.items()))
            if now - last <= self.idle_timeout_s:
                break
            del self._seq[sid]
            n += 1
        self.dropped_idle += n
        return n


# ---------------------------------------------------------------------------------------------------------
# The models.


@dataclass
class ServedModel:
    """One artifact ready to bind: its runner, the Triton tensors and the inference callable."""

    name: str
    artifact: str
    backend: str
    streaming: bool
    runner: Any
    inputs: list = field(default_factory=list)  # [(name, dtype, per-sample shape, optional)]
    outputs: list = field(default_factory=list)  # [(name, dtype, per-sample shape)]
    store: Optional[SequenceStore] = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Requests are batch first; the runner's input / output are [T, B, ...] unless the export's io says otherwise
    # ([B, T, ...] or static [B, ...] in; logits [B, ...] out).
    swap_in: bool = True
    swap_out: bool = True
    early_exit: Any = None  # serving.served_exit.ServerExit: the manifest's exit rule (streaming)

    # -- multi-step --------------------------------------------------------------------------------------
    def infer_multistep(self, requests):
        xs = [np.asarray(r["input"]) for r in requests]
        for x in xs:  # gRPC is not guarded: a T of 0 must be a client error here too
            if x.size == 0:
                raise UserError(f"the input has an empty dimension (shape {list(x.shape)}); T and the batch must be "
                                "at least 1")
        sizes = [x.shape[0] for x in xs]
        x = np.concatenate(xs, axis=0) if len(xs) > 1 else xs[0]
        x_tb = np.ascontiguousarray(np.swapaxes(x, 0, 1)) if self.swap_in else x  # [B, T, ...] -> [T, B, ...]
        with self.lock:
            out = self.runner.infer({"input": x_tb})
        y = np.asarray(out["output"])
        y = np.ascontiguousarray(np.swapaxes(y, 0, 1)) if self.swap_out else y
        return [{"output": part} for part in np.split(y, np.cumsum(sizes)[:-1], axis=0)]

    # -- streaming ---------------------------------------------------------------------------------------
    def infer_streaming(self, requests):
        rows = []  # (request index, row in request, sequence id, start, end)
        xs = []
        for ri, r in enumerate(requests):
            x = np.asarray(r[STREAM_INPUT])
            n = x.shape[0]
            sid = np.asarray(r[SEQUENCE_ID]).reshape(n, -1)[:, 0].astype(np.uint64)
            start = _flag(r, SEQUENCE_START, n)
            end = _flag(r, SEQUENCE_END, n)
            for j in range(n):
                rows.append((ri, j, int(sid[j]), bool(start[j]), bool(end[j])))
            xs.append(x)
        x_all = np.concatenate(xs, axis=0) if len(xs) > 1 else xs[0]
        store = self.store
        y_all: list[Optional[np.ndarray]] = [None] * len(rows)
        with self.lock, store.lock:
            store.sweep()
            # Validate the whole batch before any state changes: a failed batch leaves every sequence as it was.
            live = set(store._seq)
            new = 0
            for _, _, sid, start, end in rows:
                if sid == 0:
                    raise UserError("sequence_id 0 is reserved; use a non-zero id")
                if start:
                    if sid not in live:
                        new += 1
                    live.add(sid)
                elif sid not in live:
                    raise UserError(f"unknown sequence id {sid}: this server holds no membrane state for it (never "
                                    f"started here, ended, idle for longer than {store.idle_timeout_s:g} s, or "
                                    "started on another replica); send sequence_start=true first")
                if end:
                    live.discard(sid)
            if len(store) + new > store.max_sequences:
                raise UserError(f"too many open sequences (limit {store.max_sequences}); end some first")
            # Work on copies; commit only after every round ran.
            pending: dict[int, Optional[list[np.ndarray]]] = {}
            order = list(range(len(rows)))
            while order:
                # One round: at most one row per sequence (rows of one sequence run in arrival order).
                seen, this_round, rest = set(), [], []
                for k in order:
                    (rest if rows[k][2] in seen else this_round).append(k)
                    seen.add(rows[k][2])
                order = rest
                states = []
                for k in this_round:
                    _, _, sid, start, _ = rows[k]
                    if start:
                        states.append(store.zeros())
                    elif sid in pending:
                        states.append(pending[sid])
                    else:
                        states.append(store.get(sid))
                feeds = {STREAM_INPUT: x_all[this_round] if len(this_round) != len(rows) else x_all}
                for i in range(len(store.state_shapes)):
                    feeds[state_input_name(i)] = np.stack([s[i] for s in states])
                out = self.runner.infer(feeds)
                y = np.asarray(out[STREAM_OUTPUT])
                v_out = [np.asarray(out[state_output_name(i)]) for i in range(len(store.state_shapes))]
                for pos, k in enumerate(this_round):
                    y_all[k] = y[pos]
                    sid, end = rows[k][2], rows[k][4]
                    pending[sid] = None if end else [np.array(v[pos]) for v in v_out]
            extra = self._exit_outputs(rows, y_all, pending) if self.early_exit is not None else None
            for sid, st in pending.items():
                if st is None:
                    store.drop(sid)
                else:
                    store.put(sid, st)
            if extra is not None:
                self.early_exit.keep_only(store._seq)
        responses, k = [], 0
        for x in xs:
            n = x.shape[0]
            responses.append({STREAM_OUTPUT: np.stack(y_all[k:k + n])})
            if extra is not None:
                responses[-1].update({name: np.stack(v[k:k + n]) for name, v in extra.items()})
            k += n
        return responses

    def _exit_outputs(self, rows, y_all, pending) -> dict:
        """Early exit: per row the sequence's steps, whether its rule fired (the sequence then ends: its state is
        dropped with the batch's commit) and the running readout (rows of a sequence in arrival order)."""
        from .served_exit import EXIT, READOUT, STEPS

        extra = {STEPS: [], EXIT: [], READOUT: []}
        for k, (_, _, sid, start, _) in enumerate(rows):
            steps, fired, readout = self.early_exit.step(sid, start, y_all[k])
            if fired:
                pending[sid] = None
            extra[STEPS].append(np.array([steps], np.int64))
            extra[EXIT].append(np.array([fired]))
            extra[READOUT].append(np.asarray(readout, np.float32))
        return extra

    def infer(self, requests):
        return self.infer_streaming(requests) if self.streaming else self.infer_multistep(requests)


def _flag(request, name: str, n: int) -> np.ndarray:
    try:
        v = request[name]
    except KeyError:
        return np.zeros(n, dtype=bool)
    return np.asarray(v).reshape(n, -1)[:, 0].astype(bool)


def _manifest(artifact: Path) -> Optional[Manifest]:
    from ..manifest import manifest_beside, read_manifest

    return read_manifest(artifact) if artifact.is_dir() else manifest_beside(artifact)


def prepare_model(artifact: str | Path, backend: Optional[str] = None, name: Optional[str] = None,
                  idle_timeout_s: float = 60.0, max_sequences: int = 4096, threads: int = 1,
                  trust_pickle: bool = False) -> ServedModel:
    """Load ``artifact`` (export folder or file) with the runtime's runner and describe it for Triton."""
    from ..runtime import load_runner

    path = Path(artifact)
    if not path.exists():
        raise UserError(f"{path} does not exist")
    manifest = _manifest(path)
    if path.is_dir() and manifest is not None:  # only the manifest's artifacts are served
        from ..input_files import unlisted_note

        note = unlisted_note(manifest, "served")
        if note:
            import sys

            print(note, file=sys.stderr)
    # One compute thread by default: next to tritonserver, the backend stub and the HTTP threads, a runner's own
    # spinning thread pool starves the server on a small machine (threads=0 keeps the backend's default).
    runner = load_runner(str(path), backend, trust_pickle=trust_pickle, **({"threads": threads} if threads else {}))
    runner.load()
    specs = {s.name: s for s in runner.inputs()}
    out_names = [s.name for s in runner.outputs()]
    streaming = STREAM_INPUT in specs or (manifest is not None and manifest.streaming)
    if name is None:
        base = path if path.is_dir() else (path.parent if path.stem == "model" else path)
        name = base.stem if base.is_file() else base.name
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in name) or "model"
    model = ServedModel(name=name, artifact=str(path), backend=runner.backend, streaming=streaming, runner=runner)
    if streaming:
        from ..runtime.stream import manifest_states

        if manifest is None:
            raise UserError(f"{path}: a streaming model needs its export folder's manifest.json (states)")
        states = manifest_states(manifest)
        from ..runtime.stream import initial_value

        filled = [s.get("layer") or s.get("input") for s in states if initial_value(s) != 0.0]
        if filled:  # the sequence store and Triton's sequence batcher start every stream from zeros
            raise UserError(f"{path}: layer {filled[0]} starts its stream at a nonzero membrane (a SpikingJelly hard "
                            "reset's v_reset); serving starts streams from zeros: run it with StreamSession instead")
        step = manifest.step_shape
        model.store = SequenceStore([s["shape"] for s in states], idle_timeout_s, max_sequences)
        model.inputs = [(STREAM_INPUT, np.float32, tuple(int(d) for d in step[1:]), False),
                        (SEQUENCE_ID, np.uint64, (1,), False),
                        (SEQUENCE_START, np.bool_, (1,), True),
                        (SEQUENCE_END, np.bool_, (1,), True)]
        y_shape = _output_shape(runner, STREAM_OUTPUT, manifest)
        model.outputs = [(STREAM_OUTPUT, np.float32, y_shape)]
        if manifest.get("early_exit"):  # exit-calibrate's rule: steps / exit / readout per step, sequences end
            from .served_exit import ServerExit

            model.early_exit = ServerExit.from_manifest(manifest)
            model.outputs += model.early_exit.outputs(int(np.prod(y_shape)))
    else:
        if "input" not in specs or "output" not in out_names:
            raise UserError(f"{path}: expected a multi-step model with input 'input' and output 'output' "
                            f"(got inputs {sorted(specs)}, outputs {out_names})")
        io = manifest.io if manifest is not None else None
        io = io if io and io.get("input_layout") in ("TB", "BT", "static") else None
        shape = _input_shape(specs["input"], manifest, io)  # as [T, B, ...]
        dtype = np.dtype(specs["input"].dtype or "float32").type  # an fp16 export is served in fp16
        static = bool(io) and io["input_layout"] == "static"
        model.swap_in = not io or io["input_layout"] == "TB"
        model.swap_out = not io or (io.get("output") != "logits" and io["input_layout"] != "BT")
        model.inputs = [("input", dtype, tuple(shape[2:]) if static else (shape[0], *shape[2:]), False)]
        model.outputs = [("output", dtype, _output_shape(runner, "output", manifest, shape, dtype, io))]
    return model


def _input_shape(spec, manifest, io: Optional[dict] = None) -> tuple:
    """The model input as ``[T, B, ...]`` (``io``: the artifact's ``[B, T, ...]`` / ``[B, ...]`` read as that)."""
    from ..io_adapter import canonical_shape

    shape = canonical_shape(spec.shape, io) if spec.shape else None
    if manifest is not None and manifest.input_shape is not None:
        known = canonical_shape(list(manifest.input_shape), io)
        if shape is None or len(shape) != len(known):
            shape = list(known)
        else:  # a symbolic T stays dynamic; fixed dims from the model
            shape = [d if isinstance(d, int) else (-1 if i == 0 else known[i]) for i, d in enumerate(shape)]
    if shape is None:
        raise UserError("cannot tell the model's input shape: serve an export folder (with manifest.json)")
    return tuple(int(d) if isinstance(d, int) and d > 0 else -1 for d in shape)


def _output_shape(runner, name: str, manifest, in_shape: Optional[tuple] = None, dtype=np.float32,
                  io: Optional[dict] = None) -> tuple:
    """Per-sample output dims: run the model once on zeros (cheap; also checks that it runs)."""
    runner.inputs()  # loads the runner (its errors surface here, one line)
    feeds = {}
    if name == STREAM_OUTPUT:
        step = manifest.step_shape
        feeds[STREAM_INPUT] = np.zeros((1, *step[1:]), dtype=np.float32)
        from ..runtime.stream import manifest_states

        for i, s in enumerate(manifest_states(manifest)):
            feeds[state_input_name(i)] = np.zeros((1, *s["shape"]), dtype=np.float32)
        out = runner.infer(feeds)
        return tuple(np.asarray(out[STREAM_OUTPUT]).shape[1:])
    from ..io_adapter import artifact_shape

    T = in_shape[0] if in_shape[0] > 0 else 1
    feeds["input"] = np.zeros(artifact_shape((T, 1, *[d if d > 0 else 1 for d in in_shape[2:]]), io), dtype=dtype)
    out = np.asarray(runner.infer(feeds)["output"])
    dims = list(out.shape)
    if io and io.get("output") == "logits":
        return tuple(dims[1:])  # [B, classes]
    if io and io["input_layout"] == "BT":
        return tuple([-1 if in_shape[0] < 0 else dims[1], *dims[2:]])
    return tuple([-1 if in_shape[0] < 0 else dims[0], *dims[2:]])
