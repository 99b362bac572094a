"""Runners: one small interface over every backend (see :mod:`dsr_deploy.runtime.base`)."""

from .base import Runner, TensorSpec, available_backends, load_runner, register_backend

__all__ = ["Runner", "TensorSpec", "available_backends", "load_runner", "register_backend"]
