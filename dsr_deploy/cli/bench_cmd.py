"""``dsr-deploy bench``: latency and throughput of one model on several backends, side by side.

parse (the flags) -> request (:class:`BenchRequest`: every flag checked before any work) -> call (the runners,
:func:`dsr_deploy.bench.run_benchmark`) -> render (:func:`dsr_deploy.cli.render.bench_report`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, List, Optional

import typer

from ..errors import UserError

Artifact = Annotated[str, typer.Argument(help="A model file (.onnx, .ts, .pt2, .plan), an export folder, or a model "
                                         "spec (zoo:NAME) for eager torch.")]
Backends = Annotated[Optional[List[str]], typer.Option(
    "--backend", "-b", help="Backends to compare, in order (the first is the baseline); repeat or comma-separate. "
    "torch, torchscript, pt2, onnxruntime, onnxruntime:fallback, onnxruntime:custom, onnxruntime:iobinding, "
    "tensorrt. Default: every backend the folder has an artifact for.")]
Batch = Annotated[str, typer.Option("--batch", help="Batch sizes, comma-separated.")]
Timesteps = Annotated[Optional[str], typer.Option("--timesteps", "-T", help="Time steps, comma-separated (default: "
                                                  "the model's T).")]
Warmup = Annotated[int, typer.Option("--warmup", help="Untimed runs before timing each configuration.")]
Iters = Annotated[Optional[int], typer.Option("--iters", help="Timed runs per configuration (default 20).")]
Seconds = Annotated[Optional[float], typer.Option("--seconds", help="Time budget per configuration instead of "
                                                  "--iters.")]
Device = Annotated[str, typer.Option("--device", help="cpu or cuda[:N] (tensorrt always runs on cuda).")]
Threads = Annotated[Optional[int], typer.Option("--threads", help="Intra-op threads for torch / ONNX Runtime.")]
InputShape = Annotated[Optional[str], typer.Option("--input-shape", help="T,B,C,H,W when the artifact does not say "
                                                   "its input shape.")]
Neurons = Annotated[Optional[int], typer.Option("--neurons", help="Neurons per sample per time step (for "
                                                "neuron-steps/s; default: from the manifest or the model).")]
Memcpy = Annotated[bool, typer.Option("--memcpy/--no-memcpy", help="Also time a copy of the same bytes.")]
JsonOut = Annotated[Optional[Path], typer.Option("--json", help="Write the results as JSON (docs/bench-schema.md).")]
CsvOut = Annotated[Optional[Path], typer.Option("--csv", help="Write the results as CSV (docs/bench-schema.md).")]
Plot = Annotated[Optional[Path], typer.Option("--plot", help="Write a PNG: latency against batch per backend.")]
Settings = Annotated[Optional[List[str]], typer.Option("--set", help="KEY=VALUE for a MODEL spec's factory "
                                                       "(repeatable; e.g. --set T=5 --set num_classes=100).")]
TrustPickle = Annotated[bool, typer.Option("--trust-pickle", help="Allow pickled Python objects in a .pt2 archive "
                                           "(runs code from the file).")]
EarlyExit = Annotated[Optional[str], typer.Option(
    "--early-exit", help="an export folder run with all T steps and with this exit rule (manifest: the one "
    "exit-calibrate recorded; or e.g. margin>=0.25), side by side; needs --input")]
InputFile = Annotated[Optional[Path], typer.Option("--input", help="--early-exit: .npy inputs as the artifact takes "
                                                   "them (how early a sample settles depends on it)")]
LabelsFile = Annotated[Optional[Path], typer.Option("--labels", help="--early-exit: .npy labels (accuracy)")]
Compare = Annotated[Optional[List[str]], typer.Option(
    "--compare", help="Another artifact or export folder (e.g. the --precision int8 export of the same model) on "
    "the same backends in the same run; labels name each precision.")]


@dataclass
class BenchRequest:
    """What ``dsr-deploy bench`` was asked, checked (:meth:`check`) before any runner loads."""

    artifact: str
    backend: Optional[List[str]] = None
    batch: str = "1,8,32"
    timesteps: Optional[str] = None
    warmup: int = 3
    iters: Optional[int] = None
    seconds: Optional[float] = None
    device: str = "cpu"
    threads: Optional[int] = None
    input_shape: Optional[str] = None
    neurons: Optional[int] = None
    memcpy: bool = True
    json_out: Optional[Path] = None
    csv_out: Optional[Path] = None
    plot: Optional[Path] = None
    settings: Optional[List[str]] = None
    trust_pickle: bool = False
    compare: Optional[List[str]] = None
    # resolved by check()
    batches: List[int] = field(default_factory=list)
    ts: Optional[List[int]] = None
    shape: Optional[List[int]] = None
    is_spec: bool = False
    model_settings: dict = field(default_factory=dict)

    def check(self) -> BenchRequest:
        from .. import bench as B
        from .. import runtime as R
        from ..io import check_output_file
        from ..model_spec import parse_set_options

        if self.iters is not None and self.seconds is not None:
            raise UserError("give --iters or --seconds, not both")
        if self.seconds is not None and self.seconds <= 0:
            raise UserError(f"--seconds must be > 0, got {self.seconds}")
        if self.iters is None and self.seconds is None:
            self.iters = 20
        self.batches = B.parse_int_list(self.batch, "--batch")
        if not self.batches:
            raise UserError("--batch: give at least one batch size")
        self.ts = B.parse_int_list(self.timesteps, "--timesteps")
        self.shape = B.parse_int_list(self.input_shape, "--input-shape")
        if self.shape is not None and len(self.shape) < 3:
            raise UserError(f"--input-shape: expected T,B,... with at least 3 dims, got {self.input_shape}")
        for label, out in (("--json", self.json_out), ("--csv", self.csv_out), ("--plot", self.plot)):
            if out is not None:  # before the benchmark, not after it
                check_output_file(out, label)
        if self.plot is not None:
            from ..errors import require

            require("matplotlib", "bench", "bench --plot")
        self.is_spec = R.looks_like_spec(self.artifact) and not Path(self.artifact).exists()
        if not self.is_spec and not Path(self.artifact).exists():
            raise UserError(f"{self.artifact}: no such file or folder")
        if self.settings and not self.is_spec:
            raise UserError("--set applies to a MODEL spec (zoo:NAME, file.py:factory), not to an artifact or folder")
        self.model_settings = parse_set_options(self.settings)
        return self


def _targets(req: BenchRequest, manifest) -> list:
    """``[(artifact, [(label, backend, options)])]``: the artifact and each ``--compare`` one, on their backends."""
    from .. import bench as B
    from .. import runtime as R

    choices = B.parse_backends(req.backend)
    if not choices:
        names = (["torch"] if req.is_spec else R.backends_for(req.artifact))
        usable = R.available_backends()
        choices = [(n, n, {}) for n in names if usable.get(n) is None]
        if not choices:
            raise UserError(f"no usable backend for {req.artifact} (available here: "
                            f"{', '.join(n for n, why in usable.items() if why is None)})")
    targets = [(req.artifact, choices)]
    for other in req.compare or []:
        if not Path(other).exists():
            raise UserError(f"--compare {other}: no such file or folder")
        if R.is_export_folder(other):
            R.read_manifest(other)  # a broken manifest is the error, before any work
        targets.append((other, B.parse_backends(req.backend) or [(n, n, {}) for n in R.backends_for(other)
                                                                  if R.available_backends().get(n) is None]))
    return targets


def _entries(req: BenchRequest, manifest) -> list:
    """One loaded runner per (artifact, backend) to time."""
    from .. import bench as B
    from .. import runtime as R

    entries = []
    for target, target_choices in _targets(req, manifest):
        for label, name, opts in target_choices:
            opts = dict(opts)
            if name != "tensorrt":
                opts["device"] = req.device
            if req.threads:
                opts["threads"] = req.threads
            if name == "onnxruntime" and req.device.startswith("cuda"):
                opts.setdefault("io_binding", True)  # device-resident inputs/outputs: no host copies in the timing
            if name == "torch" and req.shape is not None:
                opts["input_shape"] = req.shape
            if name == "torch" and req.model_settings:
                opts["settings"] = req.model_settings
            opts["trust_pickle"] = req.trust_pickle
            if req.compare:
                label = f"{label} ({_precision_of(target)})"
            entries.append(B.BenchEntry(label, R.load_runner(target, backend=name, **opts)))
    for e in entries:  # load before the progress bar, so a load error is the only output
        e.runner.ensure_loaded()
    return entries


def _neurons(req: BenchRequest, manifest, entries) -> Optional[int]:
    from .. import bench as B

    if req.neurons is not None:
        return req.neurons
    neurons = B.neurons_from_manifest(manifest)
    for e in entries if neurons is None else []:
        known = req.shape or getattr(e.runner, "example_shape", None)
        if e.runner.backend == "torch" and known:
            return B.count_neurons(e.runner.model, [known[0], 1, *known[2:]])
    return neurons


def run_cli(req: BenchRequest) -> Any:
    """The command's body (heavy imports here, not at CLI start-up); returns the BenchResult."""
    from .. import bench as B
    from .. import runtime as R
    from .render import bench_progress, bench_report

    req.check()
    # An export folder's manifest is read (and validated) first: a broken one is the error, not "no backend".
    manifest = R.read_manifest(req.artifact) if R.is_export_folder(req.artifact) else (
        None if req.is_spec else R.manifest_for(req.artifact))
    if req.shape is None and manifest is not None and manifest.input_shape is not None:
        from ..io_adapter import canonical_shape

        req.shape = [int(d) for d in canonical_shape(list(manifest.input_shape), manifest.io)]  # as [T, B, ...]
    entries = _entries(req, manifest)
    neurons = _neurons(req, manifest, entries)
    with bench_progress(req.iters) as progress:
        result = B.run_benchmark(entries, req.batches, req.ts, warmup=req.warmup, iters=req.iters,
                                 seconds=req.seconds, input_shape=req.shape, neurons=neurons,
                                 artifact=str(req.artifact), memcpy=req.memcpy, progress=progress,
                                 settings_extra={"device": req.device, "threads": req.threads})
    bench_report(result, json_out=req.json_out, csv_out=req.csv_out, plot=req.plot)
    failed = [r for r in result.rows if r["error"] and not r["error"].startswith("skipped")]
    if failed and len(failed) == len(result.rows):
        raise UserError(f"every configuration failed; first: {failed[0]['label']}: {failed[0]['error']}")
    return result


def _precision_of(target: str) -> str:
    """An artifact's precision for a --compare label: int8 / float16 / ... from its manifest, else float32."""
    from .. import runtime as R

    try:
        m = R.read_manifest(target) if R.is_export_folder(target) else R.manifest_for(target)
    except Exception:  # noqa: BLE001 - a label only: an unreadable manifest says nothing about precision
        m = None
    if m is None:
        return "float32"
    arts = [a for a in m.artifacts if isinstance(a, dict)]
    if not R.is_export_folder(target):
        arts = [a for a in arts if a.get("path") == Path(target).name]
    return next((str(a["precision"]) for a in arts if a.get("precision")), m.dtype)


def bench(artifact: Artifact, backend: Backends = None, batch: Batch = "1,8,32", timesteps: Timesteps = None,
          warmup: Warmup = 3, iters: Iters = None, seconds: Seconds = None, device: Device = "cpu",
          threads: Threads = None, input_shape: InputShape = None, neurons: Neurons = None, memcpy: Memcpy = True,
          json_out: JsonOut = None, csv_out: CsvOut = None, plot: Plot = None, settings: Settings = None,
          trust_pickle: TrustPickle = False, compare: Compare = None, early_exit: EarlyExit = None,
          input_file: InputFile = None, labels_file: LabelsFile = None):
    """Benchmark a model on several backends: latency percentiles, throughput, ratios, in one run."""
    if early_exit is not None or input_file is not None or labels_file is not None:
        from .exit_cmd import bench_early_exit_cli

        bench_early_exit_cli(artifact, early_exit, input_file, labels_file, backend=backend, batch=batch,
                             iters=iters, threads=threads, json_out=json_out)
        return
    run_cli(BenchRequest(artifact, backend, batch, timesteps, warmup, iters, seconds, device, threads, input_shape,
                         neurons, memcpy, json_out, csv_out, plot, settings, trust_pickle, compare))


def register(app: typer.Typer) -> None:
    app.command()(bench)
