"""Imports every backend module so each registers itself with :mod:`dsr_deploy.runtime.base`.

Importing a backend module is cheap: each imports its heavy dependency (onnxruntime, tensorrt) only in ``load()``.
"""

from . import onnxruntime, pt2, tensorrt, torch_runner, torchscript  # noqa: F401
