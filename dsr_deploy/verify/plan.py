"""What verify runs: one :class:`Target` per artifact x backend, PyTorch's inference copy included as a real
target (its own module, its own neurons), planned before anything runs (:func:`plan`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from .probes import backends_for, probe_output_names

PYTORCH = "(PyTorch)"


@dataclass
class Target:
    """One artifact in one backend. ``module``: an in-memory model (the PyTorch target) instead of a file;
    ``skip``: why it cannot run here (the run is reported, not made)."""

    label: str
    format: str
    backend: str
    variant: str = ""
    precision: str = "float32"
    path: Optional[Path] = None
    module: Any = None
    options: Dict[str, Any] = field(default_factory=dict)
    artifact: Dict[str, Any] = field(default_factory=dict)
    skip: Optional[str] = None
    error: Optional[str] = None  # the artifact is broken before anything runs (missing file)

    @property
    def wants_probe(self) -> bool:
        return self.module is None and self.skip is None and self.error is None


def pytorch_target(ctx) -> Target:
    """The inference copy of the reference (dsr-op modules) run by the ``torch`` runner, its probe built in."""
    from ..convert import inference_copy
    from ..export.pt2_writer import ProbedOp

    n_calls = len(ctx.refs[0][3]) if ctx.refs else 0
    return Target(PYTORCH, "pytorch", "torch", "inference copy (dsr ops)",
                  module=ProbedOp(inference_copy(ctx.reference_model, "op")),
                  options={"output_names": probe_output_names(n_calls)})


def artifact_targets(ctx, art: dict) -> List[Target]:
    fmt = str(art.get("format"))
    path = ctx.manifest.path_of(art)
    label = str(art.get("path"))
    precision = str(art.get("precision") or ctx.manifest.dtype)
    if not path.exists():
        return [Target(label, fmt, "-", path=path, artifact=art, error="listed in the manifest but missing")]
    found = backends_for(path)
    if not found:
        return [Target(label, fmt, "-", path=path, artifact=art, skip="no backend runs this format")]
    targets = []
    for backend, opts, variant, why in found:
        if why is None and precision == "bfloat16":
            why = ("bfloat16 inputs cannot be fed from numpy here (and ONNX Runtime's CPU provider has no bfloat16 "
                   "convolutions)")
        targets.append(Target(label, fmt, backend, variant, precision, path, options=dict(opts), artifact=art,
                              skip=why))
    return targets


def plan(ctx) -> List[Target]:
    """Every target of the folder: PyTorch's inference copy first, then each listed artifact x backend."""
    targets = [pytorch_target(ctx)]
    for art in ctx.manifest.artifacts:
        targets += artifact_targets(ctx, art)
    return targets
