"""``dsr-deploy build-engine``: a TensorRT engine from an ONNX model (see dsr_deploy/engine.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("build-engine")
    def build_engine(
        model: Path = typer.Argument(..., help="The ONNX model (dsr nodes map to the dsr TensorRT plugin)."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Engine file to write (default: MODEL.plan)."),
        fp16: bool = typer.Option(False, "--fp16", help="Allow FP16 kernels (TensorRT 10; TensorRT 11 is strongly typed)."),
        batch: Optional[str] = typer.Option(None, "--batch", help="MIN,OPT,MAX of a dynamic batch dimension."),
        timesteps: Optional[str] = typer.Option(None, "--timesteps", "-T",
                                                help="MIN,OPT,MAX of a dynamic time dimension."),
        workspace: Optional[int] = typer.Option(None, "--workspace", help="Builder workspace limit in MB."),
        timing_cache: Optional[Path] = typer.Option(None, "--timing-cache",
                                                    help="Read (if present) and update this timing cache file."),
        plugin: Optional[Path] = typer.Option(None, "--plugin", help="The dsr TensorRT plugin library "
                                              "(default: libdsr_trt_plugin.so from `dsr-deploy plugins build`)."),
        force: bool = typer.Option(True, "--force/--no-force", help="Overwrite an existing engine file."),
        as_json: bool = typer.Option(False, "--json", help="Print the build summary as JSON."),
    ):
        """Build a TensorRT engine (needs TensorRT and an NVIDIA GPU) with a profile for dynamic T and batch."""
        from .. import engine as E

        summary = E.build_engine(model, out or model.with_suffix(".plan"), fp16=fp16,
                                 batch=E.parse_range(batch, "--batch"),
                                 timesteps=E.parse_range(timesteps, "--timesteps"), workspace_mb=workspace,
                                 timing_cache=timing_cache, plugin=plugin, force=force,
                                 log=lambda m: typer.secho(m, fg="yellow", err=True))
        if as_json:
            typer.echo(json.dumps(summary, indent=2))
        else:
            typer.echo(f"wrote {summary['engine']} (TensorRT {summary['tensorrt']})")
