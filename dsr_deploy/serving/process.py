"""``dsr-deploy serve`` in a child process, for tests and benchmarks: free ports, readiness, clean stop.

The child is the real CLI (``python -m dsr_deploy serve ... --json``); it prints one JSON line when every model
is loaded and stops on SIGTERM. Its PyTriton workspace and temporary files go under ``root`` so a caller can
check that nothing is left behind.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Optional, Sequence


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports free on ``host`` right now (bound together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def descendants(pid: int) -> list[int]:
    """Every live descendant process of ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(p.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def rss_bytes(pids: Sequence[int]) -> int:
    """Resident memory of ``pids`` together (VmRSS from /proc)."""
    total = 0
    for pid in pids:
        try:
            for line in (Path("/proc") / str(pid) / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


class ServerProcess:
    """``dsr-deploy serve ARTIFACTS`` on 127.0.0.1 free ports, workspace and TMPDIR under ``root``."""

    def __init__(self, root: Path | str, artifacts: Sequence[Path | str], args: Sequence[str] = (),
                 start_timeout_s: float = 120.0, python: Optional[str] = None):
        self.root = Path(root)
        self.pytriton_home = self.root / "pytriton_home"
        self._short_home = False
        if len(str(self.pytriton_home.resolve())) > 48:  # PyTriton's socket paths must fit 107 bytes
            import tempfile

            self.pytriton_home, self._short_home = Path(tempfile.mkdtemp(prefix="dsr-pt-", dir="/tmp")), True
        self.tmpdir = self.root / "tmp"
        self.pytriton_home.mkdir(parents=True, exist_ok=True)
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        self.http_port, self.grpc_port = free_ports(2)
        env = dict(os.environ, PYTRITON_HOME=str(self.pytriton_home), TMPDIR=str(self.tmpdir))
        self.log_path = self.root / "server.log"
        self._log = open(self.log_path, "w")
        cmd = [python or sys.executable, "-m", "dsr_deploy", "serve", *map(str, artifacts), "--host", "127.0.0.1",
               "--port", str(self.http_port), "--grpc-port", str(self.grpc_port), *args, "--json"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log, text=True, env=env)
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(start_timeout_s)
        if not line or not line[0].strip():
            self.kill()
            raise RuntimeError("dsr-deploy serve did not become ready; log tail:\n"
                               + self.log_path.read_text()[-3000:])
        self.info = json.loads(line[0])
        self.url = f"127.0.0.1:{self.http_port}"
        self.children = descendants(self.proc.pid)
        self.backend_folders = self._backend_folders()

    def _backend_folders(self) -> list[Path]:
        """The folders Triton's python backend unpacks each model into (``/tmp/folderXXXXXX``, whatever TMPDIR
        says), read from the backend stubs' command lines: a clean stop removes them."""
        found = set()
        for pid in self.children:
            try:
                args = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            for a in args:
                if a.endswith(b"/model.py"):
                    found.add(Path(a.decode()).parent.parent)
        return sorted(found)

    def rss(self) -> int:
        """Resident memory of the server and its children (tritonserver, backend stubs)."""
        return rss_bytes([self.proc.pid, *descendants(self.proc.pid)])

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, then wait; returns the exit code."""
        try:
            self.proc.send_signal(signal.SIGTERM)
            return self.proc.wait(timeout_s)
        finally:
            self._log.close()
            self._remove_short_home()

    def _remove_short_home(self) -> None:
        """The short home made for a long ``root`` goes once the server left it empty."""
        if self._short_home:
            try:
                self.pytriton_home.rmdir()
            except OSError:
                pass

    def kill(self) -> None:
        for pid in descendants(self.proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        self.proc.kill()
        self.proc.wait(30)
        self._log.close()
        # A killed server cannot clean up: remove what it left (only the folders its own children used).
        import shutil

        for folder in getattr(self, "backend_folders", []):
            shutil.rmtree(folder, ignore_errors=True)
        for entry in self.pytriton_home.glob("workspace_*"):
            shutil.rmtree(entry, ignore_errors=True)
        self._remove_short_home()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            try:
                self.stop()
            except subprocess.TimeoutExpired:
                self.kill()
