"""``dsr-deploy quickstart [--out DIR]``: export, verify, score and benchmark the shipped trained network."""

from __future__ import annotations

from pathlib import Path

import typer

from .validate import emit_json

ORDER = 5  # place in `dsr-deploy --help`: the main job, right after info


def register(app: typer.Typer) -> None:
    @app.command()
    def quickstart(
        out: Path = typer.Option(Path("quickstart-out"), "--out", help="output folder (created; its export/ "
                                 "and report files are overwritten)"),
        model: str = typer.Option("digits-cnn", "--model", help="zoo model with shipped weights"),
        bench: bool = typer.Option(True, "--bench/--no-bench", help="run the short benchmark"),
        iters: int = typer.Option(20, "--iters", min=1, help="benchmark iterations per configuration"),
        batch: str = typer.Option("1,32", "--batch", help="benchmark batch sizes, comma-separated"),
        threads: int = typer.Option(1, "--threads", min=0, help="benchmark: intra-op threads of every backend "
                                    "(default 1: stable on small shared machines; 0: each library's default)"),
        precision: str = typer.Option("float32", "--precision", help="float32 | int8: run on the quantised ONNX "
                                      "export (calibrated on the training split) and report its held-out "
                                      "accuracy next to float32's"),
        target: str = typer.Option("onnxruntime-cpu", "--target", help="--precision int8: the runtime the int8 "
                                   "forms are for (portable | onnxruntime-cpu | tensorrt; export --target)"),
        as_json: bool = typer.Option(False, "--json", help="print the summary as JSON (progress goes to stderr)"),
    ):
        """Run the whole product on the shipped trained network (DSR-IF CNN, 8x8 digits): export to TorchScript,
        ONNX and pt2, verify every backend's neurons bit-exact and each artifact's agreement, report each artifact's
        held-out accuracy, benchmark the backends."""
        import json
        import sys

        from rich.console import Console

        from ..bench import parse_int_list
        from ..errors import UserError
        from ..quickstart import run_quickstart
        from .render import quickstart_report as render

        batches = parse_int_list(batch, "--batch")
        if not batches:
            raise UserError("--batch: give at least one batch size")
        err = Console(stderr=True)
        # a file or pipe gets the whole tables (rich would wrap them at 80 columns)
        console = err if as_json else Console(width=None if sys.stdout.isatty() else 160)
        result = run_quickstart(out, model_name=model, bench=bench, bench_batches=batches, bench_iters=iters,
                                threads=threads or None, precision=precision, target=target,
                                log=lambda m: console.print(m, markup=False, highlight=False))
        if as_json:
            emit_json(json.dumps(result.to_dict(), indent=2))
        else:
            render(result, console)
        if not result.passed:
            sys.exit(1)
