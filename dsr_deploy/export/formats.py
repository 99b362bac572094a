"""The export registry: the modes (``--mode``) and a writer per (mode, format name).

The built-in modes and writers register themselves when :mod:`dsr_deploy.export` is imported
(:mod:`.multistep`, :mod:`.streaming`; each imports its heavy writer modules only when it runs);
:func:`register_mode` and :func:`register_format` add more. This module imports no writer (the options check the
requested formats against it, and the writers import the options).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..errors import UserError

#: ``write(ctx: ExportContext, path) -> artifact record``.
Writer = Callable[[Any, Path], Dict[str, Any]]
#: A job of an export: (format name, file name, writer, progress message).
Job = Tuple[str, str, Writer, str]


@dataclass
class Format:
    name: str
    mode: str
    filename: str  # default file name inside the export folder
    writer: Writer
    description: str = ""


@dataclass(frozen=True)
class Mode:
    """An export mode: how it builds the export context (``prepare(model, shape, options, spec) ->
    ExportContext``, options validated), the jobs beyond one per requested format, and the fields it adds to the
    manifest."""

    name: str
    prepare: Callable[..., Any]
    extra_jobs: Optional[Callable[[Any], List[Job]]] = None
    manifest_fields: Optional[Callable[[Any], Dict[str, Any]]] = None


_FORMATS: dict[tuple[str, str], Format] = {}
_MODES: dict[str, Mode] = {}


def register_format(name: str, filename: str, writer: Writer, *, mode: str = "multistep",
                    description: str = "") -> None:
    _FORMATS[(mode, name)] = Format(name, mode, filename, writer, description)


def register_mode(name: str, prepare: Callable[..., Any], *, extra_jobs: Optional[Callable[[Any], List[Job]]] = None,
                  manifest_fields: Optional[Callable[[Any], Dict[str, Any]]] = None) -> None:
    """Add (or replace) export mode ``name``; its writers come with :func:`register_format`."""
    _MODES[name] = Mode(name, prepare, extra_jobs, manifest_fields)


def formats(mode: str = "multistep") -> dict[str, Format]:
    return {n: f for (m, n), f in _FORMATS.items() if m == mode}


def modes() -> list[str]:
    return sorted(_MODES)


def get_mode(name: str) -> Mode:
    if name not in _MODES:
        raise UserError(f"unknown --mode {name!r}; choose from {', '.join(sorted(_MODES))}")
    return _MODES[name]
