"""``dsr-deploy build-engine``: a TensorRT engine from an ONNX model (see dsr_deploy/engine.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .validate import emit_json


def register(app: typer.Typer) -> None:
    @app.command("build-engine")
    def build_engine(
        model: Path = typer.Argument(..., help="The ONNX model (dsr nodes map to the dsr TensorRT plugin)."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Engine file to write (default: MODEL.plan)."),
        fp16: bool = typer.Option(False, "--fp16",
                                  help="Allow FP16 kernels for a float32 model (TensorRT 10 only; TensorRT 11 is "
                                       "strongly typed: export --precision float16)."),
        batch: Optional[str] = typer.Option(None, "--batch", help="MIN,OPT,MAX of a dynamic batch dimension."),
        timesteps: Optional[str] = typer.Option(None, "--timesteps", "-T",
                                                help="MIN,OPT,MAX of a dynamic time dimension."),
        workspace: Optional[int] = typer.Option(None, "--workspace", help="Builder workspace limit in MB."),
        timing_cache: Optional[Path] = typer.Option(None, "--timing-cache",
                                                    help="Read (if present) and update this timing cache file."),
        plugin: Optional[Path] = typer.Option(None, "--plugin", help="The dsr TensorRT plugin library "
                                              "(default: libdsr_trt_plugin.so from `dsr-deploy plugins build`)."),
        force: bool = typer.Option(True, "--force/--no-force", help="Overwrite an existing engine file."),
        allow_function_fallback: bool = typer.Option(
            False, "--allow-function-fallback", help="On TensorRT < 10.7 (whose parser always builds a dsr node from "
            "its model-local function, never the plugin): build the function bodies instead of refusing."),
        as_json: bool = typer.Option(False, "--json", help="Print the build summary as JSON."),
    ):
        """Build a TensorRT engine (needs TensorRT and an NVIDIA GPU) with a profile for dynamic T and batch."""
        from .. import engine as E

        summary = E.build_engine(model, out or model.with_suffix(".plan"), fp16=fp16,
                                 batch=E.parse_range(batch, "--batch"),
                                 timesteps=E.parse_range(timesteps, "--timesteps"), workspace_mb=workspace,
                                 timing_cache=timing_cache, plugin=plugin, force=force,
                                 allow_function_fallback=allow_function_fallback,
                                 log=lambda m: typer.secho(m, fg="yellow", err=True))
        if as_json:
            emit_json(json.dumps(summary, indent=2))
        else:
            c = summary["contents"]
            typer.echo(f"wrote {summary['engine']} (TensorRT {summary['tensorrt']}, {summary['precision']}; dsr "
                       f"layers: {c['dsr_path']}, {c['plugin_layers']} plugin layer(s) for {c['dsr_nodes']} dsr "
                       f"node(s), {c['loops']} loop(s))")
