"""The report of one verification (a JSON-able dict)."""

from __future__ import annotations

from typing import List

from .context import VerifyContext, batch_size
from .report import Run, unchecked_artifacts


def report(ctx: VerifyContext, runs: List[Run], **extra) -> dict:
    """The report of a verification: its inputs, rule, runs and verdict."""
    ok_runs = [r for r in runs if r.status != "skipped"]
    unchecked = unchecked_artifacts(runs)
    passed = bool(ok_runs) and all(r.passed for r in ok_runs) and (ctx.rule.allow_skipped or not unchecked)
    n_samples = sum(batch_size(x, ctx.io) for _n, x in ctx.inputs)
    return {
        "dir": str(ctx.folder),
        "model": ctx.loaded.spec,
        "checkpoint": ctx.loaded.checkpoint,
        "mode": ctx.manifest.mode,
        "rule": ctx.rule.describe(n_samples),
        "min_agreement": ctx.rule.min_agreement,
        "unchecked": unchecked,
        "allow_skipped": ctx.rule.allow_skipped,
        "inputs": [{"name": n, "shape": list(x.shape)} for n, x in ctx.inputs],
        "samples": n_samples,
        "generated": {"samples": ctx.samples, "seed": ctx.options.seed, "encoding": ctx.encoding},
        "encoding": ctx.encoding,
        "labels": ctx.options.labels_file,
        "pytorch_accuracy": (ctx.ref_correct / len(ctx.labels)) if ctx.labels is not None else None,
        "neurons": [{"index": n.index, "name": n.name, "op_type": n.op_type} for n in ctx.ref.infos],
        "runs": [r.to_dict() for r in runs],
        "verdicts": sorted({r.verdict() for r in runs if r.status == "ok"}),
        **extra,
        "passed": passed,
    }

