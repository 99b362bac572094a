"""Declarative checkers for untrusted JSON (the manifest's schema is written with them: :mod:`dsr_deploy.manifest`).

A checker is ``(value) -> value`` raising :class:`Invalid` with what was expected; :class:`Record` maps an
object's keys to checkers (unknown keys are kept: a newer exporter may add fields) and prefixes each error with
the key path (``.artifacts[0].path: ...``), so one line names the key and the problem.

Hand-written rather than pydantic: no dependency of dsr-deploy brings pydantic, the reader must stay torch- and
compiled-extension-light (it runs on every untrusted folder before anything else loads), and the rules that
matter here (paths inside the folder, element limits, schema versions) are custom validators in either case; this
module is under 200 lines.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Callable, Dict, List, Optional, Tuple

# An input shape whose element count exceeds this is refused (2**30 float32 elements = 4 GiB per input):
# verify and bench allocate inputs of the manifest's shape.
MAX_ELEMENTS = 1 << 30


class Invalid(ValueError):
    """A value that does not fit its key (the message says what was expected)."""


def show(v: Any) -> str:
    text = json.dumps(v) if isinstance(v, (str, int, float, bool, type(None))) else type(v).__name__
    return text if len(text) <= 40 else text[:37] + "..."


# ---------------------------------------------------------------------------------------------------------
# Checkers: (value) -> value, raising Invalid. Compose them to describe a key.

Check = Callable[[Any], Any]


def string(v: Any) -> str:
    if not isinstance(v, str):
        raise Invalid(f"expected a string, got {show(v)}")
    return v


def nonempty_string(v: Any) -> str:
    if not string(v).strip():
        raise Invalid("expected a non-empty string")
    return v


def boolean(v: Any) -> bool:
    if not isinstance(v, bool):
        raise Invalid(f"expected true or false, got {show(v)}")
    return v


def integer(lo: Optional[int] = None, hi: Optional[int] = None) -> Check:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise Invalid(f"expected an integer, got {show(v)}")
        if lo is not None and v < lo:
            raise Invalid(f"expected an integer >= {lo}, got {v}")
        if hi is not None and v > hi:
            raise Invalid(f"expected an integer <= {hi}, got {v}")
        return v
    return check


def number(v: Any) -> float:
    """A JSON number (not a boolean); NaN/inf allowed (a manifest records what the model held)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise Invalid(f"expected a number, got {show(v)}")
    return v


def finite(lo: float = 0.0, hi: float = math.inf) -> Check:
    """A finite JSON number in [lo, hi] (not a boolean)."""
    def check(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and lo <= v <= hi):
            raise Invalid(f"expected a finite number in [{lo:g}, {hi:g}], got {show(v)}")
        return v
    return check


def one_of(*choices: str) -> Check:
    def check(v: Any) -> str:
        if v not in choices:
            raise Invalid(f"expected one of {', '.join(choices)}, got {show(v)}")
        return v
    return check


def optional(inner: Check) -> Check:
    def check(v: Any) -> Any:
        return None if v is None else inner(v)
    return check


def settings_map(v: Any) -> dict:
    """Keyword settings of a factory (``--set`` and a checkpoint's): names to JSON scalars or lists of them."""
    if not isinstance(v, dict):
        raise Invalid(f"expected a mapping of names to values, got {show(v)}")
    for k, x in v.items():
        items = list(x) if isinstance(x, (list, tuple)) else [x]
        if not k.isidentifier() or not all(i is None or isinstance(i, (str, int, float, bool)) for i in items):
            raise Invalid(f"{k}: expected a name with a scalar or a list of scalars, got {show(x)}")
    return v


def list_of(inner: Check, *, min_len: int = 0) -> Check:
    def check(v: Any) -> list:
        if not isinstance(v, list):
            raise Invalid(f"expected a list, got {show(v)}")
        if len(v) < min_len:
            raise Invalid(f"expected at least {min_len} item(s), got {len(v)}")
        out = []
        for i, item in enumerate(v):
            try:
                out.append(inner(item))
            except Invalid as exc:
                raise Invalid(f"[{i}]{join_path(exc)}") from None
        return out
    return check


def dims(*, min_rank: int = 1) -> Check:
    """A shape: a list of positive integers whose product is at most :data:`MAX_ELEMENTS`."""
    each = list_of(integer(1), min_len=min_rank)

    def check(v: Any) -> list:
        shape = each(v)
        if math.prod(shape) > MAX_ELEMENTS:
            text = str(shape) if len(str(shape)) <= 60 else str(shape)[:57] + "..."
            raise Invalid(f"{text} has more than the {MAX_ELEMENTS} elements a dsr-deploy input may have")
        return shape
    return check


def relative_path(v: Any) -> str:
    """A path inside the export folder: relative, no ``..``, no backslash or NUL (symlinks are checked when the
    folder is known: :meth:`Manifest.path_of`)."""
    p = nonempty_string(v)
    if "\x00" in p or "\\" in p:
        raise Invalid(f"{show(p)} is not a plain relative path")
    pp = PurePosixPath(p)
    if pp.is_absolute() or p.startswith("~") or ".." in pp.parts:
        raise Invalid(f"{show(p)} leaves the export folder (absolute paths and '..' are refused)")
    if pp.parts in ((), (".",)):
        raise Invalid(f"{show(p)} names the folder itself, not a file")
    return p


def name_list(v: Any) -> List[str]:
    """Tensor names: strings, or ``{"name": str, ...}`` records."""
    def one(x: Any) -> Any:
        if isinstance(x, dict):
            if not isinstance(x.get("name"), str):
                raise Invalid(f".name: expected a string, got {show(x.get('name'))}")
            return x
        return nonempty_string(x)
    return list_of(one)(v)


def join_path(exc: Invalid) -> str:
    text = str(exc)
    return text if text.startswith(("[", ".")) else f": {text}"


@dataclass
class Record:
    """An object with known keys (each with a checker) and possibly ``required`` keys; other keys are kept."""

    name: str
    fields: Dict[str, Check] = field(default_factory=dict)
    required: Tuple[str, ...] = ()

    def add(self, key: str, check: Check, *, required: bool = False) -> None:
        """Declare a key (branches that add manifest fields call this)."""
        self.fields[key] = check
        if required and key not in self.required:
            self.required = self.required + (key,)

    def __call__(self, v: Any) -> dict:
        if not isinstance(v, dict):
            raise Invalid(f"expected an object, got {show(v)}")
        for key in self.required:
            if key not in v:
                raise Invalid(f".{key}: missing")
        out = dict(v)
        for key, check in self.fields.items():
            if key in v:
                try:
                    out[key] = check(v[key])
                except Invalid as exc:
                    raise Invalid(f".{key}{join_path(exc)}") from None
        return out



def string_map(v: Any) -> dict:
    """Names to strings (e.g. the layers an int8 export kept float32, and why)."""
    if not isinstance(v, dict) or not all(isinstance(k, str) and isinstance(x, str) for k, x in v.items()):
        raise Invalid(f"expected a mapping of names to strings, got {show(v)}")
    return v

