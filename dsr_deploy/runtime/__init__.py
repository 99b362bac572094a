"""Runners: one small interface over every backend (see :mod:`dsr_deploy.runtime.base`); the backends and
:func:`load_runner` live in :mod:`dsr_deploy.runtime.registry`."""

from ..manifest import read_manifest
from .base import BACKEND_FORMATS, Runner, RunnerOptions, TensorSpec, is_export_folder, manifest_for
from .registry import (
                       Backend,
                       available_backends,
                       backend_names,
                       backends_for,
                       get_backend,
                       load_runner,
                       looks_like_spec,
                       register_backend,
                       resolve_artifact,
                       run_targets,
)

__all__ = ["BACKEND_FORMATS", "Backend", "Runner", "RunnerOptions", "TensorSpec", "available_backends",
           "backend_names", "backends_for", "get_backend", "is_export_folder", "load_runner", "looks_like_spec",
           "manifest_for", "read_manifest", "register_backend", "resolve_artifact", "run_targets"]
