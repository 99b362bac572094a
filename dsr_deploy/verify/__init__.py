"""``dsr-deploy verify DIR``: every artifact of an export folder, in every available backend, against the
PyTorch model it was exported from.

The contract it checks: **given the same input, every backend's DSR neuron produces the same spikes as the
PyTorch reference, bit for bit**; end to end, an artifact agrees with PyTorch as far as the backend's own
convolution arithmetic allows (ONNX Runtime's MLAS and PyTorch's oneDNN pick kernels by CPU features, so their
float32 convolutions differ in the last bits from machine to machine, and a deep spiking network can turn such
a difference into a few differing spikes). So there are two parts:

1. **Teacher-forced neuron check** (the fidelity proof). The reference run records each neuron call's *input*
   and spikes; that exact input is fed to the artifact's own neuron implementation, run alone in the same
   backend with the same options (:meth:`dsr_deploy.runtime.base.Runner.neurons`): for ONNX the file's dsr
   node (or the standard ops a portable lowering inlined) cut out of the file and run in a session like the
   artifact's (function fallback or custom-op library); for TorchScript the scripted neuron module of the file;
   for a torch.export program its op call with the arguments the program holds. Parameters come from the
   artifact, never from the model. In float32 every spike must be equal; in float16 / bfloat16 at least 99.9 %.

2. **End to end**: the artifact file itself through :func:`dsr_deploy.runtime.load_runner`: max |artifact -
   reference| of the outputs; top-1 agreement per batch item; with ``--labels``, accuracy next to PyTorch's;
   per-layer spike agreement from a *probe* (the same graph with every neuron call's spikes and input exposed:
   made from the ONNX file itself, or re-exported by the same writer for TorchScript / pt2); and **where
   divergence starts**: the first layer whose spikes differ and how far that layer's *input* already differed
   (a difference in the input, with an exact neuron, comes from the backend's own arithmetic upstream).

3. **Each layer on its own** (:mod:`.layers`): a layer's input computed from the reference's spikes upstream may
   differ from the reference's only by its own arithmetic (float rounding; int8: a few steps of its recorded
   scale). More is a *defect*; spikes that differ end to end with no defect are *numerical divergence*.

Pass rule (:class:`VerifyRule`), per artifact x backend: the artifact loads and runs; the neuron check holds (1);
no defect (3); top-1 agreement >= ``min_top1`` (default 0.99) over the verify samples; with labels, accuracy at
most ``max_accuracy_drop`` (default 0.5) percentage points below PyTorch's; and, only when asked
(``min_agreement``), every layer's end-to-end spike agreement at least that. The folder passes when every run
that ran passes and at least one ran.

Structure: :func:`build_context` (manifest, reference, inputs) -> :func:`plan` (artifact x backend targets,
PyTorch's inference copy one of them) -> :func:`execute` (the runs) -> the report. Streaming folders:
:mod:`.stream`.

Inputs: without ``--input``, at least 16 generated samples (more for a small model), seeded (``seed``), shaped
by the artifact's recorded I/O (:func:`.inputs.input_encoding`: static images, direct-encoded images, DVS-style
event counts, or noise); the report records the encoding, seed and sample count.
"""


from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

from ..manifest import read_manifest
from .context import VerifyContext, VerifyOptions, build_context
from .execute import execute
from .inputs import input_encoding, load_inputs
from .plan import Target, plan
from .reference import Call, Reference, top1
from .report import LayerStat, Run
from .rule import (
    DEFAULT_MAX_ACCURACY_DROP,
    DEFAULT_MIN_TOP1,
    HALF_NEURON_AGREEMENT,
    INT8_MAX_ACCURACY_DROP,
    VerifyRule,
)
from .summary import report

__all__ = ["verify_folder", "verify", "VerifyRule", "VerifyOptions", "VerifyContext", "Target", "plan", "execute",
           "Reference", "Call", "top1", "load_inputs", "input_encoding", "Run", "LayerStat", "DEFAULT_MIN_TOP1",
           "DEFAULT_MAX_ACCURACY_DROP", "HALF_NEURON_AGREEMENT", "INT8_MAX_ACCURACY_DROP"]


def verify(folder: str | Path, options: Optional[VerifyOptions] = None, rule: Optional[VerifyRule] = None,
           progress=None) -> dict:
    """Verify every artifact of ``folder``; returns the report (``report["passed"]``). The folder is untrusted
    (:mod:`dsr_deploy.manifest`, :func:`dsr_deploy.model_spec.load_reference_model`); trust comes from
    ``options`` only."""
    folder = Path(folder)
    options = options or VerifyOptions()
    rule = (rule or VerifyRule()).validate()
    manifest = read_manifest(folder)
    if manifest.mode == "streaming":
        from .stream import verify_streaming

        return verify_streaming(folder, manifest, options, rule, progress)
    with tempfile.TemporaryDirectory(prefix="dsr-verify-") as tmpdir:
        ctx = build_context(folder, manifest, options, rule, progress=progress)
        ctx.tmp = Path(tmpdir)
        runs = execute(ctx, plan(ctx))
    return report(ctx, runs)


def verify_folder(folder: str | Path, *, input_file: Optional[str] = None, labels_file: Optional[str] = None,
                  min_top1: float = DEFAULT_MIN_TOP1, max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP,
                  min_agreement: Optional[float] = None, samples: Optional[int] = None, seed: int = 0,
                  layers: bool = True, encoding: Optional[str] = None, progress=None, model: Optional[str] = None,
                  checkpoint: Optional[str] = None, trust_pickle: bool = False, trust_model_code: bool = False,
                  allow_skipped: bool = False) -> dict:
    """:func:`verify` with keyword options (the command line's)."""
    options = VerifyOptions(input_file=input_file, labels_file=labels_file, samples=samples, seed=seed,
                            encoding=encoding, layers=layers, model=model, checkpoint=checkpoint,
                            trust_pickle=trust_pickle, trust_model_code=trust_model_code)
    rule = VerifyRule(min_top1=min_top1, max_accuracy_drop=max_accuracy_drop, min_agreement=min_agreement,
                      allow_skipped=allow_skipped)
    return verify(folder, options, rule, progress)
