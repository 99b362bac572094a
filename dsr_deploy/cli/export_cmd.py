"""``dsr-deploy export``: TorchScript, ONNX and torch.export artifacts of a MODEL, with their manifest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import UserError
from .common import SET_HELP, console, err_console, neuron_table, warn_assumed

ORDER = 20  # place in `dsr-deploy --help` (after info)


def _max_opset() -> int:
    """The newest ONNX opset both torch.onnx and the onnx package here support."""
    import onnx

    try:
        from torch.onnx import _constants

        torch_max = int(_constants.ONNX_MAX_OPSET)
    except (ImportError, AttributeError):
        torch_max = onnx.defs.onnx_opset_version()
    return min(torch_max, onnx.defs.onnx_opset_version())


def _warn_non_finite(model) -> None:
    """One warning line when the weights hold NaN / infinity: the export works, its outputs will not."""
    from ..numerics import non_finite_parameters

    bad = non_finite_parameters(model)
    if bad:
        more = f" (+{len(bad) - 5} more)" if len(bad) > 5 else ""
        err_console().print(f"[yellow]warning:[/yellow] non-finite values (NaN or inf) in {', '.join(bad[:5])}"
                             f"{more}; the exported model will compute NaN", markup=True, highlight=False,
                             soft_wrap=True)


def _spec_file(model: str) -> Optional[Path]:
    """The file of a ``path/to/file.py:factory`` MODEL spec, if it is one."""
    where = model.rpartition(":")[0]
    return Path(where) if where.endswith(".py") and Path(where).is_file() else None


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export(
        model: str = typer.Argument(..., help="zoo:NAME, package.module:factory or path/to/file.py:factory"),
        input_shape: Optional[str] = typer.Option(None, "--input-shape", help="T,B,C,H,W (default: the zoo's)"),
        fmt: str = typer.Option("all", "--format", help="torchscript | onnx | pt2 | all (comma-separated allowed)"),
        out: Path = typer.Option(..., "--out", help="output folder"),
        checkpoint: Optional[Path] = typer.Option(None, "--checkpoint",
                                                  help="state dict (loaded with weights_only=True)"),
        lowering: str = typer.Option("function", "--lowering", help="ONNX: function (dsr nodes + function "
                                     "fallback) | portable (standard ops only)"),
        opset: int = typer.Option(18, "--opset", help="ONNX opset (>= 17)"),
        function_body: str = typer.Option("scan", "--function-body", help="ONNX function body: scan (dynamic T) | "
                                          "unrolled (fixed T)"),
        static_batch: bool = typer.Option(False, "--static-batch", help="fix the batch size to the example's"),
        aot: bool = typer.Option(False, "--aot", help="pt2: also compile an AOTInductor package (model.aoti.pt2)"),
        force: bool = typer.Option(False, "--force", help="overwrite an existing output folder"),
        trust_pickle: bool = typer.Option(False, "--trust-pickle", help="allow a checkpoint holding a pickled "
                                          "model (runs code from the file)"),
        as_json: bool = typer.Option(False, "--json", help="print the manifest as JSON"),
        mode: str = typer.Option("multistep", "--mode", help="multistep ([T, B, ...] in one call) | streaming "
                                 "(one time step per call, membranes as I/O: x_t, v_in_i -> y_t, v_out_i)"),
        settings: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
        layout: str = typer.Option("TB", "--layout", help="artifact input (and spike output) layout: TB "
                                   "[T, B, ...] | BT [B, T, ...]"),
        encode: str = typer.Option("none", "--encode", help="none | direct: the artifact takes a static [B, ...] "
                                   "input and repeats it T times inside (the authors' CIFAR/ImageNet input)"),
        readout: str = typer.Option("none", "--readout", help="none (spike train out) | mean (logits [B, classes]: "
                                    "firing rate over T, the authors' IF readout) | lif-rate (the authors' LIF "
                                    "weighted rate)"),
        precision: str = typer.Option("float32", "--precision", help="ONNX activations and dsr nodes in float32 | "
                                      "float16 | bfloat16 (membranes stay float32, as in the kernels; for "
                                      "TensorRT 11's strongly typed networks) | int8 (quantised Q/DQ graph, spikes "
                                      "exact, needs --calibration); non-float32 needs --format onnx"),
        calibration: Optional[Path] = typer.Option(None, "--calibration", help="--precision int8: inputs as the "
                                                   "model takes them (.npy, any number along the batch "
                                                   "dimension; default for zoo:digits-cnn: its training split)"),
        int8_all_layers: bool = typer.Option(False, "--int8-all-layers", help="--precision int8: quantise the "
                                             "analog first layer and the readout too (float32 by default)"),
        int8_neuron: str = typer.Option("qdq", "--int8-neuron", help="--precision int8: qdq (Q/DQ around the "
                                        "float32 dsr node) | quantized (dsr ops on the current codes giving spike "
                                        "codes: same results, faster with the custom-op library); verify "
                                        "teacher-forces both"),
        int8_activations: str = typer.Option("uint8", "--int8-activations", help="--precision int8: uint8 "
                                             "(asymmetric currents; ONNX Runtime) | int8 (signed, zero point 0: "
                                             "the form TensorRT's build-engine takes)"),
        int8_layout: str = typer.Option("nchw", "--int8-layout", help="--precision int8: nchw (portable Q/DQ "
                                        "graph: ONNX Runtime, TensorRT) | nhwc (channels-last "
                                        "com.microsoft.QLinearConv, no transposes between layers: fastest on "
                                        "ONNX Runtime's CPU provider, runs only there; same results)"),
    ):
        """Export a DSR network to TorchScript, ONNX and/or torch.export (pt2) artifacts with a manifest."""
        from ..export import check_input_shape, export_model, formats
        from ..io import check_output_target
        from ..model_spec import load_model, parse_set_options, parse_shape

        # Before any expensive work: an empty / current folder, an existing one without --force, or one holding
        # the checkpoint or the model file (--force would delete what this command reads).
        check_output_target(out, force=force, protect=(checkpoint, _spec_file(model)))
        if mode not in ("multistep", "streaming"):
            raise UserError(f"unknown --mode {mode!r}; choose multistep or streaming")
        if mode == "streaming":
            from ..streaming import register_formats

            register_formats()
        names = [f.strip() for f in fmt.split(",") if f.strip()]
        known = list(formats(mode))
        if not names or any(f not in known + ["all"] for f in names):
            raise UserError(f"unknown --format {fmt!r}; choose from {', '.join(known)} or all")
        wanted = known if "all" in names else names
        from ..export import check_precision

        check_precision(precision, wanted)
        if precision != "int8" and (calibration is not None or int8_all_layers or int8_neuron != "qdq"
                                    or int8_activations != "uint8" or int8_layout != "nchw"):
            raise UserError("--calibration, --int8-all-layers, --int8-neuron, --int8-activations and --int8-layout "
                            "apply to "
                            "--precision int8")
        if lowering not in ("function", "portable"):
            raise UserError(f"unknown --lowering {lowering!r}; choose function or portable")
        if function_body not in ("scan", "unrolled"):
            raise UserError(f"unknown --function-body {function_body!r}; choose scan or unrolled")
        if not 17 <= opset <= _max_opset():
            raise UserError(f"--opset must be >= 17 and <= {_max_opset()} (what torch.onnx and onnx here "
                            f"support), got {opset}")
        if aot and "pt2" not in wanted:
            raise UserError("--aot compiles the pt2 export; add pt2 to --format")
        from ..io_adapter import io_record

        io_record(1, layout, encode, readout)  # bad options fail before any work
        if mode == "streaming" and (layout, encode, readout) != ("TB", "none", "none"):
            raise UserError("--layout, --encode and --readout apply to multi-step exports, not to --mode streaming")
        shape = parse_shape(input_shape) if input_shape is not None else None  # '' is an error, as ',,,' is
        if shape is not None:
            check_input_shape(shape)
        from ..io import check_can_create

        check_can_create(out.parent if out.parent != Path("") else Path("."))  # creates nothing yet
        set_opts = parse_set_options(settings)
        if shape is not None and model.strip().startswith("zoo:") and "T" not in set_opts:
            set_opts["T"] = str(shape[0])  # a zoo network is built for the T of the input shape given
        loaded = load_model(model, str(checkpoint) if checkpoint else None, trust_pickle, settings=set_opts)
        warn_assumed(loaded)
        _warn_non_finite(loaded.model)
        if shape is None:
            if loaded.default_input_shape is None:
                raise UserError("--input-shape T,B,... is required for a model outside the zoo")
            shape = loaded.default_input_shape
        extra: dict = {}
        if precision == "int8":
            from ..export.int8.rewrite import load_calibration

            extra = {"calibration": load_calibration(calibration, loaded.spec, shape, layout, encode),
                     "int8_all_layers": int8_all_layers, "int8_neuron": int8_neuron,
                     "int8_activations": int8_activations, "int8_layout": int8_layout}
        err = err_console()
        progress = None if as_json else (lambda msg: err.print(f"[dim]{msg}[/dim]"))
        if mode == "streaming":
            from ..streaming import export_streaming

            manifest = export_streaming(loaded.model, shape, out, formats_=wanted, spec=loaded.spec,
                                        checkpoint=loaded.checkpoint, static_batch=static_batch, force=force,
                                        progress=progress, model_info=loaded.record(), precision=precision,
                                        extra_options=extra)
        else:
            manifest = export_model(
                loaded.model, shape, out, formats_=wanted, spec=loaded.spec, checkpoint=loaded.checkpoint,
                lowering=lowering, opset=opset, function_body=function_body, static_batch=static_batch, aot=aot,
                force=force, trust_pickle=trust_pickle, progress=progress, model_info=loaded.record(),
                io=io_record(shape[0], layout, encode, readout), precision=precision, extra_options=extra,
            )
        if as_json:
            typer.echo(json.dumps(manifest, indent=2))
            return
        from rich.table import Table

        c = console()
        c.print(f"[bold]exported[/bold] {loaded.spec} -> {out}  (input {manifest['input_shape']}, T={manifest['T']}, "
                f"{'dynamic' if not static_batch else 'static'} batch"
                + (f"; streaming: {', '.join(manifest['inputs'])} -> {', '.join(manifest['outputs'])})"
                   if mode == "streaming" else ")")
                + ("; io: " + ", ".join(f"{k}={v}" for k, v in manifest["io"].items() if k != "source")
                   if manifest.get("io") else ""))
        t = Table("format", "file", "details", title="artifacts")
        for a in manifest["artifacts"]:
            details = ", ".join(f"{k}={v}" for k, v in a.items() if k not in ("format", "path"))
            t.add_row(a["format"], a["path"], details)
        c.print(t)
        c.print(neuron_table(manifest["neurons"], f"{len(manifest['neurons'])} DSR neuron layers"))

