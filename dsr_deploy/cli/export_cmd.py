"""``dsr-deploy export``: TorchScript, ONNX and torch.export artifacts of a MODEL, with their manifest.

parse (the flags, below) -> request (:class:`~dsr_deploy.export.ExportOptions`, validated before any work) ->
call (:func:`~dsr_deploy.export.export_model`, which validates the same way for Python callers) -> render
(:func:`dsr_deploy.cli.render.export_summary`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from .common import SET_HELP, err_console, warn_assumed

ORDER = 20  # place in `dsr-deploy --help` (after info)

# The flags (one line each in the command's signature).
Model = Annotated[str, typer.Argument(help="zoo:NAME, package.module:factory or path/to/file.py:factory")]
Out = Annotated[Path, typer.Option("--out", help="output folder")]
InputShape = Annotated[Optional[str], typer.Option("--input-shape", help="T,B,C,H,W (default: the zoo's)")]
Formats = Annotated[str, typer.Option("--format", help="torchscript | onnx | pt2 | all (comma-separated allowed)")]
Checkpoint = Annotated[Optional[Path], typer.Option("--checkpoint", help="state dict (loaded with weights_only=True)")]
Lowering = Annotated[Optional[str], typer.Option(
    "--lowering", help="ONNX: function (dsr nodes + function fallback, the default) | portable (standard ops only); "
    "--mode streaming: functional (the default) | ops (TorchScript on torch.ops.dsr)")]
Opset = Annotated[Optional[int], typer.Option("--opset", help="ONNX opset (>= 17; default 18, for bfloat16 22)")]
Body = Annotated[str, typer.Option("--function-body", help="ONNX function body: scan (dynamic T) | unrolled (fixed T)")]
StaticBatch = Annotated[bool, typer.Option("--static-batch", help="fix the batch size to the example's")]
Aot = Annotated[bool, typer.Option("--aot", help="pt2: also compile an AOTInductor package (model.aoti.pt2)")]
Force = Annotated[bool, typer.Option("--force", help="overwrite an existing output folder")]
TrustPickle = Annotated[bool, typer.Option("--trust-pickle", help="allow a checkpoint holding a pickled model (runs "
                                           "code from the file)")]
AsJson = Annotated[bool, typer.Option("--json", help="print the manifest as JSON")]
Mode = Annotated[str, typer.Option("--mode", help="multistep ([T, B, ...] in one call) | streaming (one time step per "
                                   "call, membranes as I/O: x_t, v_in_i -> y_t, v_out_i)")]
Settings = Annotated[Optional[List[str]], typer.Option("--set", help=SET_HELP)]
Layout = Annotated[str, typer.Option("--layout", help="artifact input (and spike output) layout: TB [T, B, ...] | BT "
                                     "[B, T, ...]")]
Encode = Annotated[str, typer.Option("--encode", help="none | direct: the artifact takes a static [B, ...] input and "
                                     "repeats it T times inside (the authors' CIFAR/ImageNet input)")]
Readout = Annotated[str, typer.Option("--readout", help="none (spike train out) | mean (logits [B, classes]: firing "
                                      "rate over T, the authors' IF readout) | lif-rate (the authors' LIF weighted "
                                      "rate)")]
PerStepReadout = Annotated[bool, typer.Option("--per-step-readout", help="with --readout: a second output "
                                             "readout_steps [T, B, classes], the readout after every step (early "
                                             "exit: dsr-deploy exit-calibrate)")]
Precision = Annotated[str, typer.Option(
    "--precision", help="ONNX activations and dsr nodes in float32 | float16 | bfloat16 (membranes stay float32, as "
    "in the kernels; for TensorRT 11's strongly typed networks) | int8 (quantised Q/DQ graph, spikes exact, needs "
    "--calibration); non-float32 needs --format onnx")]
Target = Annotated[str, typer.Option(
    "--target", help="the runtime the export is for: portable (default) | onnxruntime-cpu (int8: --int8-neuron "
    "quantized --int8-layout nhwc) | tensorrt (int8: --int8-activations int8 --int8-neuron quantized); explicit "
    "--int8-* flags override")]
Calibration = Annotated[Optional[Path], typer.Option(
    "--calibration", help="--precision int8: inputs as the model takes them (.npy, any number along the batch "
    "dimension; default for zoo:digits-cnn: its training split)")]
AllLayers = Annotated[Optional[bool], typer.Option(
    "--int8-all-layers/--no-int8-all-layers", help="--precision int8: quantise the analog first layer and the "
    "readout too (default: the --target's: yes for onnxruntime-cpu, float32 otherwise)")]
Neuron = Annotated[Optional[str], typer.Option(
    "--int8-neuron", help="--precision int8: qdq (Q/DQ around the float32 dsr node) | quantized (dsr ops on the "
    "current codes giving spike codes: same results, faster with the custom-op library); verify teacher-forces "
    "both (default: the --target's)")]
Activations = Annotated[Optional[str], typer.Option(
    "--int8-activations", help="--precision int8: uint8 (asymmetric currents; ONNX Runtime) | int8 (signed, zero "
    "point 0: the form TensorRT's build-engine takes) (default: the --target's)")]
Int8Layout = Annotated[Optional[str], typer.Option(
    "--int8-layout", help="--precision int8: nchw (portable Q/DQ graph: ONNX Runtime, TensorRT) | nhwc "
    "(channels-last com.microsoft.QLinearConv, no transposes between layers: fastest on ONNX Runtime's CPU "
    "provider, runs only there; same results) (default: the --target's)")]


def _spec_file(model: str) -> Optional[Path]:
    """The file of a ``path/to/file.py:factory`` MODEL spec, if it is one."""
    where = model.rpartition(":")[0]
    return Path(where) if where.endswith(".py") and Path(where).is_file() else None


def export(model: Model, out: Out, input_shape: InputShape = None, fmt: Formats = "all",
           checkpoint: Checkpoint = None, lowering: Lowering = None, opset: Opset = None, function_body: Body = "scan",
           static_batch: StaticBatch = False, aot: Aot = False, force: Force = False,
           trust_pickle: TrustPickle = False, as_json: AsJson = False, mode: Mode = "multistep",
           settings: Settings = None, layout: Layout = "TB", encode: Encode = "none", readout: Readout = "none",
           per_step_readout: PerStepReadout = False,
           precision: Precision = "float32", target: Target = "portable", calibration: Calibration = None,
           int8_all_layers: AllLayers = None, int8_neuron: Neuron = None, int8_activations: Activations = None,
           int8_layout: Int8Layout = None):
    """Export a DSR network to TorchScript, ONNX and/or torch.export (pt2) artifacts with a manifest."""
    from ..export import ExportOptions, Int8Options, IOOptions, check_input_shape, export_model
    from ..io import check_can_create, check_output_target
    from ..model_spec import load_model, parse_set_options, parse_shape
    from .render import export_summary, warn_non_finite

    # Before any expensive work: an empty / current folder, an existing one without --force, or one holding
    # the checkpoint or the model file (--force would delete what this command reads).
    check_output_target(out, force=force, protect=(checkpoint, _spec_file(model)))
    options = ExportOptions(
        formats=fmt, mode=mode, lowering=lowering, opset=opset, function_body=function_body,
        static_batch=static_batch, aot=aot, precision=precision, target=target,
        io=IOOptions(layout, encode, readout, per_step_readout),
        int8=Int8Options(calibration, int8_all_layers, int8_neuron, int8_activations, int8_layout)).validate()
    shape = parse_shape(input_shape) if input_shape is not None else None  # '' is an error, as ',,,' is
    if shape is not None:
        check_input_shape(shape)
    check_can_create(out.parent if out.parent != Path("") else Path("."))  # creates nothing yet
    set_opts = parse_set_options(settings)
    if shape is not None and model.strip().startswith("zoo:") and not {"T", "timesteps"} & set(set_opts):
        set_opts["T"] = str(shape[0])  # a zoo network is built for the T of the input shape given
    loaded = load_model(model, str(checkpoint) if checkpoint else None, trust_pickle, settings=set_opts)
    warn_assumed(loaded)
    warn_non_finite(loaded.model)
    if shape is None:
        if loaded.default_input_shape is None:
            from ..errors import UserError
            from ..input_hint import missing_shape_message

            raise UserError(missing_shape_message(loaded.model))
        shape = loaded.default_input_shape
    err = err_console()
    manifest = export_model(loaded.model, shape, out, options, spec=loaded.spec, checkpoint=loaded.checkpoint,
                            force=force, trust_pickle=trust_pickle, model_info=loaded.record(),
                            progress=None if as_json else (lambda msg: err.print(f"[dim]{msg}[/dim]")))
    export_summary(manifest, loaded.spec, out, as_json)


def register(app: typer.Typer) -> None:
    app.command("export")(export)
