"""File output that is never half-written: write to a temporary file in the same folder, then rename."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import UserError


def check_writable_dir(path: Path) -> None:
    """Create ``path`` if needed and check it is a writable folder; a one-line error otherwise."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output folder {path}: {exc.strerror or exc}") from exc
    if not path.is_dir():
        raise UserError(f"output path {path} exists and is not a folder")
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"output folder {path} is not writable")


def _renameat2_noreplace():
    """``renameat2(..., RENAME_NOREPLACE)`` from the C library (Linux 3.15+, glibc 2.28+), or None."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_renameat2 = _renameat2_noreplace()


def rename_noreplace(src: Path | str, dst: Path | str) -> str:
    """Rename ``src`` (a file or folder) to ``dst``, failing with :class:`FileExistsError` if ``dst`` exists,
    atomically: ``os.rename`` would silently replace an existing file or an empty folder.

    Linux: ``renameat2(RENAME_NOREPLACE)`` (returns ``"renameat2"``). Where that is missing or the file system
    refuses it (EINVAL / ENOSYS / ENOTSUP): a file is published with ``os.link`` (fails if ``dst`` exists,
    ``"link"``; without hard links an ``O_EXCL`` claim of ``dst`` is then replaced, ``"claim"``); a folder
    claims ``dst`` with ``os.mkdir`` (fails if it exists) and is then renamed onto that empty folder it owns
    (``"mkdir"``; only a writer that ignores the claim could still replace it).
    """
    src, dst = os.fspath(src), os.fspath(dst)
    if _renameat2 is not None:
        if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return "renameat2"
        import ctypes

        err = ctypes.get_errno()
        if err == errno.EEXIST or err == errno.ENOTEMPTY:
            raise FileExistsError(err, os.strerror(err), dst)
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), src)
    if not os.path.isdir(src) or os.path.islink(src):
        try:
            os.link(src, dst, follow_symlinks=False)  # FileExistsError if dst exists
            os.unlink(src)
            return "link"
        except FileExistsError:
            raise
        except OSError:  # no hard links here (some FUSE / FAT mounts): claim the name, then replace the claim
            os.close(os.open(dst, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))  # FileExistsError if taken
            os.replace(src, dst)
            return "claim"
    os.mkdir(dst)  # FileExistsError if dst exists: the claim
    try:
        os.rename(src, dst)  # onto the empty folder we just made
    except BaseException:
        with contextlib.suppress(OSError):
            os.rmdir(dst)
        raise
    return "mkdir"


def _remove(path: Path) -> None:
    """Remove a file, a symlink (never what it points to) or a folder tree; missing is fine."""
    with contextlib.suppress(FileNotFoundError):
        if path.is_symlink() or not path.is_dir():
            path.unlink()
        else:
            shutil.rmtree(path)


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()  # a dangling symlink is still in the way


# A full disk, a quota, a file-size limit, a read-only file system, a name or path too long, a symlink loop, no
# permission, a place that holds no files (/proc, /sys): one line, nothing left.
_NO_ROOM = {getattr(errno, n) for n in ("ENOSPC", "EDQUOT", "EFBIG", "EROFS", "ENAMETOOLONG", "ELOOP", "EACCES",
                                        "EPERM", "ENOTDIR", "EISDIR", "EINVAL", "ENOENT", "EEXIST", "EIO", "ENXIO",
                                        "ENODEV", "EOPNOTSUPP") if hasattr(errno, n)}
# Kernel interfaces, not storage: writing a report or an export there is refused before any work.
PSEUDO_ROOTS = ("/proc", "/sys", "/dev")
_DEV_STORAGE = ("/dev/shm",)


def write_error(target: Path | str, exc: OSError) -> UserError:
    """The one-line error for an OSError met while writing ``target``."""
    what = exc.strerror or type(exc).__name__
    other = f" ({exc.filename})" if exc.filename and os.fspath(exc.filename) != os.fspath(target) else ""
    return UserError(f"cannot write {target}: {what}{other}")


def is_write_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in _NO_ROOM


def check_not_pseudo(path: Path | str, label: str) -> None:
    """Refuse an output under /proc, /sys or /dev (but /dev/shm): kernel files, not a place for files we write."""
    try:
        real = os.path.realpath(os.fspath(path))
    except (OSError, RuntimeError, ValueError) as exc:
        raise UserError(f"{label} {path}: cannot resolve the path ({exc})") from None
    for root in PSEUDO_ROOTS:
        if (real == root or real.startswith(root + "/")) and not any(
                real == d or real.startswith(d + "/") for d in _DEV_STORAGE):
            raise UserError(f"{label} {path} is under {root} (a kernel interface, not storage); write elsewhere")


def umask() -> int:
    """The process's umask, without changing it (Linux /proc/self/status; else set and put back)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def follow_umask(path: Path | str, folder: bool = False) -> None:
    """``mkstemp`` / ``mkdtemp`` create 0600 / 0700; a published file or folder gets the modes of ``open`` /
    ``mkdir`` (0666 / 0777 less the umask) like any other program's output."""
    os.chmod(path, (0o777 if folder else 0o666) & ~umask())


def write_through_memory(path: Path | str, save) -> None:
    """``save(buffer)`` into memory, then the bytes into ``path`` from Python. torch's C++ zip writer
    (``torch.jit.save``, ``torch.export.save``, the AOTInductor packager) ends the whole process from a
    destructor when a write fails (a full disk): in memory it cannot fail that way, and Python's write raises
    an OSError that :func:`atomic_path` turns into one line."""
    import io

    buf = io.BytesIO()
    save(buf)
    with open(path, "wb") as f:
        f.write(buf.getbuffer())


@contextlib.contextmanager
def atomic_path(target: Path | str, *, force: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it is renamed onto ``target``, else removed.

    The temporary path keeps the target's suffix (some writers look at it). With ``force=False`` an existing
    target is a :class:`UserError`, also when it appears while the work runs (published without replacing).
    """
    target = Path(target)
    if _exists(target) and not force:
        raise UserError(f"{target} exists; pass --force to overwrite it")
    check_not_pseudo(target, "output")
    check_writable_dir(target.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name[:64]}.", suffix=".tmp" + "".join(target.suffixes)[-32:],
                                   dir=target.parent)
        os.close(fd)
        follow_umask(tmp)
    except OSError as exc:
        raise write_error(target, exc) from exc
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
            if force:
                os.replace(tmp_path, target)
            else:
                try:
                    rename_noreplace(tmp_path, target)
                except FileExistsError as exc:
                    raise UserError(f"{target} appeared while this command ran; not replaced (pass --force to "
                                    "overwrite it)") from exc
        except OSError as exc:
            if exc.errno not in _NO_ROOM:
                raise
            raise write_error(target, exc) from exc
    except BaseException:
        with contextlib.suppress(OSError):
            _remove(tmp_path)
        raise


def atomic_write_bytes(target: Path | str, data: bytes, *, force: bool = True) -> Path:
    with atomic_path(target, force=force) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def atomic_write_text(target: Path | str, text: str, *, force: bool = True) -> Path:
    return atomic_write_bytes(target, text.encode(), force=force)


def check_can_create(folder: Path | str) -> None:
    """Check, creating nothing, that ``folder`` exists as a writable folder or can be made: its nearest existing
    ancestor is a writable folder (a failed command must not leave folders it made)."""
    p = Path(os.path.abspath(folder))
    while not _exists(p) and p != p.parent:
        p = p.parent
    if not p.is_dir():
        raise UserError(f"cannot create output folder {folder}: {p} is not a folder")
    if not os.access(p, os.W_OK | os.X_OK):
        raise UserError(f"cannot create output folder {folder}: {p} is not writable")


def check_output_file(path: Path | str, label: str) -> Path:
    """Check, before any work, that the file ``path`` (given with option ``label``) can be written: not a folder,
    in an existing writable folder. The write itself is atomic (:func:`atomic_path`)."""
    text = os.fspath(path)
    if not text.strip():
        raise UserError(f"{label} is empty; name a file")
    path = Path(text)
    check_not_pseudo(path, label)
    try:
        if path.is_dir():
            raise UserError(f"{label} {path} is a folder; give a file name")
        parent = path.parent
        if not parent.is_dir():
            raise UserError(f"{label} {path}: folder {parent} does not exist")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise UserError(f"{label} {path}: folder {parent} is not writable")
        _check_name_length(path, label)
    except OSError as exc:  # a name too long, a symlink loop
        raise UserError(f"{label} {path}: {exc.strerror or exc}") from None
    return path


def _check_name_length(path: Path, label: str) -> None:
    """The temporary name beside ``path`` is longer than its name: refuse a name the folder cannot hold."""
    try:
        limit = os.pathconf(path.parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    if len(os.fsencode(path.name)) > limit:
        raise UserError(f"{label} {path}: the file name is longer than {limit} bytes")


def check_output_target(target: Path | str, *, force: bool = False, protect: tuple = ()) -> Path:
    """Refuse an output folder ``target`` before any work: empty, ``.``/``..``/``/`` or the current folder or
    one above it (replacing it would remove the working folder), an existing path without ``force``, or a
    folder that holds (or is) one of ``protect`` (inputs such as the checkpoint: replacing it would delete them).
    """
    text = os.fspath(target)
    if not text.strip():
        raise UserError("--out is empty; name the output folder")
    try:
        return _check_output_target(Path(text), text, force, protect)
    except OSError as exc:  # a name too long, a symlink loop
        raise UserError(f"--out {text}: {exc.strerror or exc}") from None
    except RuntimeError as exc:  # pathlib's "Symlink loop from ..."
        raise UserError(f"--out {text}: {exc}") from None


def _check_output_target(target: Path, text: str, force: bool, protect: tuple) -> Path:
    check_not_pseudo(target, "--out")
    _check_name_length(target, "--out")
    resolved = target.resolve() if not target.is_symlink() else target.parent.resolve() / target.name
    cwd = Path.cwd().resolve()
    if (target.name in ("", ".", "..") or resolved == Path(resolved.anchor) or resolved == cwd
            or resolved in cwd.parents):
        raise UserError(f"--out {text!r} is empty, the current folder or one above it; name a new folder to write")
    if _exists(target) and not force:
        raise UserError(f"{target} exists; pass --force to overwrite it")
    if _exists(target) and force:
        for p in protect:
            if p is None:
                continue
            p = Path(p).expanduser().resolve()
            if p == resolved or resolved in p.parents:
                raise UserError(f"--out {text} holds {p}, an input of this command; --force would delete it: "
                                "choose another --out")
    return target


@contextlib.contextmanager
def atomic_dir(target: Path | str, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it becomes ``target``, else it is removed.

    Without ``force`` publishing never replaces anything: a ``target`` that appeared while the work ran (another
    export to the same folder, say) is a :class:`UserError` and the work is discarded. With ``force`` an
    existing ``target`` (folder, file or symlink; a symlink itself is replaced, not what it points to) is moved
    aside, the new folder renamed in without replace, and the old one removed. Parent folders created for
    ``target`` are removed again when the work fails.
    """
    target = check_output_target(target, force=force)  # never the current folder, nor one above it
    check_not_pseudo(target, "--out")
    created = _missing_parents(target.parent)
    check_writable_dir(target.parent)
    tmp = None
    try:
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name[:64]}.", suffix=".tmp", dir=target.parent))
            follow_umask(tmp, folder=True)
        except OSError as exc:
            raise write_error(target, exc) from exc
        try:
            yield tmp
        except OSError as exc:  # a write inside the folder (triton-repo's files, a copied plan) failed
            if exc.errno not in _NO_ROOM:
                raise
            raise write_error(target, exc) from exc
        old = None
        if _exists(target):
            if not force:
                raise UserError(f"{target} appeared while this command ran; not replaced (pass --force to "
                                "overwrite it)")
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            _remove(old)
            os.rename(target, old)
        try:
            rename_noreplace(tmp, target)
        except FileExistsError as exc:
            if old is not None:  # --force gave it up; the folder that appeared stays as it is
                _remove(old)
            raise UserError(f"{target} appeared while this command ran; not replaced"
                            + ("" if force else " (pass --force to overwrite it)")) from exc
        if old is not None:
            _remove(old)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if not _exists(target):
            _remove_created(created)
        raise


def _missing_parents(folder: Path) -> list:
    """The folders of ``folder``'s path that do not exist yet, deepest first."""
    missing = []
    p = Path(os.path.abspath(folder))
    while not _exists(p) and p != p.parent:
        missing.append(p)
        p = p.parent
    return missing


def _remove_created(created: list) -> None:
    for p in created:  # deepest first; only if still empty
        try:
            os.rmdir(p)
        except OSError:
            break
