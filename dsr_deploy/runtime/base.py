"""The runner interface, after Polygraphy: a loader and a runner per backend behind one small interface.

Comparison (verify) and timing (bench) are written against :class:`Runner` only, never per backend.

A runner is created cheaply, then ``load()``-ed (or used as a context manager); ``inputs()`` / ``outputs()``
describe the tensors; ``infer(feeds)`` takes a dict of numpy arrays or torch tensors by input name and returns a
dict of numpy arrays by output name; ``release()`` frees it. ``describe()`` says what actually runs (for
example whether ONNX Runtime uses the dsr custom-op library or the function fallback).

``infer(feeds, copy_outputs=False)`` may return torch tensors left where the backend produced them (on the
GPU for GPU runners), so timing code can exclude the device-to-host copy; feeds given as torch tensors already
on the runner's ``device`` are used without a copy where the backend allows it.

An artifact is a file path, an export folder (``DIR/manifest.json``: :func:`resolve_artifact` picks the file
for the backend) or, for the ``torch`` backend, an ``nn.Module`` / model spec.
"""

from __future__ import annotations

import abc
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np

from ..errors import UserError

Dim = Union[int, str, None]  # a fixed size, a symbolic name, or unknown


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: Optional[tuple[Dim, ...]]  # None: rank unknown (a TorchScript input other than the first)
    dtype: str  # numpy dtype name: "float32", "float16", ...

    def to_dict(self) -> dict:
        # A TorchScript input's rank may be unknown (shape None): say so instead of failing.
        return {"name": self.name, "shape": None if self.shape is None else list(self.shape), "dtype": self.dtype}


class Runner(abc.ABC):
    """One backend's loaded artifact."""

    backend: str = "?"
    device: str = "cpu"  # where infer() computes: "cpu" or "cuda[:N]"

    def __init__(self, artifact: Any, **options: Any):
        self.artifact = artifact
        self.options = options
        self.loaded = False
        self._load_lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------------------
    @abc.abstractmethod
    def load(self) -> "Runner":
        ...

    def ensure_loaded(self) -> "Runner":
        """Load once, also when several threads call ``infer`` on a fresh runner."""
        if not self.loaded:
            with self._load_lock:
                if not self.loaded:
                    self.load()
        return self

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
    def infer(self, feeds: Mapping[str, Any], copy_outputs: bool = True) -> dict[str, Any]:
        """Run once. Returns numpy arrays by output name, or (``copy_outputs=False``) possibly device tensors."""
        ...

    def synchronize(self) -> None:
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


def one_line(exc: BaseException) -> str:
    """The first meaningful line of an exception message (backends print pages)."""
    for line in str(exc).splitlines():
        line = line.strip()
        if line:
            return line[:300]
    return type(exc).__name__


# ---------------------------------------------------------------------------------------------------------
# Export folders: DIR/manifest.json lists the artifacts; a runner gets the file for its backend.

# The manifest is read and validated by dsr_deploy.manifest (one reader for every command).
from ..manifest import MANIFEST, Manifest, read_manifest  # noqa: E402,F401  (re-exported)

# Which manifest "format" values each backend runs (the exporter's names plus common spellings).
BACKEND_FORMATS: dict[str, tuple[str, ...]] = {
    "torchscript": ("torchscript", "ts"),
    "pt2": ("pt2", "torch.export", "exported_program", "aoti", "aotinductor"),
    "onnxruntime": ("onnx",),
    "tensorrt": ("tensorrt", "engine", "plan", "trt"),
}


def manifest_for(path: Union[str, Path]) -> Optional[Manifest]:
    """The validated manifest of the export folder ``path`` lives in, if any (names and shapes for the runner);
    an invalid one is a one-line error, never silently ignored."""
    from ..manifest import manifest_beside

    return manifest_beside(path)


def manifest_artifacts(manifest: Mapping) -> list[dict]:
    """The artifact records of a manifest (a plain dict is validated first)."""
    from ..manifest import parse_manifest

    return (manifest if isinstance(manifest, Manifest) else parse_manifest(dict(manifest))).artifacts


def resolve_artifact(folder: Union[str, Path], backend: str, manifest: Optional[Manifest] = None) -> Path:
    """The file of export folder ``folder`` that ``backend`` runs; a one-line error when there is none."""
    folder = Path(folder)
    manifest = manifest if manifest is not None else read_manifest(folder)
    formats = BACKEND_FORMATS.get(backend, (backend,))
    for art in manifest.artifacts:
        if art["format"].lower() in formats:
            path = manifest.path_of(art)
            if not path.exists():
                raise UserError(f"{folder}/{MANIFEST} lists {art['path']} but the file is missing")
            return path
    # Manifests without a matching "format": fall back on the files the backend accepts.
    b = _BACKENDS.get(backend)
    if b is not None:
        for art in manifest.artifacts:
            path = manifest.path_of(art)
            if path.exists() and b.accepts(path):
                return path
    listed = ", ".join(a["format"] for a in manifest.artifacts) or "none"
    raise UserError(f"export folder {folder} has no artifact for backend {backend!r} (it has: {listed})")


def manifest_io_names(manifest: Optional[Manifest]) -> tuple[Optional[list[str]], Optional[list[str]]]:
    """(input names, output names) written by the exporter, each None when absent."""
    return manifest.io_names() if manifest else (None, None)


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


def is_export_folder(artifact: Any) -> bool:
    return isinstance(artifact, (str, Path)) and Path(artifact).is_dir()


def backends_for(artifact: Any) -> list[str]:
    """The backends that can run ``artifact`` (for an export folder: each backend with a listed artifact)."""
    _ensure_registered()
    order = sorted(_BACKENDS.values(), key=lambda b: -b.priority)
    if is_export_folder(artifact):
        manifest = read_manifest(artifact)  # an invalid manifest is the error, not "no backend"
        out = []
        for b in order:
            try:
                resolve_artifact(artifact, b.name, manifest)
                out.append(b.name)
            except UserError:
                pass
        return out
    return [b.name for b in order if b.accepts(artifact)]


def load_runner(artifact: Any, backend: Optional[str] = None, **options: Any) -> Runner:
    """Create (not yet load) the runner for ``artifact`` with ``backend``, or the first backend accepting it.

    ``artifact`` may be an export folder: the manifest names the file for ``backend`` (default: the first
    listed artifact some backend runs).
    """
    _ensure_registered()
    if is_export_folder(artifact) and backend == "torch":
        # The eager model the folder was exported from. The folder is untrusted: its MODEL spec is built only
        # when it names the zoo (or with trust_model_code), and trust_pickle comes from the caller, never from
        # the manifest.
        from ..model_spec import check_manifest_spec

        manifest = read_manifest(artifact)
        spec = manifest.model_spec
        if not spec:
            raise UserError(f"{artifact}/{MANIFEST} names no model spec; the torch backend needs the model")
        check_manifest_spec(spec, manifest.where, trust_model_code=bool(options.pop("trust_model_code", False)),
                            hint="give the model itself (MODEL spec) instead of the folder")
        options.setdefault("checkpoint", manifest.checkpoint)
        if manifest.input_shape is not None:
            options.setdefault("input_shape", list(manifest.input_shape))
        return _BACKENDS["torch"].factory(spec, **options)
    if is_export_folder(artifact):
        if backend is None:
            found = backends_for(artifact)
            if not found:
                raise UserError(f"no backend can run any artifact of export folder {artifact}")
            backend = found[0]
        artifact = resolve_artifact(artifact, backend)
    elif isinstance(artifact, (str, Path)) and not _looks_like_spec(artifact) and not Path(artifact).exists():
        raise UserError(f"{artifact}: no such file")
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


def _looks_like_spec(artifact: Any) -> bool:
    # MODEL specs the torch runner takes ("zoo:NAME", "pkg.module:factory", "file.py:factory") are not files.
    from .torch_runner import _is_spec

    return isinstance(artifact, str) and _is_spec(artifact)


# ---------------------------------------------------------------------------------------------------------
# Recognising artifact files by content (suffixes lie: .pt is TorchScript or a checkpoint, .pt2 is
# torch.export or AOTInductor).

def zip_entries(path: Union[str, Path]) -> Optional[list[str]]:
    """The member names of the zip archive ``path``, or None when it is not a readable zip."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return None


def zip_kind(path: Union[str, Path]) -> Optional[str]:
    """"torchscript", "aoti", "exported_program" or None for the torch zip archive ``path``."""
    names = zip_entries(path)
    if not names:
        return None
    tails = {n.split("/", 1)[1] if "/" in n else n for n in names}
    if any("aotinductor" in n for n in names):
        return "aoti"
    if "archive_format" in tails or any(t.startswith("models/") or t == "serialized_exported_program.json"
                                        for t in tails):
        return "exported_program"
    if "data.pkl" in tails and any(t.startswith("code/") for t in tails):
        return "torchscript"
    return None


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


def collect_outputs(out: Any, names: Sequence[str], copy_outputs: bool, backend: str) -> dict[str, Any]:
    """Name a torch model's result (a tensor, a tuple/list or a dict of tensors) by ``names``."""
    import torch

    if isinstance(out, torch.Tensor):
        items = [out]
    elif isinstance(out, Mapping):
        items = list(out.values())
    elif isinstance(out, (tuple, list)):
        items = list(out)
    else:
        raise UserError(f"{backend}: the model returned a {type(out).__name__}, expected tensors")
    if len(names) != len(items):
        names = ["output"] + [f"output_{i}" for i in range(1, len(items))]
    conv = (lambda t: t.detach().cpu().numpy()) if copy_outputs else (lambda t: t)
    return {n: conv(t) for n, t in zip(names, items)}


class TorchCallableRunner(Runner):
    """What the torch-executed artifacts (TorchScript, pt2) share once loaded: a callable ``self.fn`` taking the
    inputs positionally, input specs, output names; ``infer`` with feed checks and one-line model errors."""

    def __init__(self, artifact: Any, **options: Any):
        super().__init__(artifact, **options)
        self.device = str(options.get("device") or "cpu")
        self.fn = None
        self._inputs: list[TensorSpec] = []
        self._output_names: list[str] = []

    def release(self) -> None:
        self.fn = None
        super().release()

    def inputs(self) -> list[TensorSpec]:
        self.ensure_loaded()
        return list(self._inputs)

    def outputs(self) -> list[TensorSpec]:
        self.ensure_loaded()
        return [TensorSpec(n, None, self._inputs[0].dtype if self._inputs else "float32")
                for n in self._output_names]

    def describe(self) -> dict:
        return {**super().describe(), "device": self.device}

    def infer(self, feeds: Mapping[str, Any], copy_outputs: bool = True) -> dict[str, Any]:
        import torch

        self.ensure_loaded()
        feeds = self.check_feeds(feeds)
        args = [to_torch(feeds[s.name], self.device) for s in self._inputs]
        with torch.inference_mode():
            try:
                out = self.fn(*args)
            except (KeyboardInterrupt, GeneratorExit):
                raise
            except BaseException as exc:  # shape errors: torch.jit.Error, guard failures (RuntimeError /
                # AssertionError); an eager model's forward is user code: SystemExit is its failure too
                shapes = ", ".join(f"{s.name}{list(a.shape)}" for s, a in zip(self._inputs, args))
                raise UserError(f"{self.backend}: the model failed on {shapes}: {one_line(exc)}") from None
        return collect_outputs(out, self._output_names, copy_outputs, self.backend)
