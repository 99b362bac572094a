"""The runner interface, after Polygraphy: a loader and a runner per backend behind one small interface.

Comparison (verify) and timing (bench) are written against :class:`Runner` only, never per backend.

A runner is created cheaply, then ``load()``-ed (or used as a context manager); ``inputs()`` / ``outputs()``
describe the tensors; ``infer(feeds)`` takes a dict of numpy arrays or torch tensors by input name and returns a
dict of numpy arrays by output name; ``release()`` frees it. ``describe()`` says what actually runs (for
example whether ONNX Runtime uses the dsr custom-op library or the function fallback).

``infer(feeds, copy_outputs=False)`` may return torch tensors left where the backend produced them (on the
GPU for GPU runners), so timing code can exclude the device-to-host copy; feeds given as torch tensors already
on the runner's ``device`` are used without a copy where the backend allows it.

An artifact is a file path, an export folder (``DIR/manifest.json``: :func:`.registry.resolve_artifact` picks the
file for the backend) or, for the reference backend, an ``nn.Module`` / model spec. Each backend module describes
itself with a :class:`Backend` (its runner, the artifacts and manifest formats it takes, its variants); the
registry (:mod:`.registry`: ``load_runner``, ``get_backend``) collects them; this module knows none of them.
"""

from __future__ import annotations

import abc
import threading
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from ..errors import UserError
from ..manifest import Manifest

Dim = Union[int, str, None]  # a fixed size, a symbolic name, or unknown


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: Optional[tuple[Dim, ...]]  # None: rank unknown (a TorchScript input other than the first)
    dtype: str  # numpy dtype name: "float32", "float16", ...

    def to_dict(self) -> dict:
        # A TorchScript input's rank may be unknown (shape None): say so instead of failing.
        return {"name": self.name, "shape": None if self.shape is None else list(self.shape), "dtype": self.dtype}


@dataclass
class RunnerOptions:
    """The options every runner takes; each backend extends them with its own (one dataclass per backend).

    ``device``: where ``infer`` computes ("cpu", "cuda[:N]"; None: the backend's default); ``threads``: CPU
    intra-op threads (None: the library's choice; a GPU-only backend ignores it); ``trust_pickle``: the caller
    allows pickled content in the artifact (only backends that can meet pickles read it). An unknown key is a
    one-line :class:`UserError` (:meth:`parse`), so a typo never passes silently.
    """

    device: Optional[str] = None
    threads: Optional[int] = None
    trust_pickle: bool = False

    @classmethod
    def parse(cls, options: Mapping[str, Any], backend: str = "?") -> RunnerOptions:
        known = [f.name for f in fields(cls)]
        unknown = [k for k in options if k not in known]
        if unknown:
            raise UserError(f"{backend}: unknown option(s) {', '.join(map(repr, map(str, unknown)))}; "
                            f"known: {', '.join(known)}")
        return cls(**options)

    def as_dict(self) -> dict[str, Any]:
        """The options as keyword arguments (for a runner of the same backend and options)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


class Runner(abc.ABC):
    """One backend's loaded artifact.

    The base keeps the lifecycle, as Polygraphy's ``BaseRunner``: :meth:`load` calls the backend's :meth:`_load`
    and records the state; :meth:`infer` loads once, checks the feeds (unless ``check=False``) and calls the
    backend's :meth:`_infer`. Backends implement ``_load``, ``_infer``, ``inputs`` and ``outputs``.
    """

    backend: str = "?"
    device: str = "cpu"  # where infer() computes: "cpu" or "cuda[:N]"
    Options: type[RunnerOptions] = RunnerOptions  # the backend's options dataclass

    def __init__(self, artifact: Any, **options: Any):
        self.artifact = artifact
        self.options = self.Options.parse(options, self.backend)
        self.loaded = False
        self._load_lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------------------
    def load(self) -> Runner:
        """Load the artifact (again, when already loaded); returns the runner."""
        self._load()
        self.loaded = True
        return self

    @abc.abstractmethod
    def _load(self) -> None:
        """The backend's loading: open the artifact; a one-line :class:`UserError` when it cannot."""

    def ensure_loaded(self) -> Runner:
        """Load once, also when several threads call ``infer`` on a fresh runner."""
        if not self.loaded:
            with self._load_lock:
                if not self.loaded:
                    self.load()
        return self

    def release(self) -> None:
        self.loaded = False

    def __enter__(self) -> Runner:
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
    def infer(self, feeds: Mapping[str, Any], copy_outputs: bool = True, check: bool = True,
              early_exit: Any = None) -> dict[str, Any]:
        """Run once. Returns numpy arrays by output name, or (``copy_outputs=False``) possibly device tensors.

        ``check=False`` skips :meth:`check_feeds` (timing loops whose feeds were checked once already).
        ``early_exit`` (a rule such as ``"margin>=0.25"``, or ``"manifest"``: the calibrated one): each sample stops
        when its answer is settled; returns ``prediction`` and ``steps`` per sample (:mod:`.early_exit`)."""
        if early_exit is not None:
            from .early_exit import infer_early_exit

            return infer_early_exit(self, feeds, early_exit)
        self.ensure_loaded()
        feeds = self.check_feeds(feeds) if check else dict(feeds)
        return self._infer(feeds, copy_outputs)

    @abc.abstractmethod
    def _infer(self, feeds: dict[str, Any], copy_outputs: bool) -> dict[str, Any]:
        """The backend's run on checked ``feeds`` (the runner is loaded)."""

    def synchronize(self) -> None:  # noqa: B027  (a no-op for host backends, overridden by GPU ones)
        """Wait for queued device work (GPU runners); the timing code calls it."""

    def neurons(self) -> list:
        """The artifact's own neurons, each runnable alone in this backend (:mod:`.neurons`): what verify's
        teacher-forced check feeds with the PyTorch reference's neuron inputs."""
        raise UserError(f"{self.backend}: this backend cannot run the artifact's neurons on their own")

    # -- helpers for implementations -------------------------------------------------------------------
    def check_feeds(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        """Validate ``feeds`` against ``inputs()``: names, dtypes, ranks and fixed sizes; one-line errors."""
        return check_feeds(feeds, self.inputs(), self.backend)


# ---------------------------------------------------------------------------------------------------------
# Feed validation and conversion, shared by every runner.

def dtype_name(x: Any) -> str:
    """numpy dtype name of a numpy array or torch tensor ("float32", ...)."""
    if isinstance(x, np.ndarray):
        return x.dtype.name
    try:
        import torch

        if isinstance(x, torch.Tensor):
            return str(x.dtype).replace("torch.", "")
    except ImportError:  # pragma: no cover
        pass
    raise UserError(f"feeds must be numpy arrays or torch tensors, got {type(x).__name__}")


def check_feeds(feeds: Mapping[str, Any], specs: Sequence[TensorSpec], backend: str = "?") -> dict[str, Any]:
    if not isinstance(feeds, Mapping):
        raise UserError(f"{backend}: feeds must be a dict of input name -> array, got {type(feeds).__name__}")
    names = [s.name for s in specs]
    missing = [n for n in names if n not in feeds]
    extra = [n for n in feeds if n not in names]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing input(s) {', '.join(map(repr, missing))}")
        if extra:
            parts.append(f"unknown input(s) {', '.join(map(repr, map(str, extra)))}")
        raise UserError(f"{backend}: {'; '.join(parts)}; the model takes {', '.join(map(repr, names))}")
    out = {}
    for spec in specs:
        x = feeds[spec.name]
        dt = dtype_name(x)
        if spec.dtype and dt != spec.dtype:
            raise UserError(f"{backend}: input {spec.name!r} has dtype {dt}, expected {spec.dtype}")
        shape = tuple(x.shape)
        if spec.shape is not None and len(spec.shape) != len(shape):
            raise UserError(f"{backend}: input {spec.name!r} has shape {list(shape)} (rank {len(shape)}), "
                            f"expected rank {len(spec.shape)} {_fmt_shape(spec.shape)}")
        for i, (want, got) in enumerate(zip(spec.shape or (), shape)):
            if isinstance(want, int) and want >= 0 and want != got:
                raise UserError(f"{backend}: input {spec.name!r} has shape {list(shape)}, expected "
                                f"{_fmt_shape(spec.shape)} (dimension {i} must be {want})")
        out[spec.name] = x
    return out


def _fmt_shape(shape: Sequence[Dim]) -> str:
    return "[" + ", ".join("?" if d is None or (isinstance(d, int) and d < 0) else str(d) for d in shape) + "]"


def to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    import torch

    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def to_torch(x: Any, device: str = "cpu"):
    import torch

    if isinstance(x, torch.Tensor):
        return x.to(device) if str(x.device) != device else x
    return torch.from_numpy(np.ascontiguousarray(x)).to(device)


# ---------------------------------------------------------------------------------------------------------
# A backend's description: everything backend-specific lives in its module, in one of these.


@dataclass(frozen=True)
class Variant:
    """One way a backend runs an artifact (ONNX Runtime: the function fallback or the dsr custom-op library):
    the runner options that select it and the native library it needs (a :data:`dsr_deploy.plugins.LIBRARIES`
    key), if any."""

    label: str
    options: Mapping[str, Any]
    needs: Optional[str] = None


@dataclass(frozen=True)
class Backend:
    """One backend: its runner factory, which artifacts it accepts, the manifest ``format`` values it runs, its
    variants, and whether it is usable here."""

    name: str
    factory: Any  # Callable[..., Runner]: the runner class
    accepts: Any  # Callable[[artifact], bool]
    formats: tuple = ()  # manifest "format" values it runs (the exporter's names plus common spellings)
    extra: Optional[str] = None  # the pip extra that brings its dependency
    probe: Any = None  # Callable[[], str | None]: None when usable, else why not
    priority: int = 0  # orders the choice when several accept an artifact
    variants: tuple = ()  # Variant, ...: run each (verify, quickstart) when variants_apply(path)
    variants_apply: Any = None  # Callable[[path], bool]; None: always
    reference: bool = False  # the eager model the artifacts are compared with (not an artifact runner)

    def variants_for(self, path: Any) -> tuple:
        if not self.variants or (self.variants_apply is not None and not self.variants_apply(path)):
            return ()
        return self.variants


# ---------------------------------------------------------------------------------------------------------
# Export folders: DIR/manifest.json lists the artifacts; a runner gets the file for its backend.

# The manifest is read and validated by dsr_deploy.manifest (one reader for every command).

def manifest_for(path: Union[str, Path]) -> Optional[Manifest]:
    """The validated manifest of the export folder ``path`` lives in, if any (names and shapes for the runner);
    an invalid one is a one-line error, never silently ignored."""
    from ..manifest import manifest_beside

    return manifest_beside(path)


def manifest_io_names(manifest: Optional[Manifest]) -> tuple[Optional[list[str]], Optional[list[str]]]:
    """(input names, output names) written by the exporter, each None when absent."""
    return manifest.io_names() if manifest else (None, None)


def is_export_folder(artifact: Any) -> bool:
    return isinstance(artifact, (str, Path)) and Path(artifact).is_dir()


def is_file_with(artifact: Any, suffixes: Sequence[str]) -> bool:
    return isinstance(artifact, (str, Path)) and str(artifact).lower().endswith(tuple(suffixes)) \
        and not Path(artifact).is_dir()


def model_io_from_manifest(path: Union[str, Path], default_inputs: Sequence[str],
                           default_outputs: Sequence[str]) -> tuple[list[str], list[str], Optional[tuple]]:
    """Input names, output names and the ``[T, B, ...]`` input shape from the manifest beside ``path``."""
    manifest = manifest_for(path)
    ins, outs = manifest_io_names(manifest)
    shape = manifest.input_shape if manifest else None
    return list(ins or default_inputs), list(outs or default_outputs), shape
