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

Pass rule, per artifact x backend: the artifact loads and runs; the neuron check holds (1); top-1 agreement
>= ``min_top1`` (default 0.99) over the verify inputs; with labels, accuracy at most ``max_accuracy_drop``
(default 0.5) percentage points below PyTorch's; and, only when asked (``min_agreement``), every layer's
end-to-end spike agreement at least that. The folder passes when every run that ran passes and at least one ran.

Inputs: ``n_random`` generated inputs of the export's shape (for a zoo model fed static images, *direct-encoded*:
one N(0, 1) image per batch item repeated over T, as the network sees in use; otherwise N(0, 1) at every step;
the report names which), plus ``--input X.npy``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import List, Optional

from ..errors import UserError
from ..manifest import read_manifest
from .checks import run_end_to_end, run_neuron_check
from .inputs import input_encoding, load_inputs, read_labels
from .probes import backends_for, make_probe, probe_output_names
from .reference import Call, Reference, top1
from .report import (
    DEFAULT_MAX_ACCURACY_DROP,
    DEFAULT_MIN_TOP1,
    HALF_NEURON_AGREEMENT,
    INT8_MAX_ACCURACY_DROP,
    INT8_MIN_TOP1,
    LayerStat,
    Run,
    judge,
    unchecked_artifacts,
)

__all__ = ["verify_folder", "Reference", "Call", "top1", "load_inputs", "input_encoding", "Run", "LayerStat",
           "DEFAULT_MIN_TOP1", "DEFAULT_MAX_ACCURACY_DROP", "HALF_NEURON_AGREEMENT"]


def verify_folder(folder: str | Path, *, input_file: Optional[str] = None, labels_file: Optional[str] = None,
                  min_top1: float = DEFAULT_MIN_TOP1, max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP,
                  min_agreement: Optional[float] = None, n_random: int = 1, layers: bool = True,
                  encoding: Optional[str] = None, progress=None, model: Optional[str] = None,
                  checkpoint: Optional[str] = None, trust_pickle: bool = False, trust_model_code: bool = False,
                  allow_skipped: bool = False) -> dict:
    """Verify every artifact of ``folder``; returns the report (``report["passed"]``).

    The folder is untrusted (:mod:`dsr_deploy.manifest`, :func:`dsr_deploy.model_spec.load_reference_model`):
    ``model`` / ``checkpoint`` given by the user replace the manifest's; ``trust_pickle`` and
    ``trust_model_code`` come from the caller only. An artifact no backend ran fails the verification unless
    ``allow_skipped``.
    """
    from ..model_spec import load_reference_model
    from ..runtime import load_runner

    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest.mode != "multistep":
        raise UserError(f"verify handles multi-step exports; {folder} holds mode {manifest.mode!r}")
    for name, v, lo, hi in (("--min-top1", min_top1, 0.0, 1.0), ("--max-accuracy-drop", max_accuracy_drop, 0.0, 100.0)):
        if not lo <= v <= hi:
            raise UserError(f"{name} must be within [{lo:g}, {hi:g}], got {v}")
    if min_agreement is not None and not 0.0 <= min_agreement <= 1.0:
        raise UserError(f"--min-agreement must be within [0, 1], got {min_agreement}")
    if labels_file and not input_file:
        raise UserError("--labels needs --input: the labels are those of the --input batch")
    if encoding not in (None, "direct", "noise"):
        raise UserError(f"unknown input encoding {encoding!r}; choose direct or noise")
    manifest.require("input_shape", why="verify makes inputs of that shape")
    io = manifest.get("io") or {}
    loaded = load_reference_model(manifest, model=model, checkpoint=checkpoint, trust_pickle=trust_pickle,
                                  trust_model_code=trust_model_code)
    digest = (manifest.get("model") or {}).get("weights_sha256")
    if digest:
        from ..model_spec import weights_digest

        if weights_digest(loaded.model) != digest:
            raise UserError(f"{loaded.spec} rebuilt here does not hold the weights that were exported (a random "
                            "initialisation, or another checkpoint?); export with --checkpoint so verify can "
                            "rebuild the same network")
    from ..io_adapter import wrap_io

    # With export options (--layout / --encode / --readout) the artifact is the network behind an IOAdapter: so is
    # the reference (the model's own I/O, `source: model`, needs nothing).
    reference_model = wrap_io(loaded.model, io)
    ref = Reference(reference_model)
    infos = {n.index: n for n in ref.infos}
    inputs = load_inputs(manifest, input_file, n_random, encoding)
    refs = [(name, x, *ref.run(x)) for name, x in inputs]
    reference_neurons = ref.neurons()
    labels = read_labels(labels_file, inputs[-1][1].shape[0 if io.get("input_layout") in ("static", "BT") else 1]) \
        if labels_file else None
    ref_correct = int((top1(refs[-1][2], io) == labels).sum()) if labels is not None else None

    runs: List[Run] = []
    with tempfile.TemporaryDirectory(prefix="dsr-verify-") as tmpdir:
        tmp = Path(tmpdir)
        arts = [{"format": "pytorch", "path": None}] + list(manifest["artifacts"])
        for art in arts:
            fmt = str(art.get("format"))
            if fmt == "pytorch":
                from ..convert import inference_copy
                from ..export.pt2_writer import ProbedOp

                targets = [("torch", {"output_names": probe_output_names(len(refs[0][3]))},
                            "inference copy (dsr ops)", None)]
                path, probe_path, probe_idx, note = None, None, None, "the inference copy's own neuron outputs"
                module = ProbedOp(inference_copy(reference_model, "op"))
            else:
                module = None
                path = manifest.path_of(art)
                if not path.exists():
                    runs.append(Run(art["path"], fmt, "-", status="error", reason="listed in the manifest but missing",
                                    passed=False))
                    continue
                targets = backends_for(path)
                if not targets:
                    runs.append(Run(art["path"], fmt, "-", status="skipped", reason="no backend runs this format"))
                    continue
                probe_path = probe_idx = None
                note = ""
                if layers and any(why is None for *_, why in targets):
                    if progress:
                        progress(f"probing {art['path']} per layer")
                    try:
                        probe_path, probe_idx, note = make_probe(fmt, path, reference_model, manifest, tmp)
                    except Exception as exc:
                        note = f"no per-layer probe: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            for backend, opts, variant, why in targets:
                label = art["path"] if path is not None else "(PyTorch)"
                precision = "float32" if fmt == "pytorch" else str(art.get("precision") or manifest.get("dtype")
                                                                    or "float32")
                run = Run(label, fmt, backend, variant, precision=precision)
                runs.append(run)
                if why is None and precision == "bfloat16":
                    why = "bfloat16 inputs cannot be fed from numpy here (and ONNX Runtime's CPU provider has no " \
                          "bfloat16 convolutions)"
                if why is not None:
                    run.status, run.reason = "skipped", why
                    continue
                if progress:
                    progress(f"running {label} on {backend} {variant}".rstrip())
                opts = {**opts, "trust_pickle": trust_pickle}
                try:
                    runner = load_runner(module if module is not None else path, backend, **opts)
                    try:
                        run_end_to_end(run, art, manifest, io, runner, refs, infos, labels, backend, opts,
                                        probe_path, probe_idx, module is not None, load_runner)
                        run.layers_note = note
                        run_neuron_check(run, runner, refs, infos, reference_neurons)
                    finally:
                        runner.release()
                except UserError as exc:
                    run.status, run.reason, run.passed = "error", str(exc), False
                    continue
                except Exception as exc:  # a runtime that crashes on the artifact fails the artifact
                    run.status, run.passed = "error", False
                    run.reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                    continue
                judge(run, min_top1, max_accuracy_drop, min_agreement, ref_correct)
    ok_runs = [r for r in runs if r.status != "skipped"]
    unchecked = unchecked_artifacts(runs)
    passed = bool(ok_runs) and all(r.passed for r in ok_runs) and (allow_skipped or not unchecked)
    return {
        "dir": str(folder),
        "model": loaded.spec,
        "checkpoint": loaded.checkpoint,
        "rule": {"min_top1": min_top1, "max_accuracy_drop": max_accuracy_drop, "min_agreement": min_agreement,
                 "neuron": "float32 and int8: every spike equal given the reference's input; float16/bfloat16: >= "
                           f"{HALF_NEURON_AGREEMENT:.1%}",
                 "int8": f"accuracy at most {INT8_MAX_ACCURACY_DROP:g} points below PyTorch's with labels, else "
                         f"top-1 agreement >= {INT8_MIN_TOP1:.0%}"},
        "min_agreement": min_agreement,
        "unchecked": unchecked,
        "allow_skipped": allow_skipped,
        "inputs": [{"name": n, "shape": list(x.shape)} for n, x in inputs],
        "encoding": input_encoding(manifest) if encoding is None else encoding,
        "labels": labels_file,
        "pytorch_accuracy": (ref_correct / len(labels)) if labels is not None else None,
        "neurons": [{"index": n.index, "name": n.name, "op_type": n.op_type} for n in ref.infos],
        "runs": [r.to_dict() for r in runs],
        "passed": passed,
    }


