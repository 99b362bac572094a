"""Runners: one small interface over every backend (see :mod:`dsr_deploy.runtime.base`); each backend module
describes itself (``BACKEND``), and :func:`load_runner` and the registry live in :mod:`dsr_deploy.runtime.registry`."""

from ..manifest import read_manifest
from .base import Backend, Runner, RunnerOptions, TensorSpec, Variant, is_export_folder, manifest_for
from .registry import (
    available_backends,
    backend_names,
    backends_for,
    get_backend,
    load_runner,
    looks_like_spec,
    register,
    register_backend,
    resolve_artifact,
    run_targets,
    variant_options,
)

__all__ = ["Backend", "Runner", "RunnerOptions", "TensorSpec", "Variant", "available_backends", "backend_names",
           "backends_for", "get_backend", "is_export_folder", "load_runner", "looks_like_spec", "manifest_for",
           "read_manifest", "register", "register_backend", "resolve_artifact", "run_targets", "variant_options"]
