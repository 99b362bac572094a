"""``dsr-deploy quickstart``: the whole product on the shipped trained network, in one command, no download.

One idea, over 400 lines: the main job from data to printed summary (its steps, their records and the tables
that show them).

On zoo ``digits-cnn`` (DSR-IF CNN trained on scikit-learn's 8x8 digits, models/digits-cnn.md):

1. the held-out split (360 images, direct-encoded over T) and the PyTorch model's accuracy on it;
2. export to TorchScript, ONNX and pt2 (:func:`dsr_deploy.export.export_model`);
3. ``verify`` of every artifact on every available backend against the PyTorch model, fed the held-out data and
   labels (:func:`dsr_deploy.verify.verify_folder`): every backend's neurons must give PyTorch's spikes bit for
   bit given the same input (teacher forcing), and the artifact must agree with PyTorch on top-1 and accuracy;
4. each artifact's held-out accuracy, through the same runners users deploy with (the logits are the firing
   rate of the artifact's own spike output): within ``MAX_ACCURACY_DROP`` points of PyTorch's, reported as
   "identical" where the logits are bit-identical to PyTorch's, else with the number of predictions that differ
   (a backend's own convolutions may round differently from PyTorch's on a given CPU);
5. a short latency benchmark of PyTorch eager and every artifact x backend (:mod:`dsr_deploy.bench`);
6. everything written under OUT (summary in ``OUT/quickstart.json``), and printed.

Backends that are not available here (TensorRT without a GPU, the ORT custom-op library when not built) are
listed as skipped with the reason, never silently dropped.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from .errors import UserError, first_line

DEFAULT_MODEL = "digits-cnn"
DEFAULT_OUT = "quickstart-out"
EXPORT_DIR = "export"
SUMMARY = "quickstart.json"
VERIFY_REPORT = "verify.json"
BENCH_REPORT = "bench.json"
HELDOUT_INPUT = "heldout_input.npy"
HELDOUT_LABELS = "heldout_labels.npy"
# The export's example batch; the artifacts keep a dynamic batch and run the whole held-out set at once.
EXPORT_EXAMPLE_BATCH = 2
MAX_ACCURACY_DROP = 0.5  # percentage points, verify's default rule
PRECISIONS = ("float32", "int8")  # quickstart --precision: int8 runs on the quantised ONNX export


LAST_BITS_ULPS = 4  # "differ in the last bits": every logit within this many ulps of PyTorch's


def vs_pytorch(r) -> str:
    """The accuracy table's words for how an artifact's logits compare with PyTorch's: "last bits" only for a
    few ulps, else by how much."""
    if r.identical_to_pytorch:
        return "[green]identical logits[/green]"
    if r.predictions_differing:
        return f"{r.predictions_differing} of {r.total} predictions differ"
    how = ("logits differ in the last bits" if r.last_bits else
           f"logits differ by up to {r.max_logit_diff:.2g}" if r.max_logit_diff is not None else "logits differ")
    return how + ", every prediction identical"


@dataclass
class AccuracyRow:
    artifact: str
    format: str
    backend: str
    variant: str = ""  # ONNX Runtime: "function fallback" or "dsr custom-op library"
    status: str = "ok"  # ok | skipped | error
    reason: str = ""
    accuracy: Optional[float] = None
    correct: Optional[int] = None
    total: Optional[int] = None
    identical_to_pytorch: Optional[bool] = None  # logits bit-equal to the PyTorch model's
    predictions_differing: Optional[int] = None  # held-out images whose predicted class differs from PyTorch's
    max_logit_diff: Optional[float] = None  # max |logits - PyTorch's|
    last_bits: Optional[bool] = None  # that difference is a few ulps of the logits (else: say how much)
    seconds: Optional[float] = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class QuickstartResult:
    out: Path
    model: str
    T: int
    heldout: int
    pytorch_accuracy: float
    manifest: dict
    verify: dict
    accuracy: List[AccuracyRow]
    bench: Optional[dict]
    files: Dict[str, str] = field(default_factory=dict)
    seconds: Dict[str, float] = field(default_factory=dict)
    backends: Dict[str, Optional[str]] = field(default_factory=dict)  # name -> None (usable) or why not
    native: Dict[str, str] = field(default_factory=dict)  # native kernel -> where it was loaded from, or why not
    precision: str = "float32"
    early_exit: Optional[dict] = None  # the early-exit step (dsr_deploy.quickstart_early_exit)

    @property
    def bit_exact(self) -> bool:
        """Informative: every run's output and spikes identical to PyTorch's end to end (a property of this
        CPU and these library versions, not part of the pass rule)."""
        runs = [r for r in self.verify["runs"] if r["status"] == "ok"]
        return bool(runs) and all(_run_bit_exact(r) for r in runs)

    @property
    def neurons_exact(self) -> bool:
        runs = [r for r in self.verify["runs"] if r["status"] == "ok"]
        return bool(runs) and all(r.get("neuron_exact") for r in runs)

    @property
    def passed(self) -> bool:
        ran = [a for a in self.accuracy if a.status != "skipped"]
        return (bool(self.verify.get("passed")) and self.neurons_exact and bool(ran)
                and all(a.status == "ok" and within_rule(a, self.pytorch_accuracy, self.precision) for a in ran))

    def to_dict(self) -> dict:
        return {
            "model": f"zoo:{self.model}", "T": self.T, "heldout_images": self.heldout,
            "pytorch_accuracy": self.pytorch_accuracy, "passed": self.passed, "neurons_exact": self.neurons_exact,
            "end_to_end_identical": self.bit_exact, "max_accuracy_drop": max_drop(self.precision),
            "precision": self.precision,
            "verify_passed": bool(self.verify.get("passed")),
            "verify": [{k: r.get(k) for k in ("artifact", "format", "backend", "variant", "status", "reason",
                                               "neuron_exact", "max_abs_diff", "top1_agreement", "accuracy",
                                               "divergence", "failures", "passed")}
                       | {"bit_exact": _run_bit_exact(r) if r["status"] == "ok" else None}
                       for r in self.verify["runs"]],
            "accuracy": [a.to_dict() for a in self.accuracy],
            "bench": _bench_summary(self.bench) if self.bench else None,
            "backends": {k: v or "available" for k, v in self.backends.items()},
            "native_kernels": self.native,
            "files": self.files, "seconds": self.seconds, "early_exit": self.early_exit,
        }


def max_drop(precision: str) -> float:
    from .verify import INT8_MAX_ACCURACY_DROP

    return INT8_MAX_ACCURACY_DROP if precision == "int8" else MAX_ACCURACY_DROP


def within_rule(row: AccuracyRow, pytorch_accuracy: float, precision: str = "float32") -> bool:
    return row.accuracy is not None and 100.0 * (pytorch_accuracy - row.accuracy) <= max_drop(precision) + 1e-9


def _run_bit_exact(run: dict) -> bool:
    layers_ok = all(layer.get("agreement") == 1.0 for layer in run.get("layers") or [])
    return run.get("max_abs_diff") == 0.0 and layers_ok


def _bench_summary(bench: dict) -> list:
    out = []
    for r in bench.get("results", []):
        lat = r.get("latency_ms") or {}
        out.append({"label": r["label"], "batch": r["batch"], "T": r["timesteps"], "p50_ms": lat.get("p50"),
                    "mean_ms": lat.get("mean"), "speedup_vs_first": r.get("speedup_vs_first"),
                    "vs_memcpy": r.get("vs_memcpy"), "error": r.get("error")})
    return out


def _save_npy(path: Path, array: np.ndarray) -> None:
    from .io import atomic_write_bytes

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def _artifact_targets(folder: Path) -> List[tuple]:
    """(artifact path, format, backend, variant, runner options, None | why skipped) for every artifact x backend
    (x ONNX Runtime variant) that could run it (:func:`dsr_deploy.runtime.run_targets`, as verify uses)."""
    from . import runtime as R
    from .manifest import read_manifest

    manifest = read_manifest(folder)
    targets = []
    for art in manifest.artifacts:
        path = manifest.path_of(art)
        runs = R.run_targets(path)
        if not runs:
            targets.append((path, art["format"], "-", "", {}, "no backend runs this format"))
        targets += [(path, art["format"], b, variant, opts, why) for b, opts, variant, why in runs]
    return targets


def _native_summary() -> Dict[str, str]:
    """Which native kernels this run uses: the torch op (pt2 / TorchScript / eager neurons) and the ORT library."""
    from . import ops, plugins

    st = ops.native_status()
    lib = plugins.ort_library()
    torch_op = (f"loaded from {st['path']}" if st["loaded"] else
                plugins.missing_reason("torch") or st["reason"])  # not built and why, else why it did not load
    return {"torch op (libdsr_torch_ops.so)": torch_op,
            "ONNX Runtime custom ops (libdsr_ort_ops.so)": f"built: {lib}" if lib else plugins.missing_reason("ort")}


def artifact_accuracy(path: Path, fmt: str, backend: str, x: np.ndarray, labels: np.ndarray,
                      reference_logits: np.ndarray, neuron: str, neuron_params: dict, variant: str = "",
                      options: Optional[dict] = None) -> AccuracyRow:
    """Held-out accuracy of one artifact on one backend, from the artifact's own spike output."""
    from .models.common import firing_rate
    from .runtime import load_runner

    row = AccuracyRow(path.name, fmt, backend, variant)
    t0 = time.perf_counter()
    try:
        runner = load_runner(path, backend=backend, **(options or {}))
        with runner:
            name = runner.inputs()[0].name
            out = runner.infer({name: x})
            spikes = np.asarray(next(iter(out.values())))
    except UserError as exc:
        row.status, row.reason = "error", str(exc)
        return row
    except Exception as exc:  # a runtime that crashes on the artifact is a failure of that artifact, reported
        row.status, row.reason = "error", first_line(exc, with_type=True)
        return row
    row.seconds = round(time.perf_counter() - t0, 3)
    logits = firing_rate(spikes, neuron, neuron_params.get("tau", 1.0), neuron_params.get("delta_t", 0.05)).numpy()
    pred = logits.argmax(-1)
    row.correct, row.total = int((pred == labels).sum()), int(len(labels))
    row.accuracy = row.correct / row.total
    row.identical_to_pytorch = bool(logits.shape == reference_logits.shape
                                    and np.array_equal(logits, reference_logits))
    row.predictions_differing = int((pred != reference_logits.argmax(-1)).sum())
    if logits.shape == reference_logits.shape:
        diff = np.abs(logits.astype(np.float64) - reference_logits.astype(np.float64))
        row.max_logit_diff = float(diff.max()) if diff.size else 0.0
        ulp = np.spacing(np.abs(reference_logits).astype(np.float32)).astype(np.float64)
        row.last_bits = bool((diff <= LAST_BITS_ULPS * ulp).all())
    return row


@dataclass
class _Reference:
    """Step 1's results: the model, the held-out data and PyTorch's logits on it."""

    model: Any
    T: int
    x: np.ndarray  # held-out inputs [T, N, ...], direct-encoded
    labels: np.ndarray
    neuron: str
    params: dict
    logits: np.ndarray
    accuracy: float


def _reference(model_name: str, out: Path, files: Dict[str, str], log: Callable[[str], None]) -> _Reference:
    """Step 1: the held-out data (saved beside the reports) and the PyTorch reference on it."""
    import torch

    from . import models
    from .encoding import direct_encode
    from .models.common import NEURON_DEFAULTS, firing_rate
    from .models.digits import load_digits_split

    info = models.describe(model_name)
    log(f"[1/5] zoo:{model_name}: {info['summary']}")
    for kernel, state in _native_summary().items():
        log(f"      native {kernel}: {state}")
    model = models.build(model_name).eval()
    T = int(models.input_shape(model_name)[0])
    data = load_digits_split()
    x = direct_encode(data.x_test, T)
    x_np = np.ascontiguousarray(x.numpy(), dtype=np.float32)
    labels = data.y_test.numpy()
    _save_npy(out / HELDOUT_INPUT, x_np)
    _save_npy(out / HELDOUT_LABELS, labels)
    files["heldout_input"] = str(out / HELDOUT_INPUT)
    files["heldout_labels"] = str(out / HELDOUT_LABELS)
    neuron = info.get("neuron") or "if"
    params = {**NEURON_DEFAULTS[neuron], **{k: v for k, v in info.get("defaults", {}).items()
                                              if k in ("tau", "delta_t")}}
    with torch.no_grad():
        logits = firing_rate(model(x), neuron, params.get("tau", 1.0), params.get("delta_t", 0.05)).numpy()
    correct = int((logits.argmax(-1) == labels).sum())
    log(f"      held-out: {len(labels)} images x T={T}; PyTorch accuracy {correct / len(labels):.2%} "
        f"({correct}/{len(labels)})")
    return _Reference(model, T, x_np, labels, neuron, params, logits, correct / len(labels))


def _accuracy_rows(export_dir: Path, ref: _Reference, log: Callable[[str], None]) -> List[AccuracyRow]:
    """Step 4: the held-out accuracy of each artifact on each backend that runs it here."""
    rows: List[AccuracyRow] = []
    for path, fmt, backend, variant, opts, why in _artifact_targets(export_dir):
        if why is not None:
            rows.append(AccuracyRow(path.name, fmt, backend, variant, status="skipped", reason=str(why)))
            continue
        log(f"      {path.name} on {backend}" + (f" ({variant})" if variant else ""))
        rows.append(artifact_accuracy(path, fmt, backend, ref.x, ref.labels, ref.logits, ref.neuron, ref.params,
                                      variant, opts))
    return rows


def _early_exit(ref: _Reference, spec: str, out: Path, export_dir: Path, bench: bool, bench_iters: int,
                threads: Optional[int], files: Dict[str, str], seconds: Dict[str, float],
                log: Callable[[str], None]) -> dict:
    """The early-exit step: a streaming export and the cheapest rule within 0.5 points on the held-out split."""
    from .quickstart_early_exit import run_early_exit

    t0 = time.perf_counter()
    log("[+] early exit: streaming export, the cheapest rule within 0.5 points on the held-out split"
        + (", batch-1 latency" if bench else ""))
    early = run_early_exit(ref.model, spec, ref.T, ref.x, ref.labels, out, export_dir, bench, bench_iters, threads,
                           log)
    files["early_exit_export"] = early["export"]
    seconds["early_exit"] = round(time.perf_counter() - t0, 2)
    return early


def run_quickstart(out: Path | str = DEFAULT_OUT, *, model_name: str = DEFAULT_MODEL,
                   formats: Sequence[str] = ("torchscript", "onnx", "pt2"), bench: bool = True,
                   bench_batches: Sequence[int] = (1, 32), bench_iters: int = 20, bench_warmup: int = 3,
                   threads: Optional[int] = None, log: Callable[[str], None] = print,
                   precision: str = "float32", target: str = "onnxruntime-cpu") -> QuickstartResult:
    """``precision="int8"``: the export is the quantised ONNX model (calibrated on the model's training split,
    :mod:`dsr_deploy.export.int8`) in the forms ``target`` picks (default: ONNX Runtime's CPU, the runtime the
    quickstart runs it on), verified with the int8 rule; PyTorch's float32 accuracy is reported next to the int8
    artifacts'."""
    from . import models
    from .export import ExportOptions, export_model
    from .io import atomic_write_text, check_writable_dir
    from .runtime import available_backends
    from .verify import verify_folder

    out = Path(out)
    if precision not in PRECISIONS:
        raise UserError(f"unknown --precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    check_writable_dir(out)
    spec = f"zoo:{model_name}"
    if not models.describe(model_name).get("checkpoint"):
        raise UserError(f"quickstart needs a zoo model with shipped weights; {spec} has none")
    seconds: Dict[str, float] = {}
    files: Dict[str, str] = {}
    t0 = time.perf_counter()
    ref = _reference(model_name, out, files, log)
    seconds["data_and_pytorch"] = round(time.perf_counter() - t0, 2)

    t0 = time.perf_counter()
    export_dir = out / EXPORT_DIR
    shape = (ref.T, EXPORT_EXAMPLE_BATCH) + tuple(ref.x.shape[2:])
    if precision == "int8":
        formats = ("onnx",)  # calibrated on the zoo model's training split (export_model loads it)
    log(f"[2/5] export to {', '.join(formats)} ({precision}, target {target}) -> {export_dir}")
    manifest = export_model(ref.model, shape, export_dir, ExportOptions(formats=tuple(formats), precision=precision,
                                                                         target=target), spec=spec, force=True,
                            progress=lambda m: log(f"      {m}"))
    files["export"] = str(export_dir)
    files["manifest"] = str(export_dir / "manifest.json")
    for art in manifest.artifacts:
        files[f"artifact:{art.get('format')}"] = str(export_dir / art["path"])
    seconds["export"] = round(time.perf_counter() - t0, 2)

    t0 = time.perf_counter()
    log("[3/5] verify every artifact on every available backend (held-out data + one direct-encoded input)")
    report = verify_folder(export_dir, input_file=str(out / HELDOUT_INPUT), labels_file=str(out / HELDOUT_LABELS),
                           max_accuracy_drop=MAX_ACCURACY_DROP, progress=lambda m: log(f"      {m}"))
    atomic_write_text(out / VERIFY_REPORT, json.dumps(report, indent=2) + "\n")
    files["verify_report"] = str(out / VERIFY_REPORT)
    seconds["verify"] = round(time.perf_counter() - t0, 2)

    t0 = time.perf_counter()
    log("[4/5] held-out accuracy of each artifact")
    rows = _accuracy_rows(export_dir, ref, log)
    seconds["accuracy"] = round(time.perf_counter() - t0, 2)

    bench_doc = None
    if bench:
        t0 = time.perf_counter()
        log(f"[5/5] benchmark: batch {', '.join(map(str, bench_batches))}, T={ref.T}, {bench_iters} iterations each")
        bench_doc = _benchmark(ref.model, export_dir, manifest, [r for r in rows if r.status == "ok"], ref.T,
                               shape, bench_batches, bench_iters, bench_warmup, threads)
        atomic_write_text(out / BENCH_REPORT, json.dumps(bench_doc, indent=2) + "\n")
        files["bench_report"] = str(out / BENCH_REPORT)
        seconds["bench"] = round(time.perf_counter() - t0, 2)
    else:
        log("[5/5] benchmark skipped (--no-bench)")
    early = None
    if precision == "float32" and "onnx" in formats:  # each image stops when its answer is settled
        early = _early_exit(ref, spec, out, export_dir, bench, bench_iters, threads, files, seconds, log)
    result = QuickstartResult(out=out, model=model_name, T=ref.T, heldout=len(ref.labels),
                              pytorch_accuracy=ref.accuracy, manifest=manifest, verify=report, accuracy=rows,
                              bench=bench_doc, files=files, seconds=seconds, backends=available_backends(),
                              native=_native_summary(), precision=precision, early_exit=early)
    files["summary"] = str(out / SUMMARY)
    atomic_write_text(out / SUMMARY, json.dumps(result.to_dict(), indent=2) + "\n")
    return result


def _benchmark(model, export_dir: Path, manifest: dict, ok_rows: List[AccuracyRow], T: int, shape: tuple,
               batches: Sequence[int], iters: int, warmup: int, threads: Optional[int] = None) -> dict:
    from . import bench as B
    from .runtime import load_runner, variant_options

    opts = {"threads": threads} if threads else {}  # every runner the same intra-op thread count
    entries = [B.BenchEntry("pytorch eager", load_runner(model, backend="torch", input_shape=list(shape), **opts))]
    seen = set()
    for r in ok_rows:
        if (r.artifact, r.backend, r.variant) in seen:
            continue
        seen.add((r.artifact, r.backend, r.variant))
        label = f"{r.format}/{r.backend}" + (f" ({r.variant})" if r.variant else "")
        entries.append(B.BenchEntry(label, load_runner(export_dir / r.artifact, backend=r.backend, **opts,
                                                       **variant_options(r.backend, r.variant))))
    result = B.run_benchmark(entries, list(batches), [T], warmup=warmup, iters=iters, input_shape=list(shape),
                             neurons=B.neurons_from_manifest(manifest), artifact=str(export_dir),
                             settings_extra={"threads": threads})
    for e in entries:
        e.runner.release()
    return result.to_dict()


def bench_from_dict(doc: dict):
    from . import bench as B

    return B.BenchResult(artifact=doc.get("artifact", ""), settings=doc.get("settings", {}),
                         entries=doc.get("entries", {}), rows=doc.get("results", []),
                         machine=doc.get("machine", {}), libraries=doc.get("libraries", {}),
                         created=doc.get("created", ""))
