"""The backend registry: which runner class runs which artifact, and :func:`load_runner`.

Each backend module describes itself (``BACKEND``: a :class:`~.base.Backend` with its runner, the manifest formats
and artifacts it takes, its variants); the registry only collects them (a backend module knows nothing of the
registry, so no import runs back from a backend to this module), and :func:`register` /
:func:`register_backend` add more. Nothing here names a backend. Importing the backend modules is cheap: each
imports its heavy dependency (onnxruntime, tensorrt) only when a runner loads.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..manifest import MANIFEST, Manifest, read_manifest
from . import onnxruntime, pt2, tensorrt, torch_runner, torchscript
from .base import Backend, Runner, is_export_folder

_REGISTRY: dict[str, Backend] = {}


def register_backend(name: str, factory: Callable[..., Runner], accepts: Callable[[Any], bool], *,
                     extra: str | None = None, probe: Callable[[], str | None] | None = None,
                     priority: int = 0, formats: tuple = (), variants: tuple = (),
                     variants_apply: Callable[[Any], bool] | None = None, reference: bool = False) -> None:
    """Add (or replace) backend ``name`` (:class:`~.base.Backend`); ``priority`` orders the choice when several
    accept an artifact."""
    _REGISTRY[name] = Backend(name, factory, accepts, formats or (name,), extra, probe, priority, variants,
                              variants_apply, reference)


def register(backend: Backend) -> None:
    """Add (or replace) a backend described by its module."""
    _REGISTRY[backend.name] = backend


for _module in (onnxruntime, pt2, tensorrt, torch_runner, torchscript):  # the built-in backends describe themselves
    register(_module.BACKEND)


def backend_names() -> list[str]:
    """Every registered backend name, in registration order."""
    return list(_REGISTRY)


def get_backend(name: str) -> Backend:
    """The registered backend ``name``; a one-line error naming the known ones otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown backend {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def available_backends() -> dict[str, str | None]:
    """Every registered backend and None when usable here, else the reason it is not."""
    return {name: (b.probe() if b.probe else None) for name, b in _REGISTRY.items()}


def looks_like_spec(artifact: Any) -> bool:
    """A MODEL spec the torch runner takes ("zoo:NAME", "pkg.module:factory", "file.py:factory"), not a file."""
    return isinstance(artifact, str) and any(b.reference and b.accepts(artifact) for b in _REGISTRY.values())


def resolve_artifact(folder: str | Path, backend: str, manifest: Manifest | None = None) -> Path:
    """The file of export folder ``folder`` that ``backend`` runs; a one-line error when there is none."""
    folder = Path(folder)
    manifest = manifest if manifest is not None else read_manifest(folder)
    b = _REGISTRY.get(backend)
    formats = b.formats if b is not None else (backend,)
    for art in manifest.artifacts:
        if art["format"].lower() in formats:
            path = manifest.path_of(art)
            if not path.exists():
                raise UserError(f"{folder}/{MANIFEST} lists {art['path']} but the file is missing")
            return path
    # Manifests without a matching "format": fall back on the files the backend accepts.
    if b is not None:
        for art in manifest.artifacts:
            path = manifest.path_of(art)
            if path.exists() and b.accepts(path):
                return path
    listed = ", ".join(a["format"] for a in manifest.artifacts) or "none"
    raise UserError(f"export folder {folder} has no artifact for backend {backend!r} (it has: {listed})")


def backends_for(artifact: Any) -> list[str]:
    """The backends that can run ``artifact`` (for an export folder: each backend with a listed artifact)."""
    order = sorted(_REGISTRY.values(), key=lambda b: -b.priority)
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


def run_targets(path: str | Path) -> list[tuple[str, dict, str, str | None]]:
    """``(backend, runner options, variant label, None | why it cannot run here)`` for every artifact backend (not
    the reference) that accepts the artifact file ``path``, once per variant it has for that file (ONNX Runtime:
    with and without the custom-op library for a file with dsr nodes): what verify and the quickstart run an
    artifact on."""
    from .. import plugins

    out = []
    for name, why in available_backends().items():
        b = get_backend(name)
        if b.reference:
            continue
        try:
            ok = b.accepts(path)
        except Exception:  # noqa: BLE001 - a backend that cannot tell does not run it
            ok = False
        if not ok:
            continue
        variants = b.variants_for(path)
        for v in variants:
            missing = plugins.missing_reason(v.needs) if v.needs else None
            out.append((name, dict(v.options), v.label, why or missing))
        if not variants:
            out.append((name, {}, "", why))
    return out


def variant_options(backend: str, label: str) -> dict:
    """The runner options of ``backend``'s variant ``label`` (``{}`` for none)."""
    return next((dict(v.options) for v in get_backend(backend).variants if v.label == label), {})


def load_runner(artifact: Any, backend: str | None = None, **options: Any) -> Runner:
    """Create (not yet load) the runner for ``artifact`` with ``backend``, or the first backend accepting it.

    ``artifact`` may be an export folder: the manifest names the file for ``backend`` (default: the first
    listed artifact some backend runs).
    """
    if is_export_folder(artifact) and backend is not None and get_backend(backend).reference:
        # The eager model the folder was exported from. The folder is untrusted: its MODEL spec is built only
        # when it names the zoo (or with trust_model_code), and trust_pickle comes from the caller, never from
        # the manifest.
        from ..model_spec import check_manifest_spec

        manifest = read_manifest(artifact)
        spec = manifest.model_spec
        if not spec:
            raise UserError(f"{artifact}/{MANIFEST} names no model spec; the {backend} backend needs the model")
        check_manifest_spec(spec, manifest.where, trust_model_code=bool(options.pop("trust_model_code", False)),
                            hint="give the model itself (MODEL spec) instead of the folder")
        options.setdefault("checkpoint", manifest.checkpoint)
        if manifest.input_shape is not None:
            options.setdefault("input_shape", list(manifest.input_shape))
        return get_backend(backend).factory(spec, **options)
    if is_export_folder(artifact):
        if backend is None:
            found = backends_for(artifact)
            if not found:
                raise UserError(f"no backend can run any artifact of export folder {artifact}")
            backend = found[0]
        artifact = resolve_artifact(artifact, backend)
    elif isinstance(artifact, (str, Path)) and not looks_like_spec(artifact) and not Path(artifact).exists():
        raise UserError(f"{artifact}: no such file")
    if isinstance(artifact, (str, Path)):
        from ..input_files import refuse_special

        refuse_special(artifact, "artifact")
    if backend is not None:
        b = get_backend(backend)
        if not b.accepts(artifact):
            raise UserError(f"backend {backend!r} cannot run {artifact}")
        return b.factory(artifact, **options)
    for b in sorted(_REGISTRY.values(), key=lambda b: -b.priority):
        if b.accepts(artifact):
            return b.factory(artifact, **options)
    raise UserError(f"no backend can run {artifact} (unknown artifact type)")
