"""The HTTP front of ``dsr-deploy serve``: bounds every request before tritonserver sees it.

PyTriton's bundled tritonserver (2.51) has no input-size option, and its HTTP frontend allocates the bytes a
request *declares* before any check: ``{"shape": [100000000, 6, 16], "data": [0.0]}`` aborts the whole server
(``std::bad_alloc``). So tritonserver listens on a private loopback port and this guard owns the user's
``--host``/``--port``: it forwards every request unchanged, except that an inference request is refused (HTTP 400,
one sentence, nothing forwarded) when

* its body is larger than the limit (``--max-request-mb``; a compressed body is inflated here, bounded, and
  forwarded inflated), or it has no ``Content-Length`` (chunked uploads are refused, 411);
* its JSON header is not an object with a list of inputs;
* an input of a served model has the wrong rank, a fixed dimension that differs from the model's, a batch larger
  than ``--max-batch``, a negative dimension, or declares more bytes than the limit (all inputs together);
* the JSON has a key twice in one object (any depth), a NaN / Infinity, an empty dimension, data that does not
  fill its shape exactly or an element its datatype cannot hold (:mod:`.request_json`).

What is forwarded is the guard's own serialisation of the JSON it checked (never the client's bytes), so
tritonserver cannot read the request differently from the guard (it keeps the *first* of two equal keys, Python the
last).

Error answers that PyTriton fills with a Python traceback (an inference callable that raised) are reduced to
their last sentence; a :class:`~dsr_deploy.errors.UserError` raised by the model (unknown sequence id, ...)
becomes HTTP 400 with its message. gRPC is served by tritonserver directly (not guarded).
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, Optional, Sequence, Tuple

from ..errors import UserError
from .request_json import BadRequest, canonical, check_data, strict_loads

DEFAULT_MAX_REQUEST_MB = 64
_INFER = re.compile(r"^/v2/models/([^/?]+)(?:/versions/[^/?]+)?/infer/?(?:\?.*)?$")
_ITEMSIZE = {"BOOL": 1, "UINT8": 1, "INT8": 1, "UINT16": 2, "INT16": 2, "FP16": 2, "BF16": 2, "UINT32": 4,
             "INT32": 4, "FP32": 4, "UINT64": 8, "INT64": 8, "FP64": 8}
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection", "upgrade", "te",
        "trailer", "expect"}
MAX_CONNECTIONS = 256  # open client connections (one thread each); more are closed at once


@dataclass
class ModelLimits:
    """What one served model accepts: per input its per-sample dims (-1: free) and whether batching adds a
    leading batch dimension of at most ``max_batch``."""

    inputs: Dict[str, Tuple[int, ...]] = field(default_factory=dict)
    max_batch: int = 0  # 0: no batching (the leading dimension is free, bounded by bytes only)


class Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def check_request(header: dict, limits: Optional[ModelLimits], max_bytes: int) -> None:
    """Raise :class:`Refused` when an inference request's JSON header declares what the server must not
    allocate (see the module docstring)."""
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise Refused(400, "the request must be a JSON object with a list of inputs")
    total = 0
    for inp in header["inputs"]:
        if not isinstance(inp, dict) or not isinstance(inp.get("name"), str):
            raise Refused(400, "every input needs a name")
        name, shape = inp["name"], inp.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
            raise Refused(400, f"input {name!r} needs a shape: a list of integers")
        if any(d < 0 for d in shape):
            raise Refused(400, f"input {name!r} has a negative dimension in shape {shape}")
        if limits is not None and name in limits.inputs:
            dims = limits.inputs[name]
            if len(shape) != len(dims) + 1:
                raise Refused(400, f"input {name!r} has shape {shape}; the model expects "
                                   f"{[-1, *dims]} (batch first)")
            if limits.max_batch > 0 and shape[0] > limits.max_batch:
                raise Refused(400, f"input {name!r} has a batch of {shape[0]}; this server takes at most "
                                   f"{limits.max_batch} (--max-batch)")
            for got, want in zip(shape[1:], dims):
                if want >= 0 and got != want:
                    raise Refused(400, f"input {name!r} has shape {shape}; the model expects "
                                       f"{[-1, *dims]} (batch first)")
        n = 1
        for d in shape:
            n *= d
            if n > max_bytes:  # stop early: no huge integers either
                break
        total += n * _ITEMSIZE.get(str(inp.get("datatype", "")).upper(), 8)
        if total > max_bytes:
            raise Refused(400, f"the inputs declare more than {max_bytes // (1 << 20)} MiB; this server takes at "
                               "most that per request (--max-request-mb)")


def _inflate(body: bytes, encoding: str, max_bytes: int) -> bytes:
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding)
    if wbits is None:
        raise Refused(415, f"Content-Encoding {encoding!r} is not accepted (gzip, deflate or none)")
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise Refused(400, f"the {encoding} body does not decompress") from exc
    if len(out) > max_bytes or d.unconsumed_tail:
        raise Refused(413, f"the request inflates to more than {max_bytes // (1 << 20)} MiB (--max-request-mb)")
    return out


_USER_ERROR = re.compile(r"(?:^|\n)\s*(?:[\w.]+\.)?UserError: (.+?)\s*(?:\n|$)")


def clean_error(text: str) -> Tuple[bool, str]:
    """``(is_user_error, one sentence)`` for an error text PyTriton filled with a traceback."""
    found = _USER_ERROR.findall(text)
    if found:
        return True, _no_paths(found[-1].strip())
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # The exception line, never a traceback frame ('File "/srv/...", line 3, in f') or source line.
    errors = [line for line in lines if _EXC_LINE.match(line)]
    last = errors[-1] if errors else (lines[-1] if lines else "inference failed")
    if last.startswith("File ") or not errors and "Traceback" in text:
        last = "an internal error"
    return False, _no_paths(f"inference failed: {last}" if "Traceback" in text else last)


_EXC_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning)\b")
_PATH = re.compile(r"(?<![\w.])/(?:[^\s/'\"():,]+/)+[^\s/'\"():,]*")


def _no_paths(message: str) -> str:
    """A server-side message with the server's file paths replaced (they tell a client nothing it needs)."""
    return _PATH.sub("<path>", message)


class _NoDelayConnection(http.client.HTTPConnection):
    def connect(self):
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "dsr-deploy"
    timeout = 120  # an idle client connection is closed after this

    def setup(self):
        super().setup()
        # Small requests and answers: without TCP_NODELAY, Nagle's algorithm and delayed ACKs add ~40 ms each.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format, *args):  # noqa: A002 - quiet, like tritonserver without --log-verbose
        pass

    # -- plumbing --------------------------------------------------------------------------------------------
    def _backend(self) -> http.client.HTTPConnection:
        conn = getattr(self, "_conn", None)
        if conn is None:
            conn = _NoDelayConnection("127.0.0.1", self.server.guard.backend_port, timeout=300)
            self._conn = conn
            self.server.guard._track(conn)
        return conn

    def finish(self):
        conn = getattr(self, "_conn", None)
        if conn is not None:
            conn.close()
            self.server.guard._untrack(conn)
        super().finish()

    def _reply(self, status: int, payload: bytes, headers: Sequence[Tuple[str, str]] = (),
               content_type: str = "application/json") -> None:
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        if not any(k.lower() == "content-type" for k, _ in headers):
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        if self.command != "HEAD":  # headers and body in one write
            self._headers_buffer.append(b"\r\n" + payload)
            self.flush_headers()
        else:
            self.end_headers()

    def _refuse(self, status: int, message: str) -> None:
        self._reply(status, json.dumps({"error": message}).encode())
        if status in (411, 413):
            self.close_connection = True  # the unread body would be taken for the next request

    def _forward(self, body: Optional[bytes], drop: Sequence[str] = (), replace: Optional[dict] = None) -> None:
        replace = replace or {}
        skip = {*drop, *(k.lower() for k in replace)}
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP and k.lower() not in skip}
        headers.update(replace)
        if body is not None:
            headers["Content-Length"] = str(len(body))
        for attempt in (0, 1):  # a kept-alive backend connection may have been closed meanwhile: reconnect once
            conn = self._backend()
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                break
            except (http.client.HTTPException, OSError):
                conn.close()
                if attempt:
                    self._refuse(503, "the inference server is not answering")
                    return
        out = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP]
        status = resp.status
        if status >= 400 and b"Traceback" in data and not resp.getheader("Content-Encoding"):
            try:
                text = json.loads(data).get("error", "")
            except (ValueError, AttributeError):
                text = data.decode("utf-8", "replace")
            user, message = clean_error(text)
            status = 400 if user else status
            data = json.dumps({"error": message}).encode()
            out = [(k, v) for k, v in out if k.lower() not in ("content-encoding", "content-type")]
        self._reply(status, data, out)

    # -- methods ---------------------------------------------------------------------------------------------
    def do_GET(self):
        self._forward(None)

    do_HEAD = do_GET

    def do_POST(self):
        guard = self.server.guard
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._refuse(411, "send the request with a Content-Length (chunked uploads are not accepted)")
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            return self._refuse(400, "malformed Content-Length")
        if length < 0 or length > guard.max_bytes:
            return self._refuse(413, f"the request is larger than {guard.max_bytes // (1 << 20)} MiB "
                                     "(--max-request-mb)")
        body = self.rfile.read(length)
        match = _INFER.match(self.path)
        if not match:
            return self._forward(body)
        drop: Tuple[str, ...] = ()
        try:
            encoding = self.headers.get("Content-Encoding", "").strip().lower()
            if encoding and encoding != "identity":
                body = _inflate(body, encoding, guard.max_bytes)
                drop = ("content-encoding",)
            head_len = self.headers.get("Inference-Header-Content-Length")
            try:
                n = int(head_len) if head_len is not None else len(body)
            except ValueError:
                raise Refused(400, "malformed Inference-Header-Content-Length") from None
            if not 0 <= n <= len(body):
                raise Refused(400, "Inference-Header-Content-Length does not fit the request")
            try:
                header = strict_loads(body[:n])
                check_request(header, guard.models.get(match.group(1)), guard.max_bytes)
                check_data(header, len(body) - n, _ITEMSIZE)
                # Forward what was checked, serialised by us: no second reading can differ from ours.
                head = canonical(header)
            except BadRequest as exc:
                raise Refused(400, str(exc)) from None
        except Refused as exc:
            return self._refuse(exc.status, str(exc))
        body = head + body[n:]
        self._forward(body, drop, {"Inference-Header-Content-Length": str(len(head))} if head_len is not None else {})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request, client_address):
        # A thread per connection, but not without bound: idle or slow clients cannot pile up threads.
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def handle_error(self, request, client_address):
        # A client that hangs up mid-answer (or any slip in one connection) ends that connection only; no
        # traceback in the server's log.
        import sys

        exc = sys.exc_info()[1]
        if not isinstance(exc, (ConnectionError, TimeoutError)):
            print(f"dsr-deploy serve: HTTP connection from {client_address[0]} failed: {type(exc).__name__}: "
                  f"{exc}", file=sys.stderr)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class HttpGuard:
    """Listen on ``host:port`` (bound at construction: a taken port is a one-line error before anything starts)
    and forward to tritonserver on ``127.0.0.1:backend_port``."""

    def __init__(self, host: str, port: int, backend_port: int, models: Dict[str, ModelLimits],
                 max_request_mb: float = DEFAULT_MAX_REQUEST_MB):
        self.backend_port = backend_port
        self.models = models
        self.max_bytes = int(max_request_mb * (1 << 20))
        self._conns: set = set()
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        server_class = _Server
        if ":" in host:
            server_class = type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
        try:
            self.httpd = server_class((host, port), _Handler)
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port} (--port): {exc.strerror or exc}") from exc
        self.httpd.guard = self

    def _track(self, conn) -> None:
        with self._lock:
            self._conns.add(conn)

    def _untrack(self, conn) -> None:
        with self._lock:
            self._conns.discard(conn)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="dsr-http-guard", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, then close the connections to tritonserver (it waits for open ones at exit)."""
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(10)
            self._thread = None
        self.httpd.server_close()
        with self._lock:
            for conn in list(self._conns):
                conn.close()
            self._conns.clear()


def check_port_free(host: str, port: int, label: str) -> None:
    """A one-line error now if ``host:port`` cannot be bound (taken, or not an address of this machine)."""
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port} ({label}): {exc.strerror or exc}") from exc
    finally:
        s.close()


def private_port() -> int:
    """A free loopback port for tritonserver's own HTTP endpoint."""
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()
