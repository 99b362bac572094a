"""``dsr-deploy serve``: exported DSR models behind a real Triton Inference Server, through PyTriton.

PyTriton (``nvidia-pytriton``) runs a bundled tritonserver with its python backend; each model here is an
inference callable over a :mod:`dsr_deploy.runtime` runner, with Triton's dynamic batching in front.

Tensors (batch first, as Triton batches along the first dimension):

* multi-step models: ``input [B, T, ...]`` -> ``output [B, T, ...]`` (the runner's ``[T, B, ...]`` transposed
  at the edges; the same convention as ``dsr-deploy triton-repo``);
* streaming models: ``x_t [B, ...]`` plus per row ``sequence_id [B, 1]`` (uint64, non-zero),
  ``sequence_start [B, 1]`` and ``sequence_end [B, 1]`` (bool, optional) -> ``y_t [B, ...]``. PyTriton has no
  sequence batcher and its python backend ignores Triton's implicit state, so the membranes are kept here,
  keyed by sequence id: created (zeros) at ``sequence_start``, carried between requests, dropped at
  ``sequence_end`` or after ``idle_timeout_s`` without a request. Rows of different sequences are batched
  into one runner call; two rows of one sequence in a batch run one after the other, in arrival order.

A request the model cannot serve (unknown sequence id, too many open sequences, a runner error) fails with an
error response; since PyTriton reports errors per batch, every request batched with it fails too, and no
sequence state is changed by a failed batch (it is validated before anything is written), so a client may
simply retry. Wrong shapes and dtypes are rejected by Triton itself before the model sees them.

PyTriton facts this module handles (0.7.0): its python-backend stub links ``libpython3.X.so.1.0`` and must find
this interpreter's, so ``sysconfig.get_config_var("LIBDIR")`` goes first in ``LD_LIBRARY_PATH`` before the
server starts; it binds 0.0.0.0 unless told (we pass 127.0.0.1 for HTTP, gRPC and metrics); ``serve()``
reacts to SIGINT only, so we run the server ourselves and stop it on SIGINT and SIGTERM; ``stop()`` removes
its workspace folder.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import sysconfig
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ..errors import UserError


def ensure_libpython_path(env: Optional[dict] = None) -> str:
    """Put this interpreter's LIBDIR first in ``LD_LIBRARY_PATH`` (of ``env``, default ``os.environ``).

    Triton's python-backend stub loads ``libpython3.X.so.1.0`` through the dynamic loader; without this it
    may load another libpython (Debian's 3.11.2 under a newer stdlib fails at model load with
    ``'_thread.RLock' object has no attribute '_recursion_count'``). Must run before the server starts.
    """
    env = os.environ if env is None else env
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    parts = [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p and p != libdir]
    env["LD_LIBRARY_PATH"] = os.pathsep.join([libdir, *parts]) if libdir else os.pathsep.join(parts)
    return env["LD_LIBRARY_PATH"]


from .served_model import SEQUENCE_END, SEQUENCE_ID, SEQUENCE_START, SequenceStore, ServedModel, prepare_model  # noqa: E402,F401  (public API: prepare_model, SequenceStore, ServedModel)

# ---------------------------------------------------------------------------------------------------------
# The server.

# AF_UNIX socket paths hold at most 107 bytes. PyTriton (0.7) puts each model's sockets at
# PYTRITON_HOME/workspace_XXXXXXXX/<model>_<group>_<instance>-server.sock; past the limit tritonserver still reports
# ready but every request fails ("Event loop is closed"), so a too-long home is refused before the server starts.
UNIX_PATH_MAX = 107


def check_socket_room(model_names: Sequence[str], home: Optional[Path] = None) -> None:
    """Refuse (one line) a PyTriton home whose socket paths would not fit ``UNIX_PATH_MAX``."""
    if home is None:
        from pytriton.constants import PYTRITON_HOME as home
    longest = max((len(n) for n in model_names), default=0)
    need = len(str(home)) + len("/workspace_12345678/") + longest + len("_00_00-server.sock")
    if need > UNIX_PATH_MAX:
        raise UserError(f"PyTriton's workspace {home} is too long for its sockets ({need} > {UNIX_PATH_MAX} bytes "
                        "with the longest model name): set PYTRITON_HOME to a shorter folder")


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    max_batch: int = 8
    queue_delay_us: int = 100
    exit_timeout_s: int = 5
    log_verbose: int = 0
    max_request_mb: float = 64.0  # the HTTP guard's bound on a request's body and declared input bytes
    backend_http_port: Optional[int] = None  # tritonserver's own (private, loopback) HTTP port; set by serve()


def bind_models(triton, models: Sequence[ServedModel], cfg: ServerConfig) -> None:
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

    # Without batching Triton passes tensors as sent: declare the leading batch dimension ourselves, so the
    # inference callables see [B, ...] either way.
    lead = () if cfg.max_batch > 0 else (-1,)
    for m in models:
        triton.bind(
            model_name=m.name,
            infer_func=m.infer,
            inputs=[Tensor(name=n, dtype=dt, shape=lead + tuple(s), optional=opt) for n, dt, s, opt in m.inputs],
            outputs=[Tensor(name=n, dtype=dt, shape=lead + tuple(s)) for n, dt, s in m.outputs],
            config=ModelConfig(batching=cfg.max_batch > 0, max_batch_size=max(cfg.max_batch, 1),
                               batcher=DynamicBatcher(max_queue_delay_microseconds=cfg.queue_delay_us)),
            strict=True,
        )


def triton_config(cfg: ServerConfig):
    from pytriton.triton import TritonConfig

    # HTTP: tritonserver on a private loopback port, behind the guard (dsr_deploy.serving.http_guard) that
    # owns the user's address; gRPC: tritonserver directly.
    return TritonConfig(http_address="127.0.0.1", http_port=cfg.backend_http_port or cfg.http_port,
                        grpc_address=cfg.host, grpc_port=cfg.grpc_port, allow_metrics=False, metrics_address=cfg.host,
                        exit_timeout_secs=cfg.exit_timeout_s, log_verbose=cfg.log_verbose)


def serve(artifacts: Sequence[str | Path], backend: Optional[str] = None, cfg: Optional[ServerConfig] = None,
          names: Optional[Sequence[str]] = None, idle_timeout_s: float = 60.0, max_sequences: int = 4096,
          threads: int = 1, ready: Optional[Callable[[dict], None]] = None,
          stop_event: Optional[threading.Event] = None, trust_pickle: bool = False) -> int:
    """Serve ``artifacts`` until SIGINT/SIGTERM (or ``stop_event``); returns 0 on a clean stop.

    ``ready(info)`` is called once every model is loaded and the server answers.
    """
    from .http_guard import HttpGuard, check_port_free

    cfg = cfg or ServerConfig()
    ensure_libpython_path()  # before the server (and its python-backend stubs) start
    if names and len(names) != len(artifacts):
        raise UserError("--name must be given once per artifact")
    for a in artifacts:  # a wrong path first: the same one-line error with or without the serve extra
        if not Path(a).exists():
            raise UserError(f"{a} does not exist")
    # The ports next, before anything loads: a taken port is one line now, not a tritonserver failure later.
    check_port_free(cfg.host, cfg.grpc_port, "--grpc-port")
    guard = HttpGuard(cfg.host, cfg.http_port, 0, {}, cfg.max_request_mb)  # binds --port
    try:
        return _serve(guard, artifacts, backend, cfg, names, idle_timeout_s, max_sequences, threads, ready,
                      stop_event, trust_pickle)
    finally:
        guard.stop()


def _python_backend_folders() -> list:
    """The folders Triton's python backend unpacked our models into (``$TMPDIR/folderXXXXXX``), read from the
    backend stubs' command lines among this process's descendants."""
    from .process import descendants

    found = set()
    for pid in descendants(os.getpid()):
        try:
            args = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        found.update(Path(a.decode()).parent.parent for a in args if a.endswith(b"/model.py"))
    return sorted(found)


def _remove_left(folders: list, wait_s: float = 10.0) -> None:
    """A stub removes its folder as it exits, and one stopped in a hurry leaves it: once the stubs are gone
    (bounded wait), remove what is left, so a stopped server leaves nothing in the temporary directory."""
    import shutil

    from .process import alive, descendants

    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and any(alive(p) for p in descendants(os.getpid())):
        time.sleep(0.1)
    for folder in folders:
        if folder.is_dir() and folder.name.startswith("folder"):
            shutil.rmtree(folder, ignore_errors=True)


def _serve(guard, artifacts, backend, cfg, names, idle_timeout_s, max_sequences, threads, ready, stop_event,
           trust_pickle: bool = False) -> int:
    from ..errors import require
    from .http_guard import ModelLimits, private_port

    models = [prepare_model(a, backend, names[i] if names else None, idle_timeout_s, max_sequences, threads,
                            trust_pickle) for i, a in enumerate(artifacts)]
    dup = {m.name for m in models if [x.name for x in models].count(m.name) > 1}
    if dup:
        raise UserError(f"two models would be named {', '.join(sorted(dup))}; pass --name for each")
    require("pytriton", "serve", "dsr-deploy serve")
    from pytriton.triton import Triton

    cfg.backend_http_port = private_port()
    guard.backend_port = cfg.backend_http_port
    guard.models.update({m.name: ModelLimits({n: tuple(int(d) for d in s) for n, _, s, _ in m.inputs},
                                             cfg.max_batch) for m in models})

    check_socket_room([m.name for m in models])
    stop = stop_event or threading.Event()
    previous = {}

    def _on_signal(signum, frame):
        stop.set()

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])):
            if signal.getsignal(sig) is not signal.SIG_IGN:
                previous[sig] = signal.signal(sig, _on_signal)
    # PyTriton prints tritonserver's log with print(): send it to stderr, keep stdout for our own output.
    real_stdout = sys.stdout
    log_redirect = contextlib.redirect_stdout(sys.stderr)
    log_redirect.__enter__()
    triton = Triton(config=triton_config(cfg))
    try:
        bind_models(triton, models, cfg)
        triton.run()
        guard.start()
        info = {"http": f"http://{cfg.host}:{cfg.http_port}", "grpc": f"grpc://{cfg.host}:{cfg.grpc_port}",
                "pid": os.getpid(),
                "models": [{"name": m.name, "backend": m.backend, "streaming": m.streaming,
                            "inputs": [{"name": n, "dtype": np.dtype(dt).name, "shape": [-1, *s]}
                                       for n, dt, s, _ in m.inputs],
                            "outputs": [{"name": n, "dtype": np.dtype(dt).name, "shape": [-1, *s]}
                                        for n, dt, s in m.outputs]} for m in models]}
        if ready:
            with contextlib.redirect_stdout(real_stdout):
                ready(info)
        while not stop.wait(timeout=1.0):
            for m in models:
                if m.store is not None:
                    with m.store.lock:
                        m.store.sweep()
            if not triton.is_alive():
                print("error: the Triton server stopped unexpectedly", file=sys.stderr)
                return 1
        return 0
    finally:
        guard.stop()  # first: its connections to tritonserver would hold up the server's exit
        stub_folders = _python_backend_folders()
        triton.stop()
        _remove_left(stub_folders)
        log_redirect.__exit__(None, None, None)
        for m in models:
            m.runner.release()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
