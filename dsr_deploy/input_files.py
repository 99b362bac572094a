"""Files the CLI reads (artifacts, calibration, inputs, labels, checkpoints): regular files only, and ``.npy``
arrays whose declared size is checked before anything is allocated.

Opening a FIFO blocks until a writer comes (forever, from a command line); a device or a socket is no data file
either. :func:`regular_file` refuses them with one line before any ``open``.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, List, Optional

from .errors import UserError

_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))


def special_kind(path: Path | str) -> str | None:
    """What ``path`` is when it exists and is not a regular file (following symlinks), else None."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    for test, name in _KINDS:
        if test(mode):
            return name
    return None if stat.S_ISREG(mode) else "not a regular file"


def regular_file(path: Path | str, label: str) -> Path:
    """``path`` as a Path when it is an existing regular file (symlinks followed); a one-line UserError else."""
    text = os.fspath(path)
    try:
        mode = os.stat(text).st_mode
    except FileNotFoundError:
        raise UserError(f"{label} {text}: no such file") from None
    except OSError as exc:  # a name too long, a symlink loop, no permission
        raise UserError(f"{label} {text}: {exc.strerror or exc}") from None
    except ValueError as exc:  # an embedded NUL
        raise UserError(f"{label} {text!r}: {exc}") from None
    if not stat.S_ISREG(mode):
        raise UserError(f"{label} {text} is {special_kind(text)}, not a regular file; refused")
    return Path(text)


def refuse_special(path: Path | str, label: str) -> None:
    """A one-line UserError when ``path`` exists but is a FIFO, a device or a socket (a folder or a missing path
    is left to the caller's own message)."""
    kind = special_kind(path)
    if kind is not None and kind != "a folder":
        raise UserError(f"{label} {path} is {kind}, not a regular file; refused")


def load_npy(path: Path | str, label: str) -> Any:
    """A user's ``.npy`` (never unpickled): a regular file whose header's shape and dtype account for exactly the
    bytes that follow, checked before the array is allocated; one-line errors."""
    import numpy as np
    from numpy.lib import format as npf

    p = regular_file(path, label)
    size = p.stat().st_size
    try:
        with open(p, "rb") as f:
            version = npf.read_magic(f)
            reader = npf.read_array_header_1_0 if version == (1, 0) else npf.read_array_header_2_0
            shape, fortran, dtype = reader(f)
            offset = f.tell()
    except Exception as exc:  # noqa: BLE001 - any malformed header is the same one-line error
        raise UserError(f"{label} {p} is not a readable .npy array ({type(exc).__name__})") from None
    if dtype.hasobject:
        raise UserError(f"{label} {p} holds Python objects (dtype {dtype}); only numeric arrays are read")
    count = 1
    for d in shape:
        count *= int(d)
    need = count * dtype.itemsize
    if need != size - offset:
        raise UserError(f"{label} {p}: its header declares shape {list(shape)} ({dtype}), {need} bytes, but the file "
                        f"holds {size - offset}; refused")
    try:
        return np.load(p, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"{label} {p} is not a readable .npy array ({type(exc).__name__})") from None


# ---------------------------------------------------------------------------------------------------------
# An export folder's files that its manifest does not list.

MODEL_SUFFIXES = (".onnx", ".ts", ".pt2", ".plan", ".engine", ".trt")


def unlisted_models(m: Any) -> List[str]:
    """Model files in the export folder that its manifest does not list: never verified, never published."""
    if m.folder is None:
        return []
    listed = set()
    for art in m.artifacts:
        for key in ("path", "onnx"):
            if isinstance(art.get(key), str):
                listed.add(Path(os.path.normpath(art[key])).as_posix())
    out = []
    for p in sorted(Path(m.folder).iterdir()):
        if p.suffix in MODEL_SUFFIXES and p.name not in listed and not p.name.startswith("."):
            out.append(p.name)
    return out


def unlisted_note(m: Any, what: str) -> Optional[str]:
    """The one line saying which files of the folder are left out (None when every model file is listed)."""
    extra = unlisted_models(m)
    if not extra:
        return None
    return (f"note: {', '.join(extra)} in {m.folder} {'is' if len(extra) == 1 else 'are'} not listed in its "
            f"manifest.json (never verified); not {what}")
