"""The runner interface, after Polygraphy: a loader and a runner per backend behind one small interface.

Comparison (verify) and timing (bench) are written against :class:`Runner` only, never per backend.

A runner is created cheaply, then ``load()``-ed (or used as a context manager); ``inputs()`` / ``outputs()``
describe the tensors; ``infer(feeds)`` takes a dict of numpy arrays or torch tensors by input name and returns a
dict of numpy arrays by output name; ``release()`` frees it. ``describe()`` says what actually runs (for
example whether ONNX Runtime uses the dsr custom-op library or the function fallback).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np

Dim = Union[int, str, None]  # a fixed size, a symbolic name, or unknown


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[Dim, ...]
    dtype: str  # numpy dtype name: "float32", "float16", ...

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


class Runner(abc.ABC):
    """One backend's loaded artifact."""

    backend: str = "?"

    def __init__(self, artifact: Any, **options: Any):
        self.artifact = artifact
        self.options = options
        self.loaded = False

    # -- lifecycle -------------------------------------------------------------------------------------
    @abc.abstractmethod
    def load(self) -> "Runner":
        ...

    def release(self) -> None:
        self.loaded = False

    def __enter__(self) -> "Runner":
        if not self.loaded:
            self.load()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    # -- description -----------------------------------------------------------------------------------
    @abc.abstractmethod
    def inputs(self) -> list[TensorSpec]:
        ...

    @abc.abstractmethod
    def outputs(self) -> list[TensorSpec]:
        ...

    def describe(self) -> dict:
        return {"backend": self.backend, "artifact": str(self.artifact)}

    # -- inference -------------------------------------------------------------------------------------
    @abc.abstractmethod
    def infer(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        ...

    def synchronize(self) -> None:
        """Wait for queued device work (GPU runners); the timing code calls it."""


@dataclass
class _Backend:
    name: str
    factory: Callable[..., Runner]
    accepts: Callable[[Any], bool]
    extra: Optional[str] = None  # the pip extra that brings its dependency
    probe: Optional[Callable[[], Optional[str]]] = None  # returns None when usable, else why not
    priority: int = 0
    aliases: Sequence[str] = field(default_factory=tuple)


_BACKENDS: dict[str, _Backend] = {}


def register_backend(name: str, factory: Callable[..., Runner], accepts: Callable[[Any], bool], *,
                     extra: Optional[str] = None, probe: Optional[Callable[[], Optional[str]]] = None,
                     priority: int = 0) -> None:
    _BACKENDS[name] = _Backend(name, factory, accepts, extra, probe, priority)


def _ensure_registered() -> None:
    # Backend modules register themselves on import; importing them is cheap (their heavy deps are lazy).
    from . import backends  # noqa: F401


def available_backends() -> dict[str, Optional[str]]:
    """Every registered backend and None when usable here, else the reason it is not."""
    _ensure_registered()
    return {name: (b.probe() if b.probe else None) for name, b in _BACKENDS.items()}


def load_runner(artifact: Any, backend: Optional[str] = None, **options: Any) -> Runner:
    """Create (not yet load) the runner for ``artifact`` with ``backend``, or the first backend accepting it."""
    from ..errors import UserError

    _ensure_registered()
    if backend is not None:
        if backend not in _BACKENDS:
            raise UserError(f"unknown backend {backend!r}; known: {', '.join(sorted(_BACKENDS))}")
        b = _BACKENDS[backend]
        if not b.accepts(artifact):
            raise UserError(f"backend {backend!r} cannot run {artifact}")
        return b.factory(artifact, **options)
    for b in sorted(_BACKENDS.values(), key=lambda b: -b.priority):
        if b.accepts(artifact):
            return b.factory(artifact, **options)
    raise UserError(f"no backend can run {artifact} (unknown artifact type)")
