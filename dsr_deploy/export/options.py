"""The export request: every option of ``dsr-deploy export`` as one typed object, checked in one place.

:class:`ExportOptions` is what the CLI builds from its flags, what :func:`dsr_deploy.export.export_model` takes,
and what every writer reads (``ExportContext.options``). :meth:`ExportOptions.validate` is the one check of the
options themselves (choices, ranges, combinations); it returns the *resolved* options: ``"all"`` expanded to the
mode's formats, the mode's default lowering filled in, the int8 forms picked by ``target`` where no flag gave
them. The checks that need the model (its input shape, the calibration data against it) run in ``export_model``.

Adding an option: a field here (with its check in :meth:`validate`), a flag in ``cli/export_cmd.py``, and the
writer that reads ``ctx.options.<field>``; the manifest records what the writers return.

Plain dataclasses, not pydantic: no dependency of dsr-deploy brings pydantic, and its compiled core would be a new
requirement of every install (also of the torch-free manifest reader) for checks that are a few lines each here
and whose one-line messages name the CLI flag, as every other user error does.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Dict, Optional, Tuple

from ..errors import UserError
from .formats import formats, modes
from .int8.options import TARGETS, Int8Options

MODES = ("multistep", "streaming")
#: ``export --precision``: the dtype of the exported activations; ``int8``: a quantised Q/DQ graph with float32
#: input and output (:mod:`dsr_deploy.export.int8`).
PRECISIONS = ("float32", "float16", "bfloat16", "int8")
#: The formats that honour a precision other than float32.
HALF_FORMATS = ("onnx",)
#: Per mode: the lowerings (the first is the default). Multi-step: ONNX with dsr nodes + function fallback, or
#: standard ops only; streaming: the scripted reference step or the native ops (TorchScript).
LOWERINGS = {"multistep": ("function", "portable"), "streaming": ("functional", "ops")}
FUNCTION_BODIES = ("scan", "unrolled")
MIN_OPSET = 17
DEFAULT_OPSET = 18


def max_opset() -> int:
    """The newest ONNX opset both torch.onnx and the onnx package here support."""
    import onnx

    try:
        from torch.onnx import _constants

        torch_max = int(_constants.ONNX_MAX_OPSET)
    except (ImportError, AttributeError):
        torch_max = onnx.defs.onnx_opset_version()
    return min(torch_max, onnx.defs.onnx_opset_version())


@dataclass(frozen=True)
class IOOptions:
    """``--layout TB|BT``, ``--encode none|direct``, ``--readout none|mean|lif-rate``, ``--per-step-readout``: what
    the artifact takes and returns (:mod:`dsr_deploy.io_adapter`)."""

    layout: str = "TB"
    encode: str = "none"
    readout: str = "none"
    per_step_readout: bool = False  # --per-step-readout: also the readout after every step (early exit)

    @property
    def default(self) -> bool:
        return (self.layout, self.encode, self.readout, self.per_step_readout) == ("TB", "none", "none", False)

    def record(self, T: int) -> Optional[Dict[str, Any]]:
        """The manifest's ``io`` record for a network of ``T`` steps (None for the default); checks the values."""
        from ..io_adapter import io_record

        return io_record(T, self.layout, self.encode, self.readout, self.per_step_readout)


@dataclass(eq=False)
class ExportOptions:
    """Everything ``dsr-deploy export`` can be asked, besides the model, its input shape and the output folder."""

    formats: Tuple[str, ...] = ("all",)  # names of the mode's formats, or "all"
    mode: str = "multistep"
    lowering: Optional[str] = None  # None: the mode's default (LOWERINGS)
    opset: Optional[int] = None  # None: DEFAULT_OPSET (bfloat16: the first opset whose Conv takes it, 22)
    function_body: str = "scan"
    static_batch: bool = False
    aot: bool = False  # pt2: also an AOTInductor package
    precision: str = "float32"
    io: IOOptions = field(default_factory=IOOptions)
    int8: Optional[Int8Options] = None  # --precision int8 (None: every form from target)
    target: str = "portable"  # the runtime the export is for: picks the int8 forms (int8/options.py)

    def __post_init__(self):
        if isinstance(self.formats, str):
            self.formats = tuple(f.strip() for f in self.formats.split(",") if f.strip())
        self.formats = tuple(self.formats)

    def validate(self) -> ExportOptions:
        """Check every option and return the resolved options (module docstring); one-line UserErrors."""
        if self.mode not in modes():
            raise UserError(f"unknown --mode {self.mode!r}; choose from {', '.join(modes())}")
        known = list(formats(self.mode))
        bad = [f for f in self.formats if f not in known + ["all"]]
        if not self.formats or bad:
            where = f"; {self.mode} export supports {', '.join(known)}" if self.mode != "multistep" else ""
            raise UserError(f"unknown --format {','.join(bad or self.formats)!r}{where}; choose from "
                            f"{', '.join(known)} or all")
        wanted = tuple(known if "all" in self.formats else dict.fromkeys(self.formats))
        lowering = self.lowering or LOWERINGS[self.mode][0]
        if lowering not in LOWERINGS[self.mode]:
            raise UserError(f"unknown --lowering {lowering!r} for --mode {self.mode}; choose "
                            f"{' or '.join(LOWERINGS[self.mode])}")
        if self.function_body not in FUNCTION_BODIES:
            raise UserError(f"unknown --function-body {self.function_body!r}; choose "
                            f"{' or '.join(FUNCTION_BODIES)}")
        if self.opset is not None and (isinstance(self.opset, bool) or not isinstance(self.opset, int)
                                       or not MIN_OPSET <= self.opset <= max_opset()):
            raise UserError(f"--opset must be >= {MIN_OPSET} and <= {max_opset()} (what torch.onnx and onnx here "
                            f"support), got {self.opset}")
        if self.aot and ("pt2" not in wanted or self.mode != "multistep"):
            raise UserError("--aot compiles the multi-step pt2 export; add pt2 to --format")
        self.check_precision(wanted)
        if self.target not in TARGETS:
            raise UserError(f"unknown --target {self.target!r}; choose from {', '.join(TARGETS)}")
        int8 = self.int8
        if self.precision == "int8":
            int8 = (int8 or Int8Options()).resolved(self.target)
        elif int8 is not None and int8.given():
            raise UserError("--calibration, --int8-all-layers, --int8-neuron, --int8-activations and --int8-layout "
                            "apply to --precision int8")
        else:
            int8 = None
        self.io.record(1)  # bad values fail before any work (streaming honours them too: export/streaming.py)
        if self.mode == "streaming" and self.io.per_step_readout:
            raise UserError("--per-step-readout: a streaming step with --readout already returns the readout after "
                            "every step; drop --per-step-readout")
        return replace(self, formats=wanted, lowering=lowering, int8=int8)

    def check_precision(self, wanted) -> None:
        if self.precision not in PRECISIONS:
            raise UserError(f"unknown --precision {self.precision!r}; choose from {', '.join(PRECISIONS)}")
        other = [f for f in wanted if f not in HALF_FORMATS]
        if self.precision != "float32" and other:
            raise UserError(f"--precision {self.precision} is written for {', '.join(HALF_FORMATS)} only (not "
                            f"{', '.join(other)}); pass --format onnx")

    @property
    def dtype(self):
        """The torch dtype of the exported activations (int8: float32 in and out)."""
        import torch

        return torch.float32 if self.precision in ("float32", "int8") else getattr(torch, self.precision)
