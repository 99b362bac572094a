"""Everything one verification reads, built once (:func:`build_context`): the folder's manifest, the reference
model and its runs on the inputs, the labels and the rule."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from ..errors import UserError
from .inputs import default_samples, input_encoding, load_inputs, read_labels
from .reference import Reference, top1
from .rule import VerifyRule


@dataclass
class VerifyOptions:
    """What the caller asks for (the command line's options); the folder can never grant trust."""

    input_file: Optional[str] = None
    labels_file: Optional[str] = None
    samples: Optional[int] = None  # generated samples; None: the default (>= 16) without --input, else 0
    seed: int = 0
    encoding: Optional[str] = None
    layers: bool = True
    model: Optional[str] = None
    checkpoint: Optional[str] = None
    trust_pickle: bool = False
    trust_model_code: bool = False


@dataclass
class VerifyContext:
    folder: Path
    manifest: Any  # dsr_deploy.manifest.Manifest
    options: VerifyOptions
    rule: VerifyRule
    loaded: Any  # model_spec.LoadedModel
    reference_model: Any  # the network with the artifact's I/O (IOAdapter)
    ref: Reference
    inputs: List[Tuple[str, np.ndarray]]
    encoding: str
    samples: int
    refs: list = field(default_factory=list)  # (name, x, output, calls) per input
    labels: Optional[np.ndarray] = None
    ref_correct: Optional[int] = None
    tmp: Optional[Path] = None
    progress: Optional[Callable[[str], None]] = None

    @property
    def io(self) -> dict:
        return self.manifest.io or {}

    @property
    def infos(self) -> Dict[int, Any]:
        return {n.index: n for n in self.ref.infos}

    def say(self, message: str) -> None:
        if self.progress:
            self.progress(message)


def check_options(o: VerifyOptions) -> None:
    if o.labels_file and not o.input_file:
        raise UserError("--labels needs --input: the labels are those of the --input batch")
    if o.encoding is not None and o.encoding not in ("direct", "noise", "events", "static"):
        raise UserError(f"unknown input encoding {o.encoding!r}; choose direct, noise, events or static")
    if o.samples is not None and o.samples < 0:
        raise UserError(f"--samples must be >= 0, got {o.samples}")
    if o.samples == 0 and not o.input_file:
        raise UserError("nothing to compare: --samples 0 and no --input")


def load_model(manifest, o: VerifyOptions):
    """The reference network the folder was exported from, rebuilt and checked against the recorded weights."""
    from ..model_spec import load_reference_model, weights_digest

    loaded = load_reference_model(manifest, model=o.model, checkpoint=o.checkpoint, trust_pickle=o.trust_pickle,
                                  trust_model_code=o.trust_model_code)
    digest = manifest.model.get("weights_sha256")
    if digest and weights_digest(loaded.model) != digest:
        raise UserError(f"{loaded.spec} rebuilt here does not hold the weights that were exported (a random "
                        "initialisation, or another checkpoint?); export with --checkpoint so verify can "
                        "rebuild the same network")
    return loaded


def build_context(folder: Path, manifest, o: VerifyOptions, rule: VerifyRule, reference_model=None,
                  progress=None) -> VerifyContext:
    """Load the reference, make the inputs, run the reference on them. ``reference_model``: the network to
    hook (default: the folder's model with its I/O adapter)."""
    from ..io_adapter import wrap_io

    check_options(o)
    manifest.require("input_shape", why="verify makes inputs of that shape")
    loaded = load_model(manifest, o)
    io = (manifest.io or {})
    model = reference_model(loaded.model) if reference_model else wrap_io(loaded.model, io)
    samples = o.samples if o.samples is not None else (0 if o.input_file else default_samples(manifest))
    encoding = o.encoding or input_encoding(manifest)
    static_batch = not manifest.dynamic_batch
    inputs = load_inputs(manifest, o.input_file, samples, encoding, o.seed, static_batch)
    ctx = VerifyContext(folder, manifest, o, rule, loaded, model, Reference(model), inputs, encoding, samples,
                        progress=progress)
    ctx.say(f"running the PyTorch reference on {len(inputs)} input batch(es)")
    ctx.refs = [(name, x, *ctx.ref.run(x)) for name, x in inputs]
    if o.labels_file:
        b = inputs[-1][1].shape[0 if io.get("input_layout") in ("static", "BT") else 1]
        ctx.labels = read_labels(o.labels_file, b)
        ctx.ref_correct = int((top1(ctx.refs[-1][2], io) == ctx.labels).sum())
    return ctx


def batch_size(x: np.ndarray, io: dict) -> int:
    return int(x.shape[0 if io.get("input_layout") in ("static", "BT") else 1])
