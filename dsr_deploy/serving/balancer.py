"""Replicas behind a load balancer: the nginx routing rule that keeps each streaming sequence on one replica, and
nginx run as a child process on loopback (for tests and benchmarks).

A streaming model's membranes live in the replica that started the sequence (``serve``'s sequence store, or
tritonserver's sequence batcher), so every step of a sequence must reach that replica. The clients send the id in
the ``X-DSR-Sequence-Id`` header (:data:`dsr_deploy.contract.SEQUENCE_ID_HEADER`); the balancer hashes on it
(consistent hashing: removing a replica moves only that replica's sequences). Requests without the header
(multi-step models, health checks) hash on nginx's random ``$request_id``, so they still spread over the replicas.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Optional, Sequence

from ..contract import SEQUENCE_ID_HEADER, nginx_header_variable

AFFINITY_KEY = "$dsr_affinity_key"


def nginx_affinity_map(header: str = SEQUENCE_ID_HEADER) -> str:
    """The ``map`` (http level) that picks the hash key: the sequence header, or a random id without it."""
    return (f"map {nginx_header_variable(header)} {AFFINITY_KEY} {{\n"
            f"    \"\"      $request_id;\n"
            f"    default {nginx_header_variable(header)};\n"
            "}\n")


def nginx_upstream(name: str, servers: Sequence[str], affinity: bool = True, keepalive: int = 32) -> str:
    """An ``upstream`` block over ``servers`` (``host:port``): consistent hashing on the sequence key, or nginx's
    default round robin (``affinity=False``: what breaks streams; for comparison only)."""
    lines = [f"upstream {name} {{"]
    if affinity:
        lines.append(f"    hash {AFFINITY_KEY} consistent;")
    lines += [f"    server {s};" for s in servers]
    if keepalive:
        lines.append(f"    keepalive {keepalive};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def nginx_proxy_location(upstream: str, read_timeout_s: int = 60) -> str:
    """The ``location`` that forwards to ``upstream`` over kept-alive HTTP/1.1 connections."""
    return ("location / {\n"
            f"    proxy_pass http://{upstream};\n"
            "    proxy_http_version 1.1;\n"
            "    proxy_set_header Connection \"\";\n"
            "    proxy_connect_timeout 5s;\n"
            f"    proxy_read_timeout {read_timeout_s}s;\n"
            "    client_max_body_size 64m;\n"
            "}\n")


def _indent(text: str, n: int) -> str:
    return "".join((" " * n + line if line.strip() else line) for line in text.splitlines(keepends=True))


def nginx_conf(root: Path, listeners: dict, upstreams: dict) -> str:
    """A whole nginx.conf with every path under ``root`` (pid, logs, temporary files), in the foreground.

    ``listeners``: port -> upstream name; ``upstreams``: name -> (servers, affinity).
    """
    http = ["log_format dsr '$server_port|$http_x_dsr_sequence_id|$upstream_addr|$status';",
            f"access_log {root}/access.log dsr;",
            *(f"{k}_temp_path {root}/{k}_temp;" for k in ("client_body", "proxy")),
            "keepalive_requests 100000;", nginx_affinity_map()]
    http += [nginx_upstream(name, servers, affinity) for name, (servers, affinity) in upstreams.items()]
    http += ["server {\n" + f"    listen 127.0.0.1:{port};\n" + _indent(nginx_proxy_location(up), 4) + "}\n"
             for port, up in listeners.items()]
    # Run as root (CI), nginx would switch its worker to "nobody", who cannot write the temporary folders here.
    user = "user root;\n" if hasattr(os, "geteuid") and os.geteuid() == 0 else ""
    return (f"{user}daemon off;\nworker_processes 1;\npid {root}/nginx.pid;\nerror_log {root}/error.log warn;\n"
            "events {\n    worker_connections 1024;\n}\nhttp {\n" + _indent("\n".join(http), 4) + "}\n")


def find_nginx() -> Optional[str]:
    """The nginx binary (PATH, then Debian's /usr/sbin), or None."""
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


class NginxProcess:
    """nginx with its own prefix, config, pid and logs under ``root``, in the foreground as a child process."""

    def __init__(self, root: Path | str, listeners: dict, upstreams: dict, binary: Optional[str] = None,
                 start_timeout_s: float = 20.0):
        import socket

        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.binary = binary or find_nginx()
        if self.binary is None:
            raise RuntimeError("nginx is not installed")
        self.conf = self.root / "nginx.conf"
        self.conf.write_text(nginx_conf(self.root, listeners, upstreams))
        self.access_log = self.root / "access.log"
        self._log = open(self.root / "nginx.out", "w")
        self.proc = subprocess.Popen([self.binary, "-p", str(self.root), "-c", str(self.conf)],
                                     stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + start_timeout_s
        pending = set(listeners)
        while pending and time.monotonic() < deadline and self.proc.poll() is None:
            for port in list(pending):
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", int(port))) == 0:
                        pending.discard(port)
            time.sleep(0.05)
        if pending:
            self.stop()
            logs = [p.read_text()[-2000:] for p in (self.root / "nginx.out", self.root / "error.log") if p.exists()]
            raise RuntimeError("nginx did not start: " + "\n".join(logs))

    def routes(self) -> list:
        """The access log as ``(port, sequence id or "", upstream tried last, status)`` rows."""
        rows = []
        if self.access_log.exists():
            for line in self.access_log.read_text().splitlines():
                port, sid, ups, status = (line.split("|") + ["", "", ""])[:4]
                rows.append((int(port), sid if sid != "-" else "", ups.split(",")[-1].strip(), status))
        return rows

    def stop(self, timeout_s: float = 15.0) -> Optional[int]:
        """SIGQUIT (finish open requests), then SIGKILL after ``timeout_s``."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGQUIT)
                try:
                    self.proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
            return self.proc.returncode
        finally:
            self._log.close()

    def __enter__(self) -> NginxProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
