"""dsr-deploy: deployment toolkit for spiking neural networks trained with DSR (Meng et al., CVPR 2022)."""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("dsr-deploy")
except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.1.0"

from .neuron import DSRIFNode, DSRLIFNode  # noqa: E402

__all__ = ["DSRIFNode", "DSRLIFNode", "__version__"]
