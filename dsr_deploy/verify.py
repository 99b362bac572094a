"""``dsr-deploy verify DIR``: every artifact of an export folder, in every available backend, against the
PyTorch model it was exported from.

Reference: the user's network itself (rebuilt from the manifest's MODEL spec and checkpoint), eager, in eval
mode, with its own training neurons (ours or SpikingJelly's). Forward hooks on those neurons record each
neuron layer's spikes.

Per artifact x backend, two figures:

* **output**: the artifact file itself is run through :func:`dsr_deploy.runtime.load_runner` (the Runner
  interface, the same loaders users deploy with); max |artifact - reference| over the outputs and the fraction
  of batch items whose top-1 class (output averaged over T, arg-max over the rest) agrees.
* **per neuron layer**: the fraction of spikes equal to the reference's. A deployed artifact has a single
  output, so per-layer spikes come from a *probe* of it: the same graph with every neuron layer's output also
  exposed (``spikes_<k>``, k = call order), run by the same runner. For ONNX the probe is made from the artifact
  file itself (its dsr nodes' outputs, or after a portable lowering the tensors those nodes produced, become
  graph outputs; nothing else changes). TorchScript and pt2 / AOTInductor files cannot be re-opened for
  extra outputs, so their probes are re-exported from the same model by the same writer (the TorchScript probe
  is traced around the scripted neurons; an AOTInductor probe is compiled again, which takes a while).

Pass rule (issue §5): every layer agrees on at least ``min_agreement`` (default 99.9%) of spikes and the top-1
classes agree for every input; an artifact that fails to load or run fails. Backends that are not available
here (TensorRT without a GPU, the ORT custom-op library when not built) are listed as skipped.
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
from .export.base import INPUT_NAME, OUTPUT_NAME, PROBE_PREFIX, ExportContext
from .export.manifest import read_manifest
from .numerics import count_equal, max_abs_diff

DEFAULT_MIN_AGREEMENT = 0.999


@dataclass
class LayerStat:
    index: int
    name: str
    op_type: str
    equal: int = 0
    total: int = 0

    @property
    def agreement(self) -> Optional[float]:
        return self.equal / self.total if self.total else None


@dataclass
class Run:
    artifact: str
    format: str
    backend: str
    variant: str = ""
    status: str = "ok"  # ok | skipped | error
    reason: str = ""
    max_abs_diff: float = 0.0
    top1_equal: int = 0
    top1_total: int = 0
    layers: List[LayerStat] = field(default_factory=list)
    layers_note: str = ""
    passed: Optional[bool] = None

    def to_dict(self) -> dict:
        return {
            "artifact": self.artifact, "format": self.format, "backend": self.backend, "variant": self.variant,
            "status": self.status, "reason": self.reason,
            "max_abs_diff": self.max_abs_diff if self.status == "ok" else None,
            "top1_agreement": (self.top1_equal / self.top1_total) if self.top1_total else None,
            "layers": [{"index": l.index, "name": l.name, "op_type": l.op_type, "agreement": l.agreement,
                        "spikes_equal": l.equal, "spikes_total": l.total} for l in self.layers],
            "min_layer_agreement": min((l.agreement for l in self.layers if l.agreement is not None), default=None),
            "layers_note": self.layers_note,
            "passed": self.passed,
        }


# ---------------------------------------------------------------------------------------------------------
# Reference.


class Reference:
    """The user's network with hooks on its neurons: output and per-call spikes for an input."""

    def __init__(self, model: torch.nn.Module):
        self.model = copy.deepcopy(model).eval()
        self.infos = find_neurons(self.model)
        self._calls: List[Tuple[int, np.ndarray]] = []
        for info, (name, m) in zip(self.infos, find_neuron_modules(self.model).items()):
            m.register_forward_hook(self._hook(info.index))

    def _hook(self, index: int):
        def hook(_module, _inputs, output):
            self._calls.append((index, output.detach().cpu().numpy().copy()))
        return hook

    def run(self, x: np.ndarray) -> Tuple[np.ndarray, List[Tuple[int, np.ndarray]]]:
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


def top1(output: np.ndarray) -> np.ndarray:
    """Per batch item: arg-max of the output averaged over T (layout ``[T, B, ...]``; the features after B are
    flattened). An output ``[T, B]`` has one value per item, so its top-1 always agrees; the max abs difference
    and the per-layer agreement still judge it."""
    o = output.astype(np.float64)
    if o.ndim < 2:
        raise UserError(f"the output has shape {list(o.shape)}; expected [T, B, ...]")
    o = o.mean(axis=0)
    return o.reshape(o.shape[0], -1).argmax(axis=1)


# ---------------------------------------------------------------------------------------------------------
# Probes (per-layer outputs).


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
    return ExportContext(model=model, neurons=find_neurons(model), input_shape=tuple(manifest["input_shape"]),
                         dynamic_batch=bool(manifest.get("dynamic_batch", True)))


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


def load_inputs(manifest: dict, input_file: Optional[str], n_random: int = 1) -> List[Tuple[str, np.ndarray]]:
    shape = tuple(manifest["input_shape"])
    inputs = []
    for seed in range(n_random):
        g = np.random.default_rng(seed)
        inputs.append((f"random(seed={seed})", g.standard_normal(shape).astype(np.float32)))
    if input_file:
        p = Path(input_file)
        if not p.is_file():
            raise UserError(f"--input {input_file}: no such file")
        try:
            x = np.load(p, allow_pickle=False)
        except Exception as exc:
            raise UserError(f"--input {input_file} is not a readable .npy array ({type(exc).__name__})") from exc
        if not isinstance(x, np.ndarray) or not np.issubdtype(x.dtype, np.floating):
            raise UserError(f"--input {input_file} must hold a floating-point array, got {getattr(x, 'dtype', type(x))}")
        if x.ndim != len(shape) or tuple(x.shape[2:]) != shape[2:]:
            raise UserError(f"--input {input_file} has shape {list(x.shape)}; expected [T, B, "
                            f"{', '.join(map(str, shape[2:]))}] like the export's {list(shape)}")
        if x.shape[0] < 1 or x.shape[1] < 1:
            raise UserError(f"--input {input_file} has an empty T or batch dimension: {list(x.shape)}")
        inputs.append((p.name, np.ascontiguousarray(x.astype(np.float32))))
    return inputs


def _fits(art: dict, manifest: dict, x: np.ndarray) -> Optional[str]:
    shape = manifest["input_shape"]
    if x.shape[0] != shape[0] and not art.get("dynamic_T", False):
        return f"static T={shape[0]}"
    if x.shape[1] != shape[1] and not art.get("dynamic_batch", manifest.get("dynamic_batch", True)):
        return f"static batch={shape[1]}"
    return None


def verify_folder(folder: str | Path, *, input_file: Optional[str] = None, min_agreement: float = DEFAULT_MIN_AGREEMENT,
                  n_random: int = 1, layers: bool = True, progress=None) -> dict:
    """Verify every artifact of ``folder``; returns the report (``report["passed"]``)."""
    from .model_spec import load_model
    from .runtime import load_runner

    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest.get("mode", "multistep") != "multistep":
        raise UserError(f"verify handles multi-step exports; {folder} holds mode {manifest.get('mode')!r}")
    if not 0.0 <= min_agreement <= 1.0:
        raise UserError(f"--min-agreement must be within [0, 1], got {min_agreement}")
    m = manifest.get("model") or {}
    if not m.get("spec"):
        raise UserError(f"{folder}/manifest.json records no MODEL spec to compare against")
    loaded = load_model(m["spec"], m.get("checkpoint"), bool(m.get("trust_pickle")))
    ref = Reference(loaded.model)
    infos = {n.index: n for n in ref.infos}
    inputs = load_inputs(manifest, input_file, n_random)
    refs = [(name, x, *ref.run(x)) for name, x in inputs]

    runs: List[Run] = []
    with tempfile.TemporaryDirectory(prefix="dsr-verify-") as tmpdir:
        tmp = Path(tmpdir)
        # The PyTorch inference copy (the dsr ops, native kernels when built) through the torch runner.
        arts = [{"format": "pytorch", "path": None}] + list(manifest["artifacts"])
        for art in arts:
            fmt = str(art.get("format"))
            if fmt == "pytorch":
                from .export.pt2_writer import _ProbedOp
                from .convert import inference_copy

                targets = [("torch", {"output_names": [OUTPUT_NAME] + [f"{PROBE_PREFIX}{i}" for i in range(len(refs[0][3]))]},
                            "inference copy (dsr ops)", None)]
                path, probe_path, probe_idx, note = None, None, None, "the inference copy's own neuron outputs"
                module = _ProbedOp(inference_copy(loaded.model, "op"))
            else:
                path = folder / art["path"]
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
                        probe_path, probe_idx, note = _make_probe(fmt, path, loaded.model, manifest, tmp)
                    except Exception as exc:
                        note = f"no per-layer probe: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            for backend, opts, variant, why in targets:
                label = art["path"] if path is not None else "(PyTorch)"
                run = Run(label, fmt, backend, variant)
                runs.append(run)
                if why is not None:
                    run.status, run.reason = "skipped", why
                    continue
                if progress:
                    progress(f"running {label} on {backend} {variant}".rstrip())
                try:
                    _execute(run, art, manifest, path, backend, opts, refs, infos, probe_path, probe_idx,
                             module if fmt == "pytorch" else None, load_runner)
                    run.layers_note = note
                except UserError as exc:
                    run.status, run.reason, run.passed = "error", str(exc), False
                    continue
                except Exception as exc:  # a runtime that crashes on the artifact fails the artifact
                    run.status, run.passed = "error", False
                    run.reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                    continue
                low = [l for l in run.layers if l.agreement is not None and l.agreement < min_agreement]
                run.passed = not low and run.top1_equal == run.top1_total
    ok_runs = [r for r in runs if r.status != "skipped"]
    passed = bool(ok_runs) and all(r.passed for r in ok_runs)
    return {
        "dir": str(folder),
        "model": m.get("spec"),
        "checkpoint": m.get("checkpoint"),
        "min_agreement": min_agreement,
        "inputs": [{"name": n, "shape": list(x.shape)} for n, x in inputs],
        "neurons": [{"index": n.index, "name": n.name, "op_type": n.op_type} for n in ref.infos],
        "runs": [r.to_dict() for r in runs],
        "passed": passed,
    }


def _execute(run: Run, art: dict, manifest: dict, path: Optional[Path], backend: str, opts: dict, refs,
             infos, probe_path: Optional[Path], probe_idx, module, load_runner) -> None:
    stats: Dict[int, LayerStat] = {}
    runner = load_runner(module if module is not None else path, backend, **opts)
    probe_runner = None
    if module is None and probe_path is not None:
        n_out = len(refs[0][3])
        popts = dict(opts)
        if art.get("format") != "onnx":
            popts.update(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME] + [f"{PROBE_PREFIX}{k}" for k in range(n_out)])
        probe_runner = load_runner(probe_path, backend, **popts)
    try:
        for name, x, ref_out, ref_calls in refs:
            skip = _fits(art, manifest, x) if module is None else None
            if skip:
                run.layers_note = (run.layers_note + f"; input {name} skipped ({skip})").lstrip("; ")
                continue
            out = runner.infer({INPUT_NAME: x})
            y = np.asarray(out[OUTPUT_NAME] if OUTPUT_NAME in out else next(iter(out.values())))
            if y.shape != ref_out.shape:
                raise UserError(f"output shape {list(y.shape)} differs from the model's {list(ref_out.shape)}")
            run.max_abs_diff = max_abs_diff(y, ref_out, run.max_abs_diff)  # NaN-aware (dsr_deploy.numerics)
            t_art, t_ref = top1(y), top1(ref_out)
            run.top1_equal += int((t_art == t_ref).sum())
            run.top1_total += int(t_ref.size)
            if module is not None:
                got = out
            elif probe_runner is not None:
                got = probe_runner.infer({INPUT_NAME: x})
            else:
                continue
            _accumulate(stats, got, ref_calls, probe_idx, infos)
    finally:
        runner.release()
        if probe_runner is not None:
            probe_runner.release()
    run.layers = [stats[i] for i in sorted(stats)]


def _accumulate(stats: Dict[int, LayerStat], got: dict, ref_calls, probe_idx, infos) -> None:
    # Match the j-th call of layer i in the probe with the j-th call of layer i in the reference.
    ref_by_layer: Dict[int, List[np.ndarray]] = {}
    for i, y in ref_calls:
        ref_by_layer.setdefault(i, []).append(y)
    keys = sorted((k for k in got if k.startswith(PROBE_PREFIX)), key=lambda k: int(k[len(PROBE_PREFIX):]))
    if len(keys) != len(ref_calls):
        raise UserError(f"the probe exposes {len(keys)} neuron outputs, the model made {len(ref_calls)} neuron calls")
    seen: Dict[int, int] = {}
    for k, key in enumerate(keys):
        layer = probe_idx[k] if probe_idx is not None and probe_idx[k] is not None else ref_calls[k][0]
        j = seen.get(layer, 0)
        seen[layer] = j + 1
        want = ref_by_layer[layer][j]
        have = np.asarray(got[key])
        if have.shape != want.shape:
            raise UserError(f"layer {layer}: spikes of shape {list(have.shape)}, the model's are {list(want.shape)}")
        st = stats.setdefault(layer, LayerStat(layer, infos[layer].name, infos[layer].op_type))
        st.equal += count_equal(have, want)  # NaN spikes of a NaN model agree with NaN
        st.total += int(want.size)
