"""Issue 21, the CLI half: no file, full disk or odd number can kill, hang or fool a command.

Every case: exit 2, one stderr line, nothing left behind. Full disks are a small tmpfs (root can mount one; skipped
with the reason where it cannot), filled up with one file. The serving cases are tests/test_serve_hardening.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from _cli_util import run_cli
from export_nets import exported, nets_file

from dsr_deploy.errors import UserError

NETS = nets_file()
SHAPE = "3,2,5"


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in err, err
    return lines[-1]


def tree(folder: Path) -> list:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ---------------------------------------------------------------------------------------------------------
# Numbers: every numeric option refuses NaN, infinities and out-of-range values at parse time.

NUMBERS = [
    (["bench", "x.onnx"], "--seconds", "nan", "finite"),
    (["bench", "x.onnx"], "--seconds", "inf", "finite"),
    (["bench", "x.onnx"], "--seconds", "0", "> 0"),
    (["bench", "x.onnx"], "--neurons", "-5", ">= 1"),
    (["bench", "x.onnx"], "--iters", "0", ">= 1"),
    (["bench", "x.onnx"], "--iters", "1.5", "--iters"),
    (["bench", "x.onnx"], "--warmup", "-1", ">= 0"),
    (["bench", "x.onnx"], "--threads", "-2", ">= 0"),
    (["verify", "x"], "--min-top1", "nan", "finite"),
    (["verify", "x"], "--min-top1", "1.5", "<= 1"),
    (["verify", "x"], "--max-accuracy-drop", "-inf", "finite"),
    (["verify", "x"], "--min-agreement", "-0.1", ">= 0"),
    (["verify", "x"], "--samples", "-1", ">= 0"),
    (["verify", "x"], "--seed", "-1", ">= 0"),
    (["serve", "x"], "--port", "70000", "<= 65535"),
    (["serve", "x"], "--max-request-mb", "nan", "finite"),
    (["serve", "x"], "--idle-timeout", "inf", "finite"),
    (["serve", "x"], "--max-batch", "-1", ">= 0"),
    (["serve", "x"], "--max-sequences", "0", ">= 1"),
    (["triton-repo", "x", "--out", "r"], "--max-batch", "-3", ">= 0"),
    (["export", f"{NETS}:single_neuron", "--input-shape", SHAPE, "--out", "o"], "--opset", "-17", ">= 1"),
    (["quickstart", "zoo:digits-cnn"], "--iters", "0", "1"),  # its own min=1 (click says it)
]


@pytest.mark.parametrize("argv, option, value, words", NUMBERS,
                         ids=[f"{a[0]}{o}={v}" for a, o, v, _ in NUMBERS])
def test_numeric_option_refused_at_parse_time(tmp_path, monkeypatch, capsys, argv, option, value, words):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, *argv, option, value)
    assert code == 2, err
    line = one_line(err)
    assert option in line and words in line, line
    assert len(err.strip().splitlines()) == 1 and out == ""
    assert list(tmp_path.iterdir()) == []  # refused before any work (x / x.onnx do not even exist)


def test_every_numeric_option_has_a_range():
    """One table for all: a new numeric option without a range fails here, not in a user's hands."""
    from dsr_deploy.cli import command
    from dsr_deploy.cli.validate import RANGES, numeric_params

    found = {(where.split()[-1], p.opts[0]) for where, p, _ in numeric_params(command())}
    assert {("bench", "--seconds"), ("bench", "--neurons"), ("serve", "--port"), ("verify", "--min-top1"),
            ("export", "--opset")} <= found, found
    missing = sorted(f"{w} {o}" for w, o in found if o not in RANGES)
    assert missing == [], missing
    assert all(getattr(p.callback, "_dsr_checked", False) for _, p, _ in numeric_params(command()))


# ---------------------------------------------------------------------------------------------------------
# Files the CLI reads: regular files only (a FIFO must not hang), .npy sizes checked before allocation.

@contextlib.contextmanager
def unblock_after(fifo: Path, seconds: float = 60.0):
    """A safety net, so a regression fails instead of hanging the suite: after ``seconds`` a writer opens the
    FIFO (and closes it), which releases a reader blocked in open()."""
    done = threading.Event()

    def release():
        if not done.wait(seconds):
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    t = threading.Thread(target=release, daemon=True)
    t.start()
    try:
        yield
    finally:
        done.set()
        t.join(5)


def _huge_npy(path: Path) -> None:
    """A .npy whose header declares 10^12 x 10^6 float32 (4 exabytes) over 16 bytes of data."""
    header = {"descr": "<f4", "fortran_order": False, "shape": (10 ** 12, 10 ** 6)}
    text = repr(header).encode()
    pad = 64 - (10 + len(text) + 1) % 64
    path.write_bytes(b"\x93NUMPY\x01\x00" + (len(text) + pad + 1).to_bytes(2, "little") + text + b" " * pad
                     + b"\n" + b"\0" * 16)


def _fifo_model(work: Path) -> Path:
    folder = work / "ex"
    shutil.copytree(exported("ours_neuron_net", (3, 2, 5), formats=("onnx",)), folder)
    (folder / "model.onnx").unlink()
    os.mkfifo(folder / "model.onnx")
    return folder / "model.onnx"


def _export_argv(*extra):
    return ["export", f"{NETS}:ours_neuron_net", "--input-shape", SHAPE, "--format", "onnx", *extra, "--out", "o"]


READS = [
    # (what, argv, setup -> the special file to guard, words)
    ("verify on a folder whose model.onnx is a FIFO", ["verify", "ex"], _fifo_model, "is a FIFO"),
    ("triton-repo on that folder", ["triton-repo", "ex", "--out", "repo"], _fifo_model, "is a FIFO"),
    ("bench on that folder", ["bench", "ex", "--iters", "1"], _fifo_model, "is a FIFO"),
    ("calibration FIFO", _export_argv("--precision", "int8", "--calibration", "cal.npy"),
     lambda w: (os.mkfifo(w / "cal.npy"), w / "cal.npy")[1], "--calibration cal.npy is a FIFO"),
    ("checkpoint FIFO", _export_argv("--checkpoint", "ck.pt"),
     lambda w: (os.mkfifo(w / "ck.pt"), w / "ck.pt")[1], "checkpoint ck.pt is a FIFO"),
    ("checkpoint a device", _export_argv("--checkpoint", "/dev/zero"), None, "is a character device"),
    ("model file FIFO", ["export", "m.py:make", "--input-shape", SHAPE, "--out", "o"],
     lambda w: (os.mkfifo(w / "m.py"), w / "m.py")[1], "is a FIFO"),
    ("verify --input FIFO", ["verify", "{onnx}", "--trust-model-code", "--input", "in.npy"],
     lambda w: (os.mkfifo(w / "in.npy"), w / "in.npy")[1], "--input in.npy is a FIFO"),
    ("verify --labels a socket", ["verify", "{onnx}", "--trust-model-code", "--input", "{good_npy}", "--labels",
                                  "l.npy"], "socket", "--labels l.npy is a socket"),
    ("npy header declaring 4 exabytes (--input)", ["verify", "{onnx}", "--trust-model-code", "--input", "huge.npy"],
     lambda w: _huge_npy(w / "huge.npy"), "its header declares shape [1000000000000, 1000000]"),
    ("npy header declaring 4 exabytes (--calibration)",
     _export_argv("--precision", "int8", "--calibration", "huge.npy"), lambda w: _huge_npy(w / "huge.npy"),
     "its header declares shape"),
]


@pytest.mark.parametrize("what, argv, setup, words", READS, ids=[r[0] for r in READS])
def test_odd_input_file_refused_in_one_line(tmp_path, monkeypatch, capsys, what, argv, setup, words):
    import socket

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    special, sock = None, None
    if setup == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(work / "l.npy"))
    elif setup is not None:
        special = setup(work)
    good = tmp_path / "good.npy"
    np.save(good, np.zeros((3, 2, 5), np.float32))
    onnx = exported("ours_neuron_net", (3, 2, 5), formats=("onnx",)) if "{onnx}" in argv else None
    argv = [a.format(onnx=onnx, good_npy=good) for a in argv]
    before = tree(work)
    try:
        with unblock_after(special) if isinstance(special, Path) and stat.S_ISFIFO(os.stat(special).st_mode) \
                else contextlib.nullcontext():
            code, _, err = run_cli(capsys, *argv)
    finally:
        if sock is not None:
            sock.close()
    assert code == 2, err
    assert words in one_line(err)
    assert tree(work) == before


# ---------------------------------------------------------------------------------------------------------
# Writers: a full disk, a name too long, a symlink loop, a read-only place, /proc and /sys.

@pytest.fixture()
def full_disk(tmp_path):
    """A 2 MB tmpfs filled to the last byte (skipped where this process cannot mount one)."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True,
                         text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root / CAP_SYS_ADMIN): {res.stderr.strip()[:120]}")
    try:
        with open(mnt / "filler", "wb") as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * (1 << 16))
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.fixture()
def read_only(tmp_path):
    """A read-only tmpfs (EROFS), or skipped where this process cannot mount one."""
    mnt = tmp_path / "ro"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(mnt)], capture_output=True,
                         text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {res.stderr.strip()[:120]}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _cli_subprocess(argv, cwd, tmp_path, timeout=600):
    """The CLI in its own process: an abort (rc 134) from torch's C++ writer must show as such."""
    env = dict(os.environ, TMPDIR=str(tmp_path))
    return subprocess.run([sys.executable, "-m", "dsr_deploy", *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


FULL = [
    ("export torchscript", ["export", f"{NETS}:ours_neuron_net", "--input-shape", SHAPE, "--format", "torchscript",
                            "--out", "{d}/o"]),
    ("export onnx", ["export", f"{NETS}:ours_neuron_net", "--input-shape", SHAPE, "--format", "onnx",
                     "--out", "{d}/o"]),
    ("export pt2", ["export", f"{NETS}:ours_neuron_net", "--input-shape", SHAPE, "--format", "pt2",
                    "--out", "{d}/o"]),
    ("export all", ["export", f"{NETS}:ours_neuron_net", "--input-shape", SHAPE, "--format", "all",
                    "--out", "{d}/o"]),
    ("export streaming torchscript", ["export", f"{NETS}:ours_neuron_net", "--input-shape", SHAPE, "--mode",
                                      "streaming", "--format", "torchscript", "--out", "{d}/o"]),
    ("triton-repo", ["triton-repo", "{onnx}", "--out", "{d}/repo"]),
    ("bench --json", ["bench", "{onnx}", "--iters", "1", "--warmup", "0", "--batch", "1", "--no-memcpy",
                      "--json", "{d}/r.json"]),
]


@pytest.mark.parametrize("what, argv", FULL, ids=[f[0] for f in FULL])
def test_full_disk_is_one_line_and_leaves_nothing(tmp_path, full_disk, what, argv):
    onnx = exported("ours_neuron_net", (3, 2, 5), formats=("onnx",))
    argv = [a.format(d=full_disk, onnx=onnx) for a in argv]
    res = _cli_subprocess(argv, tmp_path, tmp_path)
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    line = one_line(res.stderr)
    assert "No space left on device" in line, line
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]


def test_aot_package_onto_a_full_disk(tmp_path, full_disk):
    """AOTInductor's packager writes through torch's C++ zip writer too (slow: one compile)."""
    pytest.importorskip("torch._inductor")
    argv = ["export", f"{NETS}:ours_neuron_net", "--input-shape", SHAPE, "--format", "pt2", "--aot",
            "--out", f"{full_disk}/o"]
    res = _cli_subprocess(argv, tmp_path, tmp_path)
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert "No space left on device" in one_line(res.stderr) or "AOTInductor" in one_line(res.stderr)
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]


LONG = "n" * 300
WRITES = [
    ("--out under /proc", ["triton-repo", "{onnx}", "--out", "/proc/dsr-repo"], "under /proc"),
    ("--out under /sys", _export_argv()[:-1] + ["/sys/dsr-export"], "under /sys"),
    ("--json under /proc", ["bench", "{onnx}", "--iters", "1", "--json", "/proc/self/r.json"], "under /proc"),
    ("--plot under /proc", ["bench", "{onnx}", "--iters", "1", "--plot", "/proc/self/r.png"], "under /proc"),
    ("--out name too long", _export_argv()[:-1] + [LONG], "long"),
    ("--json name too long", ["bench", "{onnx}", "--iters", "1", "--json", LONG + ".json"], "long"),
    ("triton-repo --out name too long", ["triton-repo", "{onnx}", "--out", LONG], "long"),
    ("--out through a symlink loop", _export_argv()[:-1] + ["loop/o"], "loop"),
    ("--json through a symlink loop", ["bench", "{onnx}", "--iters", "1", "--json", "loop/r.json"], "loop/r.json"),
    ("--out on a read-only file system", _export_argv()[:-1] + ["{ro}/o"], "not writable"),
    ("--json on a read-only file system", ["bench", "{onnx}", "--iters", "1", "--json", "{ro}/r.json"],
     "not writable"),
]


@pytest.mark.parametrize("what, argv, words", WRITES, ids=[w[0] for w in WRITES])
def test_odd_output_place_is_one_line(tmp_path, monkeypatch, capsys, request, what, argv, words):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    (work / "loop").symlink_to("loop")
    ro = request.getfixturevalue("read_only") if any("{ro}" in a for a in argv) else None
    onnx = exported("ours_neuron_net", (3, 2, 5), formats=("onnx",))
    argv = [a.format(onnx=onnx, ro=ro) for a in argv]
    before = tree(work)
    code, _, err = run_cli(capsys, *argv)
    assert code == 2, err
    assert words in one_line(err)
    assert tree(work) == before


def test_no_permission_is_one_line(tmp_path, monkeypatch, capsys):
    if os.geteuid() == 0:
        pytest.skip("root writes into any folder whatever its mode (EACCES cannot be made by permission bits; the "
                    "read-only file system case covers a refused write)")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, *_export_argv()[:-1], str(locked / "o"))
    assert code == 2 and "not writable" in one_line(err)


def test_write_error_mapping_covers_the_issue_errnos(tmp_path):
    """Each errno the issue names, raised inside the writer, is one UserError and no temporary file."""
    import errno

    from dsr_deploy.io import atomic_path

    for name in ("ENOSPC", "ENAMETOOLONG", "ELOOP", "EACCES", "EROFS"):
        code = getattr(errno, name)
        with pytest.raises(UserError, match=os.strerror(code)):
            with atomic_path(tmp_path / "r.json"):
                raise OSError(code, os.strerror(code))
        assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------
# Publish only what was verified.

def test_triton_repo_publishes_only_listed_artifacts(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "ts_only"
    shutil.copytree(exported("ours_neuron_net", (3, 2, 5), formats=("torchscript",)), folder)
    shutil.copy(exported("ours_neuron_net", (3, 2, 5), formats=("onnx",)) / "model.onnx", folder / "model.onnx")
    code, _, err = run_cli(capsys, "triton-repo", str(folder), "--out", "repo")
    assert code == 2, err
    line = one_line(err)
    assert "lists no ONNX model" in line and "model.onnx lies there unlisted" in line
    assert not (tmp_path / "repo").exists()


def test_triton_repo_says_which_files_it_leaves_out(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "onnx_plus"
    shutil.copytree(exported("ours_neuron_net", (3, 2, 5), formats=("onnx",)), folder)
    (folder / "model.ts").write_bytes(b"never verified")
    code, _, err = run_cli(capsys, "triton-repo", str(folder), "--out", "repo")
    assert code == 0, err
    notes = [ln for ln in err.splitlines() if "model.ts" in ln]
    assert len(notes) == 1 and "not listed" in notes[0] and "not published" in notes[0]
    assert not [p for p in (tmp_path / "repo").rglob("*") if p.suffix == ".ts"]


# ---------------------------------------------------------------------------------------------------------
# stdout, pipes, modes, messages.

NOISY = textwrap.dedent("""
    import torch
    from torch import nn

    from dsr_deploy.neuron import DSRIFNode

    print("hello from the model file")

    class Net(nn.Module):
        def __init__(self, reduce_T=False):
            super().__init__()
            self.fc = nn.Linear(5, 5)
            self.sn = DSRIFNode(T=None, v_threshold=0.5)
            self.reduce_T = reduce_T

        def forward(self, x):
            print("hello from forward")
            y = self.sn(self.fc(x))
            return y.mean(0) if self.reduce_T else y

    def noisy():
        print("hello from the factory")
        return Net()

    def drops_T():
        return Net(reduce_T=True)
""")


@pytest.mark.parametrize("argv", [
    ["export", "{f}:noisy", "--input-shape", SHAPE, "--format", "torchscript", "--json", "--out", "o"],
    ["inspect", "{f}:noisy", "--json"],
], ids=["export", "inspect"])
def test_json_stdout_is_only_json(tmp_path, monkeypatch, capsys, argv):
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "noisy.py"
    f.write_text(NOISY)
    code, out, err = run_cli(capsys, *[a.format(f=f) for a in argv])
    assert code == 0, err
    json.loads(out)  # the whole of stdout is one JSON document
    assert "hello from the factory" in err and "hello" not in out


def test_streaming_export_refuses_an_output_without_T(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "noisy.py"
    f.write_text(NOISY)
    code, _, err = run_cli(capsys, "export", f"{f}:drops_T", "--input-shape", SHAPE, "--mode", "streaming",
                           "--out", "o")
    assert code == 2, err
    assert "keeps the time dimension first" in one_line(err)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv", [["verify", "--help"], ["info", "--json"], ["--help"]],
                         ids=["verify --help", "info --json", "--help"])
def test_broken_pipe_ends_quietly(tmp_path, argv):
    r, w = os.pipe()
    os.close(r)  # the reader is gone before anything is written: every write is EPIPE
    try:
        res = subprocess.run([sys.executable, "-m", "dsr_deploy", *argv], stdout=w, stderr=subprocess.PIPE,
                             text=True, timeout=120, cwd=tmp_path)
    finally:
        os.close(w)
    assert res.stderr == "", res.stderr
    assert res.returncode == 141


def test_outputs_follow_the_umask(tmp_path, monkeypatch):
    from dsr_deploy.io import atomic_dir, atomic_write_text

    monkeypatch.chdir(tmp_path)
    for mask, file_mode, dir_mode in ((0o022, 0o644, 0o755), (0o027, 0o640, 0o750)):
        old = os.umask(mask)
        try:
            atomic_write_text(tmp_path / f"r{mask:o}.json", "{}")
            with atomic_dir(tmp_path / f"d{mask:o}") as d:
                (d / "x").write_text("y")
        finally:
            os.umask(old)
        assert stat.S_IMODE(os.stat(tmp_path / f"r{mask:o}.json").st_mode) == file_mode
        assert stat.S_IMODE(os.stat(tmp_path / f"d{mask:o}").st_mode) == dir_mode


def test_bench_json_report_follows_the_umask(tmp_path):
    onnx = exported("ours_neuron_net", (3, 2, 5), formats=("onnx",))
    res = subprocess.run([sys.executable, "-c", "import os, sys; os.umask(0o022); from dsr_deploy.cli import main; "
                          "main(sys.argv[1:])", "bench", str(onnx), "--iters", "1", "--warmup", "0", "--batch", "1",
                          "--no-memcpy", "--json", "r.json"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, TMPDIR=str(tmp_path)))
    assert res.returncode == 0, res.stderr[-2000:]
    assert stat.S_IMODE(os.stat(tmp_path / "r.json").st_mode) == 0o644


def test_fallback_without_functions_names_the_switch(tmp_path):
    """onnxruntime:fallback (custom ops off) on a model whose dsr nodes have no function bodies: the message says
    the library is switched off for that run, not that it "is not built"."""
    import onnx

    from dsr_deploy.runtime import load_runner

    src = exported("ours_neuron_net", (3, 2, 5), formats=("onnx",)) / "model.onnx"
    model = onnx.load(str(src))
    del model.functions[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    runner = load_runner(str(bare), "onnxruntime", custom_ops="off")
    with pytest.raises(UserError) as info:
        runner.load()
    message = str(info.value)
    assert "without a function fallback" in message and "switched off" in message and "not built" not in message


@pytest.mark.parametrize("text, want", [
    ('Traceback (most recent call last):\n  File "/srv/app/model.py", line 3, in f\n    x = y[0]\n'
     "IndexError: index 0 is out of bounds", "inference failed: IndexError: index 0 is out of bounds"),
    ('Traceback (most recent call last):\n  File "/srv/app/model.py", line 3, in f\n    run()\n'
     "ValueError: cannot read /srv/app/data/x.npy", "inference failed: ValueError: cannot read <path>"),
    ('Traceback (most recent call last):\n  File "/srv/app/model.py", line 3, in f\n',
     "inference failed: an internal error"),
], ids=["exception line", "path in the message", "frame only"])
def test_server_error_answers_carry_no_frame_or_path(text, want):
    from dsr_deploy.serving.http_guard import clean_error

    user, message = clean_error(text)
    assert not user and message == want


def test_bench_fallback_without_functions_is_one_true_line(tmp_path, monkeypatch, capsys):
    import onnx

    monkeypatch.chdir(tmp_path)
    model = onnx.load(str(exported("ours_neuron_net", (3, 2, 5), formats=("onnx",)) / "model.onnx"))
    del model.functions[:]
    onnx.save(model, "bare.onnx")
    code, _, err = run_cli(capsys, "bench", "bare.onnx", "--backend", "onnxruntime:fallback", "--iters", "1",
                           "--warmup", "0", "--batch", "1")
    assert code == 2, err
    line = one_line(err)
    assert "switched off" in line and "not built" not in line
