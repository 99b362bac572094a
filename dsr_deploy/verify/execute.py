"""Run the planned targets (:func:`execute`): each artifact's probe made once, each target loaded, compared end
to end, its neurons teacher-forced, its layers checked, and judged by the rule."""

from __future__ import annotations

from typing import Dict, List, Optional

from ..errors import UserError
from .checks import Probe, run_end_to_end, run_neuron_check
from .layers import check_layers
from .plan import Target
from .probes import make_probe
from .report import Run


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _probe_for(ctx, target: Target, probes: Dict[str, Probe]) -> Optional[Probe]:
    """The artifact's probe, made once for all its backends (None when per-layer figures are off)."""
    if not ctx.options.layers or not target.wants_probe:
        return None
    if target.label not in probes:
        ctx.say(f"probing {target.label} per layer")
        try:
            path, layer_of, note = make_probe(target.format, target.path, ctx.reference_model, ctx.manifest, ctx.tmp)
            probes[target.label] = Probe(path, layer_of, note)
        except Exception as exc:  # the end-to-end figures still come; the report says why there are no layers
            probes[target.label] = Probe(note=f"no per-layer probe: {_first_line(exc)}")
    return probes[target.label]


def run_target(ctx, target: Target, probe: Optional[Probe]) -> Run:
    """One target, start to verdict."""
    from ..runtime import load_runner

    run = Run(target.label, target.format, target.backend, target.variant, precision=target.precision)
    if target.error or target.skip:
        run.status, run.reason = ("error", target.error) if target.error else ("skipped", target.skip)
        run.passed = False if target.error else None
        return run
    ctx.say(f"running {target.label} on {target.backend} {target.variant}".rstrip())
    opts = {**target.options, "trust_pickle": ctx.options.trust_pickle}
    try:
        runner = load_runner(target.module if target.module is not None else target.path, target.backend, **opts)
        try:
            run_end_to_end(ctx, target, run, runner, probe)
            run.layers_note = (probe.note if probe is not None else "") or (
                "the inference copy's own neuron outputs" if target.module is not None else "")
            run_neuron_check(run, runner, ctx.refs, ctx.infos, ctx.ref.neurons())
            check_layers(ctx, target, run)
        finally:
            runner.release()
    except UserError as exc:
        run.status, run.reason, run.passed = "error", str(exc), False
        return run
    except Exception as exc:  # a runtime that crashes on the artifact fails the artifact
        run.status, run.passed = "error", False
        run.reason = f"{type(exc).__name__}: {_first_line(exc)}"
        return run
    ctx.rule.judge(run, ctx.ref_correct)
    return run


def execute(ctx, targets: List[Target]) -> List[Run]:
    """Every target's run, in plan order."""
    probes: Dict[str, Probe] = {}
    return [run_target(ctx, t, _probe_for(ctx, t, probes)) for t in targets]
