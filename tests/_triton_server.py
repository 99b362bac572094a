"""A bounded tritonserver (the one PyTriton ships: python backend only) on 127.0.0.1, for repository tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path


def pytriton_dir() -> Path | None:
    try:
        import pytriton
    except ImportError:
        return None
    d = Path(pytriton.__file__).resolve().parent
    return d if (d / "tritonserver" / "bin" / "tritonserver").is_file() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TritonServer:
    """tritonserver over ``repos`` with the python backend of this interpreter; HTTP only, loopback only, killed
    after ``limit_s`` seconds whatever happens (``timeout``), stopped by :meth:`stop`."""

    def __init__(self, repos, work: Path, limit_s: int = 600):
        pt = pytriton_dir()
        backends = work / "backends"
        shutil.copytree(pt / "tritonserver" / "backends", backends)
        version = f"{sys.version_info[0]}.{sys.version_info[1]}"
        shutil.copy2(pt / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub",
                     backends / "python" / "triton_python_backend_stub")
        env = dict(os.environ)
        # The stub links libpython3.X: this interpreter's first (platform notes: Debian's 3.11.2 fails at load),
        # then PyTriton's bundled libraries; the venv's bin first on PATH so the stub finds its site-packages.
        libs = [sysconfig.get_config_var("LIBDIR") or "", str(pt.parent / "nvidia_pytriton.libs")]
        env["LD_LIBRARY_PATH"] = os.pathsep.join([p for p in libs if p] + [env.get("LD_LIBRARY_PATH", "")])
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        self.port = _free_port()
        self.log = work / "tritonserver.log"
        cmd = ["timeout", str(limit_s), str(pt / "tritonserver" / "bin" / "tritonserver"),
               *(f"--model-repository={r}" for r in repos), f"--backend-directory={backends}",
               "--http-address=127.0.0.1", f"--http-port={self.port}", "--allow-grpc=false", "--allow-metrics=false",
               "--exit-on-error=false", "--exit-timeout-secs=5", f"--cache-directory={work}"]
        self.proc = subprocess.Popen(cmd, stdout=open(self.log, "w"), stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        self.url = f"127.0.0.1:{self.port}"

    def get(self, path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://{self.url}{path}", timeout=5) as r:
                return r.status
        except OSError as exc:
            return getattr(exc, "code", 0) or 0

    def wait_ready(self, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
            if self.get("/v2/health/live") == 200:
                return
            time.sleep(0.5)
        raise RuntimeError(f"tritonserver not live after {timeout_s} s:\n{self.log.read_text()[-3000:]}")

    def model_ready(self, name: str) -> bool:
        return self.get(f"/v2/models/{name}/ready") == 200

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)  # the session of the timeout wrapper and tritonserver
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


def post_raw(port: int, path: str, body: bytes, headers=None):
    """One raw HTTP POST to 127.0.0.1:port (what any client, or an attacker, can send): (status, body)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()
