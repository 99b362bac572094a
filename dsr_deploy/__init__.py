"""dsr-deploy: deployment toolkit for spiking neural networks trained with DSR (Meng et al., CVPR 2022)."""

# The one place the version is written: pyproject.toml reads it from here (dynamic version); CHANGELOG.md says what
# each version holds.
__version__ = "0.1.0"

from . import ops as _ops  # noqa: E402
from .neuron import DSRIFNode, DSRLIFNode  # noqa: E402

# The native kernels of torch.ops.dsr.* (libdsr_torch_ops.so) when `dsr-deploy plugins build` made them for this
# torch and these sources: registered now (one dlopen), so a direct torch.ops.dsr call or a pt2 program holding the
# op runs them from its first call. DSR_DEPLOY_NATIVE=0 opts out; a missing or unloadable library leaves the Python
# reference in place (`dsr-deploy plugins status` says why).
_ops.load_native()

__all__ = ["DSRIFNode", "DSRLIFNode", "__version__"]
