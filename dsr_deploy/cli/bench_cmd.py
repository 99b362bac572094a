"""``dsr-deploy bench``: latency and throughput of one model on several backends, side by side."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def run_cli(*, artifact: str, backend, batch: str, timesteps, warmup: int, iters, seconds, device: str, threads,
            input_shape, neurons, memcpy: bool, json_out, csv_out, plot, settings=None,
            trust_pickle: bool = False, compare: Optional[List[str]] = None) -> object:
    """The command's body (heavy imports here, not at CLI start-up); returns the BenchResult."""
    from rich.console import Console

    from .. import bench as B
    from .. import runtime as R
    from ..errors import UserError

    if iters is not None and seconds is not None:
        raise UserError("give --iters or --seconds, not both")
    if seconds is not None and seconds <= 0:
        raise UserError(f"--seconds must be > 0, got {seconds}")
    if iters is None and seconds is None:
        iters = 20
    batches = B.parse_int_list(batch, "--batch")
    if not batches:
        raise UserError("--batch: give at least one batch size")
    ts = B.parse_int_list(timesteps, "--timesteps")
    shape = B.parse_int_list(input_shape, "--input-shape")
    if shape is not None and len(shape) < 3:
        raise UserError(f"--input-shape: expected T,B,... with at least 3 dims, got {input_shape}")
    from ..io import check_output_file

    for label, out in (("--json", json_out), ("--csv", csv_out), ("--plot", plot)):
        if out is not None:  # before the benchmark, not after it
            check_output_file(out, label)
    if plot is not None:
        from ..errors import require

        require("matplotlib", "bench", "bench --plot")

    is_spec = R.looks_like_spec(artifact) and not Path(artifact).exists()
    if not is_spec and not Path(artifact).exists():
        raise UserError(f"{artifact}: no such file or folder")
    if settings and not is_spec:
        raise UserError("--set applies to a MODEL spec (zoo:NAME, file.py:factory), not to an artifact or folder")
    from ..model_spec import parse_set_options

    model_settings = parse_set_options(settings)
    # An export folder's manifest is read (and validated) first: a broken one is the error, not "no backend".
    manifest = R.read_manifest(artifact) if R.is_export_folder(artifact) else (
        None if is_spec else R.manifest_for(artifact))
    choices = B.parse_backends(backend)
    if not choices:
        names = (["torch"] if is_spec else R.backends_for(artifact))
        usable = R.available_backends()
        choices = [(n, n, {}) for n in names if usable.get(n) is None]
        if not choices:
            raise UserError(f"no usable backend for {artifact} (available here: "
                            f"{', '.join(n for n, why in usable.items() if why is None)})")
    if shape is None and manifest is not None and manifest.input_shape is not None:
        from ..io_adapter import canonical_shape

        shape = [int(d) for d in canonical_shape(list(manifest.input_shape), manifest.io)]  # as [T, B, ...]
    entries = []
    # --compare: more artifacts (e.g. the int8 export of the same model) on the same backends, in the same run;
    # every row's label then names its artifact's precision.
    targets = [(artifact, choices)]
    for other in compare or []:
        if not Path(other).exists():
            raise UserError(f"--compare {other}: no such file or folder")
        if R.is_export_folder(other):
            R.read_manifest(other)  # a broken manifest is the error, before any work
        targets.append((other, B.parse_backends(backend) or [(n, n, {}) for n in R.backends_for(other)
                                                              if R.available_backends().get(n) is None]))
    for target, target_choices in targets:
        for label, name, opts in target_choices:
            opts = dict(opts)
            if name != "tensorrt":
                opts["device"] = device
            if threads:
                opts["threads"] = threads
            if name == "onnxruntime" and device.startswith("cuda"):
                opts.setdefault("io_binding", True)  # device-resident inputs/outputs: no host copies in the timing
            if name == "torch" and shape is not None:
                opts["input_shape"] = shape
            if name == "torch" and model_settings:
                opts["settings"] = model_settings
            opts["trust_pickle"] = trust_pickle
            if compare:
                label = f"{label} ({_precision_of(target)})"
            entries.append(B.BenchEntry(label, R.load_runner(target, backend=name, **opts)))
    for e in entries:  # load before the progress bar, so a load error is the only output
        e.runner.ensure_loaded()
    if neurons is None:
        neurons = B.neurons_from_manifest(manifest)
    if neurons is None:
        for e in entries:
            known = shape or getattr(e.runner, "example_shape", None)
            if e.runner.backend == "torch" and known:
                neurons = B.count_neurons(e.runner.model, [known[0], 1, *known[2:]])
                break

    import sys

    err = Console(stderr=True)
    out = Console(width=None if sys.stdout.isatty() else 200)  # a file or pipe gets the whole table
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as bar:
        tasks = {}

        def progress(event, **info):
            if event == "start":
                tasks["all"] = bar.add_task("configurations", total=info["total"])
                tasks["it"] = bar.add_task("iterations", total=info["iters"])
            elif event == "row":
                bar.reset(tasks["it"], total=iters)
                bar.update(tasks["it"], description=f"{info['label']} batch={info['batch']} T={info['timesteps']}")
            elif event == "iteration":
                bar.advance(tasks["it"])
            elif event == "row_done":
                bar.advance(tasks["all"])

        result = B.run_benchmark(entries, batches, ts, warmup=warmup, iters=iters, seconds=seconds,
                                 input_shape=shape, neurons=neurons, artifact=str(artifact), memcpy=memcpy,
                                 progress=progress, settings_extra={"device": device, "threads": threads})
    out.print(B.render_table(result))
    for label, desc in result.entries.items():
        if desc.get("dsr_ops"):
            out.print(f"[dim]{label}: dsr ops: {desc['dsr_ops']}[/dim]")
    if json_out:
        B.write_json(result, json_out)
        out.print(f"wrote {json_out}")
    if csv_out:
        B.write_csv(result, csv_out)
        out.print(f"wrote {csv_out}")
    if plot:
        B.write_plot(result, plot)
        out.print(f"wrote {plot}")
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


def register(app: typer.Typer) -> None:
    @app.command()
    def bench(
        artifact: str = typer.Argument(..., help="A model file (.onnx, .ts, .pt2, .plan), an export folder, "
                                                 "or a model spec (zoo:NAME) for eager torch."),
        backend: Optional[List[str]] = typer.Option(
            None, "--backend", "-b", help="Backends to compare, in order (the first is the baseline); repeat or "
            "comma-separate. torch, torchscript, pt2, onnxruntime, onnxruntime:fallback, onnxruntime:custom, "
            "onnxruntime:iobinding, tensorrt. Default: every backend the folder has an artifact for."),
        batch: str = typer.Option("1,8,32", "--batch", help="Batch sizes, comma-separated."),
        timesteps: Optional[str] = typer.Option(None, "--timesteps", "-T",
                                                help="Time steps, comma-separated (default: the model's T)."),
        warmup: int = typer.Option(3, "--warmup", help="Untimed runs before timing each configuration."),
        iters: Optional[int] = typer.Option(None, "--iters", help="Timed runs per configuration (default 20)."),
        seconds: Optional[float] = typer.Option(None, "--seconds",
                                                help="Time budget per configuration instead of --iters."),
        device: str = typer.Option("cpu", "--device", help="cpu or cuda[:N] (tensorrt always runs on cuda)."),
        threads: Optional[int] = typer.Option(None, "--threads", help="Intra-op threads for torch / ONNX Runtime."),
        input_shape: Optional[str] = typer.Option(None, "--input-shape",
                                                  help="T,B,C,H,W when the artifact does not say its input shape."),
        neurons: Optional[int] = typer.Option(None, "--neurons", help="Neurons per sample per time step "
                                              "(for neuron-steps/s; default: from the manifest or the model)."),
        memcpy: bool = typer.Option(True, "--memcpy/--no-memcpy", help="Also time a copy of the same bytes."),
        json_out: Optional[Path] = typer.Option(None, "--json",
                                                help="Write the results as JSON (docs/bench-schema.md)."),
        csv_out: Optional[Path] = typer.Option(None, "--csv", help="Write the results as CSV (docs/bench-schema.md)."),
        plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG: latency against batch per backend."),
        settings: Optional[List[str]] = typer.Option(None, "--set", help="KEY=VALUE for a MODEL spec's factory "
                                                     "(repeatable; e.g. --set T=5 --set num_classes=100)."),
        trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow pickled Python objects in a .pt2 "
                                          "archive (runs code from the file)."),
        compare: Optional[List[str]] = typer.Option(None, "--compare", help="Another artifact or export folder "
                                                    "(e.g. the --precision int8 export of the same model) on the "
                                                    "same backends in the same run; labels name each precision."),
    ):
        """Benchmark a model on several backends: latency percentiles, throughput, ratios, in one run."""
        run_cli(artifact=artifact, backend=backend, batch=batch, timesteps=timesteps, warmup=warmup,
                iters=iters, seconds=seconds, device=device, threads=threads, input_shape=input_shape,
                neurons=neurons, memcpy=memcpy, json_out=json_out, csv_out=csv_out, plot=plot, settings=settings,
                trust_pickle=trust_pickle, compare=compare)
