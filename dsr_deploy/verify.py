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

import copy
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from .convert import find_neuron_modules, find_neurons
from .errors import UserError
from .export.base import CURRENT_PREFIX, INPUT_NAME, OUTPUT_NAME, PROBE_PREFIX, ExportContext
from .manifest import read_manifest
from .numerics import count_equal, max_abs_diff

DEFAULT_MIN_TOP1 = 0.99
DEFAULT_MAX_ACCURACY_DROP = 0.5  # percentage points
HALF_NEURON_AGREEMENT = 0.999  # float16 / bfloat16 neurons: spikes equal given the same input
# int8 (quantised weights and currents; neurons and spikes exact): accuracy-based. With labels, accuracy at most
# this many points below PyTorch's (or --max-accuracy-drop when larger) and top-1 agreement only reported;
# without labels, top-1 agreement >= INT8_MIN_TOP1 (or --min-top1 when lower). docs/fidelity.md.
INT8_MAX_ACCURACY_DROP = 1.0
INT8_MIN_TOP1 = 0.90
_HALF = ("float16", "bfloat16")


@dataclass
class LayerStat:
    """One neuron layer of one run: the teacher-forced check and the end-to-end agreement."""

    index: int
    name: str
    op_type: str
    equal: int = 0  # end to end (probe): spikes equal to the reference's
    total: int = 0
    neuron_equal: int = 0  # teacher-forced: spikes equal given the reference's input
    neuron_total: int = 0
    input_max_abs_diff: Optional[float] = None  # end to end: the layer's input vs the reference's
    input_max_rel_diff: Optional[float] = None  # ... relative to the reference input's largest magnitude
    input_differing: int = 0

    @property
    def agreement(self) -> Optional[float]:
        return self.equal / self.total if self.total else None

    @property
    def neuron_agreement(self) -> Optional[float]:
        return self.neuron_equal / self.neuron_total if self.neuron_total else None

    def to_dict(self) -> dict:
        return {"index": self.index, "name": self.name, "op_type": self.op_type, "agreement": self.agreement,
                "spikes_equal": self.equal, "spikes_total": self.total,
                "neuron_agreement": self.neuron_agreement, "neuron_spikes_equal": self.neuron_equal,
                "neuron_spikes_total": self.neuron_total, "input_max_abs_diff": self.input_max_abs_diff,
                "input_max_rel_diff": self.input_max_rel_diff, "input_differing": self.input_differing}


@dataclass
class Run:
    artifact: str
    format: str
    backend: str
    variant: str = ""
    status: str = "ok"  # ok | skipped | error
    reason: str = ""
    precision: str = "float32"
    max_abs_diff: float = 0.0
    top1_equal: int = 0
    top1_total: int = 0
    correct: Optional[int] = None  # with labels
    labelled: Optional[int] = None
    layers: List[LayerStat] = field(default_factory=list)
    layers_note: str = ""
    neuron_note: str = ""  # why the neuron check did not run, if it did not
    neuron_checked: bool = False
    failures: List[str] = field(default_factory=list)
    passed: Optional[bool] = None

    @property
    def top1_agreement(self) -> Optional[float]:
        return self.top1_equal / self.top1_total if self.top1_total else None

    @property
    def neuron_exact(self) -> Optional[bool]:
        if not self.neuron_checked:
            return None
        return all(l.neuron_equal == l.neuron_total for l in self.layers if l.neuron_total)

    def divergence(self) -> Optional[dict]:
        """The first layer (in layer order) whose end-to-end spikes differ, with its input's difference."""
        for l in self.layers:
            if l.total and l.equal != l.total:
                return {"layer": l.index, "name": l.name, "spikes_differing": l.total - l.equal,
                        "input_max_abs_diff": l.input_max_abs_diff, "input_max_rel_diff": l.input_max_rel_diff,
                        "input_differing": l.input_differing,
                        "neuron_exact": (l.neuron_equal == l.neuron_total) if l.neuron_total else None}
        return None

    def input_difference(self) -> Optional[dict]:
        """The first layer whose *input* differs end to end from the reference's (the backend's own arithmetic
        upstream of it), whether or not any spike flipped."""
        for l in self.layers:
            if l.input_differing:
                return {"layer": l.index, "name": l.name, "input_differing": l.input_differing,
                        "input_max_abs_diff": l.input_max_abs_diff, "input_max_rel_diff": l.input_max_rel_diff}
        return None

    def to_dict(self) -> dict:
        ok = self.status == "ok"
        return {
            "artifact": self.artifact, "format": self.format, "backend": self.backend, "variant": self.variant,
            "status": self.status, "reason": self.reason, "precision": self.precision,
            "max_abs_diff": self.max_abs_diff if ok else None,
            "top1_agreement": self.top1_agreement if ok else None,
            "accuracy": (self.correct / self.labelled) if ok and self.labelled else None,
            "neuron_exact": self.neuron_exact if ok else None,
            "neuron_agreement": _min_or_none(l.neuron_agreement for l in self.layers) if ok else None,
            "neuron_note": self.neuron_note,
            "layers": [l.to_dict() for l in self.layers],
            "min_layer_agreement": _min_or_none(l.agreement for l in self.layers),
            "divergence": self.divergence() if ok else None,
            "first_input_difference": self.input_difference() if ok else None,
            "layers_note": self.layers_note,
            "failures": list(self.failures),
            "passed": self.passed,
        }


def _min_or_none(values) -> Optional[float]:
    return min((v for v in values if v is not None), default=None)


# ---------------------------------------------------------------------------------------------------------
# Reference.


@dataclass
class Call:
    """One neuron call of the reference run: its layer, its input and its spikes (as the training neuron
    took and returned them)."""

    layer: int
    x: np.ndarray
    y: np.ndarray


class Reference:
    """The user's network with hooks on its neurons: output and every neuron call's input and spikes."""

    def __init__(self, model: torch.nn.Module):
        self.model = copy.deepcopy(model).eval()
        self.infos = find_neurons(self.model)
        self._calls: List[Call] = []
        for info, (name, m) in zip(self.infos, find_neuron_modules(self.model).items()):
            m.register_forward_hook(self._hook(info.index))

    def _hook(self, index: int):
        def hook(_module, inputs, output):
            x = inputs[0].detach().cpu().numpy().copy()
            self._calls.append(Call(index, x, output.detach().cpu().numpy().copy()))
        return hook

    def run(self, x: np.ndarray) -> Tuple[np.ndarray, List[Call]]:
        self._calls = []
        for m in self.model.modules():  # SpikingJelly memory modules: no state carried between inputs
            if hasattr(m, "reset") and callable(m.reset) and type(m).__module__.startswith("spikingjelly"):
                m.reset()
        try:
            with torch.no_grad():
                out = self.model(torch.from_numpy(x))
        except (KeyboardInterrupt, GeneratorExit):
            raise
        except BaseException as exc:  # the user's forward: SystemExit is a failure too (dsr_deploy.guard)
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"the PyTorch model rejects input {list(x.shape)}: {msg}") from exc
        if not isinstance(out, torch.Tensor):
            raise UserError(f"the PyTorch model returned {type(out).__name__}, expected one tensor")
        return out.detach().cpu().numpy(), list(self._calls)


def top1(output: np.ndarray, io: Optional[dict] = None) -> np.ndarray:
    """Per batch item, the predicted class: for a spike-train output ``[T, B, ...]`` (``[B, T, ...]`` with the
    BT layout) the arg-max of the output averaged over T; for a logits output ``[B, ...]`` its arg-max. The
    features after B are flattened. An output with one value per item always agrees; the other figures judge it."""
    io = io or {}
    o = output.astype(np.float64)
    if io.get("output") == "logits":
        if o.ndim < 1:
            raise UserError(f"the output has shape {list(o.shape)}; expected logits [B, ...]")
    else:
        if o.ndim < 2:
            raise UserError(f"the output has shape {list(o.shape)}; expected [T, B, ...]")
        o = o.mean(axis=1 if io.get("input_layout") == "BT" else 0)
    return o.reshape(o.shape[0], -1).argmax(axis=1)


# ---------------------------------------------------------------------------------------------------------
# Probes (per-layer spikes and inputs, end to end).


def _onnx_probe(path: Path, tmp: Path) -> Tuple[Path, List[Optional[int]]]:
    import onnx

    from .export.onnx_writer import add_probe_outputs, probe_targets

    model = onnx.load(str(path))
    targets = probe_targets(model)
    probe = add_probe_outputs(model)
    out = tmp / f"probe_{path.stem}.onnx"
    onnx.save(probe, str(out))
    return out, [idx for idx, _ in targets]


def _torch_ctx(model, manifest: dict) -> ExportContext:
    io = manifest.get("io") or None
    return ExportContext(model=model, neurons=find_neurons(model), input_shape=tuple(manifest["input_shape"]),
                         dynamic_batch=bool(manifest.get("dynamic_batch", True)), io=dict(io) if io else None)


def _make_probe(fmt: str, path: Path, model, manifest: dict, tmp: Path) -> Tuple[Path, Optional[List[int]], str]:
    """The probe artifact for ``path`` and the layer index of each probe output (None: same order as
    the reference's calls)."""
    if fmt == "onnx":
        p, idx = _onnx_probe(path, tmp)
        return p, idx, "probe: this file with the neuron outputs exposed"
    if fmt == "torchscript":
        from .export.torchscript_writer import write_torchscript_probe

        p = tmp / "probe.ts"
        write_torchscript_probe(_torch_ctx(model, manifest), p)
        return p, None, "probe: re-exported TorchScript with the neuron outputs exposed"
    if fmt in ("pt2", "aoti"):
        from .export.pt2_writer import write_pt2_probe

        p = tmp / ("probe.aoti.pt2" if fmt == "aoti" else "probe.pt2")
        write_pt2_probe(_torch_ctx(model, manifest), p, aot=(fmt == "aoti"))
        return p, None, f"probe: re-exported {'AOTInductor package' if fmt == 'aoti' else 'torch.export program'} with the neuron outputs exposed"
    raise ValueError(f"per-layer probes are not made for {fmt} artifacts (output figures only)")


def _probe_output_names(n_calls: int) -> List[str]:
    return ([OUTPUT_NAME] + [f"{PROBE_PREFIX}{k}" for k in range(n_calls)]
            + [f"{CURRENT_PREFIX}{k}" for k in range(n_calls)])


# ---------------------------------------------------------------------------------------------------------
# Backends per artifact.


def _backends_for(fmt: str, path: Path) -> List[Tuple[str, Dict[str, Any], str, Optional[str]]]:
    """(backend, runner options, variant label, skip reason) for every backend that could run ``path``."""
    from .runtime import available_backends
    from .runtime.base import _BACKENDS

    avail = available_backends()
    out = []
    for name, why in avail.items():
        if name == "torch":
            continue
        b = _BACKENDS[name]
        try:
            ok = b.accepts(path)
        except Exception:
            ok = False
        if not ok:
            continue
        if name == "onnxruntime":
            out.append((name, {"custom_ops": "off"}, "function fallback", why))
            if _has_dsr_nodes(path):
                from .runtime.onnxruntime import find_ort_library

                lib = find_ort_library()
                out.append((name, {"custom_ops": "require"}, "dsr custom-op library",
                            why or (None if lib else "libdsr_ort_ops.so not built (dsr-deploy plugins build)")))
        else:
            out.append((name, {}, "", why))
    return out


def _has_dsr_nodes(path: Path) -> bool:
    import onnx

    from .export.onnx_writer import dsr_nodes

    try:
        return bool(dsr_nodes(onnx.load(str(path), load_external_data=False)))
    except Exception:
        return False


# ---------------------------------------------------------------------------------------------------------
# Inputs.


def input_encoding(manifest: dict) -> str:
    """``"direct"`` when the manifest's model is a zoo network fed static images (generated inputs are then a
    static image repeated over T), else ``"noise"``."""
    spec = str((manifest.get("model") or {}).get("spec") or "")
    io = manifest.get("io") or {}
    if io.get("input_layout") == "static":
        return "static"
    if spec.startswith("zoo:"):
        try:
            from . import models

            return "direct" if models.describe(spec[4:]).get("encoding") == "direct" else "noise"
        except Exception:
            return "noise"
    return "noise"


def load_inputs(manifest: dict, input_file: Optional[str], n_random: int = 1,
                encoding: Optional[str] = None) -> List[Tuple[str, np.ndarray]]:
    shape = tuple(manifest["input_shape"])
    io = manifest.get("io") or {}
    encoding = encoding or input_encoding(manifest)
    inputs = []
    for seed in range(n_random):
        g = np.random.default_rng(seed)
        if encoding == "direct":
            t_axis = 1 if io.get("input_layout") == "BT" else 0
            one = g.standard_normal(shape[:t_axis] + (1,) + shape[t_axis + 1:]).astype(np.float32)
            inputs.append((f"direct(seed={seed})", np.ascontiguousarray(np.repeat(one, shape[t_axis], axis=t_axis))))
        else:
            name = "static" if encoding == "static" else "random"
            inputs.append((f"{name}(seed={seed})", g.standard_normal(shape).astype(np.float32)))
    if input_file:
        inputs.append((Path(input_file).name, _read_input(input_file, shape, io)))
    return inputs


def _read_input(input_file: str, shape: tuple, io: dict) -> np.ndarray:
    p = Path(input_file)
    if not p.is_file():
        raise UserError(f"--input {input_file}: no such file")
    try:
        x = np.load(p, allow_pickle=False)
    except Exception as exc:
        raise UserError(f"--input {input_file} is not a readable .npy array ({type(exc).__name__})") from exc
    if not isinstance(x, np.ndarray) or not np.issubdtype(x.dtype, np.floating):
        raise UserError(f"--input {input_file} must hold a floating-point array, got {getattr(x, 'dtype', type(x))}")
    static = io.get("input_layout") == "static"
    lead = 1 if static else 2
    if x.ndim != len(shape) or tuple(x.shape[lead:]) != shape[lead:]:
        dims = "B" if static else ("B, T" if io.get("input_layout") == "BT" else "T, B")
        raise UserError(f"--input {input_file} has shape {list(x.shape)}; expected [{dims}, "
                        f"{', '.join(map(str, shape[lead:]))}] like the export's {list(shape)}")
    if any(d < 1 for d in x.shape[:lead]):
        raise UserError(f"--input {input_file} has an empty T or batch dimension: {list(x.shape)}")
    return np.ascontiguousarray(x.astype(np.float32))


def _read_labels(labels_file: str, n: int) -> np.ndarray:
    p = Path(labels_file)
    if not p.is_file():
        raise UserError(f"--labels {labels_file}: no such file")
    try:
        y = np.load(p, allow_pickle=False)
    except Exception as exc:
        raise UserError(f"--labels {labels_file} is not a readable .npy array ({type(exc).__name__})") from exc
    if not isinstance(y, np.ndarray) or y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise UserError(f"--labels {labels_file} must hold a 1-D integer array (one class per batch item)")
    if len(y) != n:
        raise UserError(f"--labels {labels_file} has {len(y)} labels; --input has {n} batch items")
    return y.astype(np.int64)


def _fits(art: dict, manifest: dict, x: np.ndarray) -> Optional[str]:
    shape = manifest["input_shape"]
    io = manifest.get("io") or {}
    if io.get("input_layout") == "static":
        t_axis, b_axis = None, 0
    else:
        t_axis, b_axis = (1, 0) if io.get("input_layout") == "BT" else (0, 1)
    if t_axis is not None and x.shape[t_axis] != shape[t_axis] and not art.get("dynamic_T", False):
        return f"static T={shape[t_axis]}"
    if x.shape[b_axis] != shape[b_axis] and not art.get("dynamic_batch", manifest.get("dynamic_batch", True)):
        return f"static batch={shape[b_axis]}"
    return None


# ---------------------------------------------------------------------------------------------------------


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
    from .model_spec import load_reference_model
    from .runtime import load_runner

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
        from .model_spec import weights_digest

        if weights_digest(loaded.model) != digest:
            raise UserError(f"{loaded.spec} rebuilt here does not hold the weights that were exported (a random "
                            "initialisation, or another checkpoint?); export with --checkpoint so verify can "
                            "rebuild the same network")
    from .io_adapter import wrap_io

    # With export options (--layout / --encode / --readout) the artifact is the network behind an IOAdapter: so is
    # the reference (the model's own I/O, `source: model`, needs nothing).
    reference_model = wrap_io(loaded.model, io)
    ref = Reference(reference_model)
    infos = {n.index: n for n in ref.infos}
    inputs = load_inputs(manifest, input_file, n_random, encoding)
    refs = [(name, x, *ref.run(x)) for name, x in inputs]
    labels = _read_labels(labels_file, inputs[-1][1].shape[0 if io.get("input_layout") in ("static", "BT") else 1]) \
        if labels_file else None
    ref_correct = int((top1(refs[-1][2], io) == labels).sum()) if labels is not None else None

    runs: List[Run] = []
    with tempfile.TemporaryDirectory(prefix="dsr-verify-") as tmpdir:
        tmp = Path(tmpdir)
        arts = [{"format": "pytorch", "path": None}] + list(manifest["artifacts"])
        for art in arts:
            fmt = str(art.get("format"))
            if fmt == "pytorch":
                from .convert import inference_copy
                from .export.pt2_writer import _ProbedOp

                targets = [("torch", {"output_names": _probe_output_names(len(refs[0][3]))},
                            "inference copy (dsr ops)", None)]
                path, probe_path, probe_idx, note = None, None, None, "the inference copy's own neuron outputs"
                module = _ProbedOp(inference_copy(reference_model, "op"))
            else:
                module = None
                path = manifest.path_of(art)
                if not path.exists():
                    runs.append(Run(art["path"], fmt, "-", status="error", reason="listed in the manifest but missing",
                                    passed=False))
                    continue
                targets = _backends_for(fmt, path)
                if not targets:
                    runs.append(Run(art["path"], fmt, "-", status="skipped", reason="no backend runs this format"))
                    continue
                probe_path = probe_idx = None
                note = ""
                if layers and any(why is None for *_, why in targets):
                    if progress:
                        progress(f"probing {art['path']} per layer")
                    try:
                        probe_path, probe_idx, note = _make_probe(fmt, path, reference_model, manifest, tmp)
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
                        _run_end_to_end(run, art, manifest, io, runner, refs, infos, labels, backend, opts,
                                        probe_path, probe_idx, module is not None, load_runner)
                        run.layers_note = note
                        _run_neuron_check(run, runner, refs, infos)
                    finally:
                        runner.release()
                except UserError as exc:
                    run.status, run.reason, run.passed = "error", str(exc), False
                    continue
                except Exception as exc:  # a runtime that crashes on the artifact fails the artifact
                    run.status, run.passed = "error", False
                    run.reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                    continue
                _judge(run, min_top1, max_accuracy_drop, min_agreement, ref_correct)
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


def unchecked_artifacts(runs: List[Run]) -> List[dict]:
    """The listed artifacts that no backend ran (every row skipped), with why: not a pass."""
    by: Dict[str, List[Run]] = {}
    for r in runs:
        by.setdefault(r.artifact, []).append(r)
    return [{"artifact": a, "format": rs[0].format, "reason": "; ".join(dict.fromkeys(r.reason for r in rs))}
            for a, rs in by.items() if all(r.status == "skipped" for r in rs)]


def _judge(run: Run, min_top1: float, max_accuracy_drop: float, min_agreement: Optional[float],
           ref_correct: Optional[int]) -> None:
    """The pass rule (module docstring); ``run.failures`` says which parts failed."""
    half = run.precision in _HALF
    if not run.neuron_checked:
        run.failures.append(f"neuron check did not run: {run.neuron_note}")
    for l in run.layers:
        if not l.neuron_total:
            continue
        if (not half and l.neuron_equal != l.neuron_total) or (half and l.neuron_agreement < HALF_NEURON_AGREEMENT):
            run.failures.append(f"layer {l.index} ({l.name}) neuron differs from the reference given the same "
                                f"input: {l.neuron_total - l.neuron_equal} of {l.neuron_total} spikes")
    if run.precision == "int8":
        min_top1 = 0.0 if ref_correct is not None and run.labelled else min(min_top1, INT8_MIN_TOP1)
        max_accuracy_drop = max(max_accuracy_drop, INT8_MAX_ACCURACY_DROP)
    if run.top1_agreement is not None and run.top1_agreement < min_top1:
        run.failures.append(f"top-1 agreement {run.top1_agreement:.2%} < {min_top1:.2%}")
    if ref_correct is not None and run.labelled:
        drop = 100.0 * (ref_correct - run.correct) / run.labelled
        if drop > max_accuracy_drop + 1e-9:
            run.failures.append(f"accuracy {run.correct}/{run.labelled} is {drop:.2f} points below PyTorch's")
    if min_agreement is not None:
        low = [l for l in run.layers if l.agreement is not None and l.agreement < min_agreement]
        run.failures += [f"layer {l.index} ({l.name}) end-to-end spike agreement {l.agreement:.4%} < "
                         f"{min_agreement:.4%}" for l in low]
    run.passed = not run.failures


def _stat(stats: Dict[int, LayerStat], layer: int, infos) -> LayerStat:
    if layer not in stats:
        info = infos[layer]
        stats[layer] = LayerStat(layer, info.name, info.op_type)
    return stats[layer]


def _run_end_to_end(run: Run, art: dict, manifest: dict, io: dict, runner, refs, infos, labels, backend: str,
                    opts: dict, probe_path: Optional[Path], probe_idx, is_module: bool, load_runner) -> None:
    stats: Dict[int, LayerStat] = {}
    probe_runner = None
    n_calls = len(refs[0][3])
    if not is_module and probe_path is not None:
        popts = dict(opts)
        if art.get("format") != "onnx":
            popts.update(input_names=[INPUT_NAME], output_names=_probe_output_names(n_calls))
        probe_runner = load_runner(probe_path, backend, **popts)
    try:
        for k, (name, x, ref_out, ref_calls) in enumerate(refs):
            skip = _fits(art, manifest, x) if not is_module else None
            if skip:
                run.layers_note = (run.layers_note + f"; input {name} skipped ({skip})").lstrip("; ")
                continue
            x = x.astype(_input_dtype(run.precision))
            out = runner.infer({INPUT_NAME: x})
            y = np.asarray(out[OUTPUT_NAME] if OUTPUT_NAME in out else next(iter(out.values()))).astype(np.float32)
            if y.shape != ref_out.shape:
                raise UserError(f"output shape {list(y.shape)} differs from the model's {list(ref_out.shape)}")
            run.max_abs_diff = max_abs_diff(y, ref_out, run.max_abs_diff)  # NaN-aware (dsr_deploy.numerics)
            t_art, t_ref = top1(y, io), top1(ref_out, io)
            run.top1_equal += int((t_art == t_ref).sum())
            run.top1_total += int(t_ref.size)
            if labels is not None and k == len(refs) - 1:
                run.correct, run.labelled = int((t_art == labels).sum()), int(labels.size)
            if is_module:
                got = out
            elif probe_runner is not None:
                got = probe_runner.infer({INPUT_NAME: x})
            else:
                continue
            _accumulate(stats, got, ref_calls, probe_idx, infos, run.precision)
    finally:
        if probe_runner is not None:
            probe_runner.release()
    run.layers = [stats[i] for i in sorted(stats)]


def _accumulate(stats: Dict[int, LayerStat], got: dict, ref_calls: List[Call], probe_idx, infos,
                precision: str = "float32") -> None:
    # Match the j-th call of layer i in the probe with the j-th call of layer i in the reference.
    by_layer: Dict[int, List[Call]] = {}
    for c in ref_calls:
        by_layer.setdefault(c.layer, []).append(c)
    keys = sorted((k for k in got if k.startswith(PROBE_PREFIX)), key=lambda k: int(k[len(PROBE_PREFIX):]))
    if len(keys) != len(ref_calls):
        raise UserError(f"the probe exposes {len(keys)} neuron outputs, the model made {len(ref_calls)} neuron calls")
    seen: Dict[int, int] = {}
    for k, key in enumerate(keys):
        layer = probe_idx[k] if probe_idx is not None and probe_idx[k] is not None else ref_calls[k].layer
        j = seen.get(layer, 0)
        seen[layer] = j + 1
        want = by_layer[layer][j]
        have = np.asarray(got[key])
        if have.size != want.y.size:
            raise UserError(f"layer {layer}: spikes of shape {list(have.shape)}, the model's are {list(want.y.shape)}")
        # A flat layer's probe gives [T, B, ...] spikes for the training neuron's [T*B, ...]: same order.
        have = have.reshape(want.y.shape).astype(np.float32)
        st = _stat(stats, layer, infos)
        st.equal += count_equal(have, _rounded(want.y, precision))  # NaN spikes of a NaN model agree
        st.total += int(want.y.size)
        cur = got.get(f"{CURRENT_PREFIX}{key[len(PROBE_PREFIX):]}")
        if cur is not None:
            cur = np.asarray(cur, dtype=np.float64).reshape(want.x.shape) if np.size(cur) == want.x.size else None
        if cur is not None:
            d = np.abs(cur - want.x.astype(np.float64))
            scale = float(np.max(np.abs(want.x))) if want.x.size else 0.0
            mx = float(np.max(d)) if d.size else 0.0
            st.input_max_abs_diff = max(st.input_max_abs_diff or 0.0, mx)
            st.input_max_rel_diff = max(st.input_max_rel_diff or 0.0, mx / scale if scale > 0 else 0.0)
            st.input_differing += int((d > 0).sum())


# ---------------------------------------------------------------------------------------------------------
# The teacher-forced neuron check.


def _to_time_major(x: np.ndarray, info) -> np.ndarray:
    """A training neuron's input in the ``[T, B, ...]`` layout the dsr ops take (the authors' neurons take
    ``[T*B, ...]``, time-major flattened)."""
    if info.layout == "flat":
        return x.reshape((info.timesteps, x.shape[0] // info.timesteps) + x.shape[1:])
    return x


def _run_neuron_check(run: Run, runner, refs, infos) -> None:
    try:
        neurons = runner.neurons()
    except UserError as exc:
        run.neuron_note = str(exc)
        return
    if not neurons:
        run.neuron_note = "the artifact exposes no neuron"
        return
    by_name = {info.name: i for i, info in infos.items()}
    for n in neurons:  # a program's op call knows its module path, not the layer index
        if n.layer is None and n.params.get("module_path") in by_name:
            n.layer = by_name[n.params["module_path"]]
    stats = {l.index: l for l in run.layers}
    ordered = [n for n in neurons if n.layer is None]
    for _name, _x, _out, calls in refs:
        seen: Dict[int, int] = {}
        for k, call in enumerate(calls):
            j = seen.get(call.layer, 0)
            seen[call.layer] = j + 1
            match = [n for n in neurons if n.layer == call.layer and (n.call is None or n.call == j)]
            if not match and len(ordered) == len(calls):
                match = [ordered[k]]
            if not match:
                raise UserError(f"layer {call.layer} ({infos[call.layer].name}): the artifact holds no neuron for "
                                f"its call {j}")
            info = infos[call.layer]
            st = _stat(stats, call.layer, infos)
            for n in match:
                x = _to_time_major(call.x, info) if n.time_major else call.x
                want = call.y.reshape(x.shape)
                try:
                    have = np.asarray(n.run(np.ascontiguousarray(x.astype(_input_dtype(run.precision)))))
                except ValueError as exc:  # the file cannot give this neuron alone (e.g. an int8 quantised op)
                    run.neuron_note = str(exc)
                    return
                if have.shape != want.shape:
                    raise UserError(f"layer {call.layer}: the artifact's neuron returned {list(have.shape)}, "
                                    f"the reference {list(want.shape)}")
                st.neuron_equal += count_equal(have.astype(np.float32), _rounded(want, run.precision))
                st.neuron_total += int(want.size)
    run.layers = [stats[i] for i in sorted(stats)]
    run.neuron_checked = True


def _input_dtype(precision: str):
    return np.float16 if precision == "float16" else np.float32


def _rounded(spikes: np.ndarray, precision: str) -> np.ndarray:
    """The reference's float32 spikes as a half-precision artifact represents them (each spike value, vth or
    vth/dt, rounded once to the artifact's dtype)."""
    if precision == "float16":
        return spikes.astype(np.float16).astype(np.float32)
    return spikes
