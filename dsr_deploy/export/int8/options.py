"""The options of ``export --precision int8`` (:class:`Int8Options`) and what each ``--target`` picks.

Three choices shape the int8 graph; each has a portable default and a faster form for one runtime:

* ``neuron``: ``qdq`` (Q/DQ around the float32 dsr node) or ``quantized`` (the dsr ops on the current codes);
* ``activations``: ``uint8`` (asymmetric currents; ONNX Runtime) or ``int8`` (signed, zero point 0: the only form
  TensorRT's explicit quantisation takes);
* ``layout``: ``nchw`` (the portable Q/DQ graph) or ``nhwc`` (channels-last for ONNX Runtime's CPU provider).

``--target`` picks all three at once (:data:`TARGET_FORMS`); a flag given explicitly overrides its target's pick.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional, Sequence

from ...contract import TARGETS
from ...errors import UserError
from .calibrate import CALIBRATION_HINT, check_calibration, load_calibration  # noqa: F401  (CALIBRATION_HINT: public)

NEURON_FORMS = ("qdq", "quantized")
#: ``export --int8-activations``: the element type of quantised activations (currents and spike codes).
ACTIVATIONS = ("uint8", "int8")
#: ``export --int8-layout``.
LAYOUTS = ("nchw", "nhwc")
#: The int8 forms each target picks (measured fastest there: docs/export.md, benchmarks/results).
TARGET_FORMS = {
    "portable": {"neuron": "qdq", "activations": "uint8", "layout": "nchw"},
    "onnxruntime-cpu": {"neuron": "quantized", "activations": "uint8", "layout": "nhwc"},
    "tensorrt": {"neuron": "quantized", "activations": "int8", "layout": "nchw"},
}


#: ``--int8-all-layers`` by target: onnxruntime-cpu quantises the analog first layer and the readout too (verify's
#: int8 rule holds; the digits model's held-out accuracy within 0.5 points: quickstart --precision int8).
TARGET_ALL_LAYERS = {"portable": False, "onnxruntime-cpu": True, "tensorrt": False}


#: verify's int8 rule (dsr_deploy/verify/layers.py), read by the export's rounding check too: a correct layer's
#: dequantised current is within a few steps of its scale of the reference's (its own rounding, half a step, plus
#: the int8 weights' rounding); 99 % of the values must be (the rest: clipped outliers).
INT8_MAX_STEPS = 8.0
INT8_QUANTILE = 99.0
#: The recorded scale must resolve the current: its middle 99.8 % spans at least this many steps (a calibration on
#: all-zero or huge data leaves it a step or two).
INT8_MIN_STEPS = 16.0
#: Export keeps a layer float32 when its int8 weights' and bias' rounding alone moves its current by more than
#: this many steps of its scale (99th percentile, on the calibration inputs: .sensitivity). Half of verify's
#: bound: the other half is the margin for the current's own rounding, clipping and inputs unlike the calibration
#: data; a layer that spends more than half the budget on its parameters is not within it on other inputs.
ROUNDING_MAX_STEPS = INT8_MAX_STEPS / 2

def _choice(flag: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise UserError(f"unknown {flag} {value!r}; choose from {', '.join(choices)}")
    return value


@dataclass(eq=False)
class Int8Options:
    """``--precision int8``: the calibration inputs (as the artifact takes them; the CLI loads ``--calibration``
    or the zoo's data) and the three forms; a form left None is the target's (:data:`TARGET_FORMS`)."""

    calibration: Optional[Any] = None  # numpy array [.., N, ..]: N samples along the batch dimension
    all_layers: Optional[bool] = None  # --int8-all-layers: the analog first layer and the readout too
    neuron: Optional[str] = None
    activations: Optional[str] = None
    layout: Optional[str] = None

    def resolved(self, target: str = "portable") -> Int8Options:
        """Every form filled in from ``target`` where not given, each checked (one-line UserErrors)."""
        picks = TARGET_FORMS[_choice("--target", target, TARGETS)]
        activations = _choice("--int8-activations", self.activations or picks["activations"], ACTIVATIONS)
        # The TensorRT form (int8 activations) runs its neurons on the codes unless asked otherwise: TensorRT never
        # fuses a float node between Q and DQ into a plugin (input -> Q -> plugin -> DQ is what runs the plugin).
        neuron = _choice("--int8-neuron", self.neuron or ("quantized" if activations == "int8" else picks["neuron"]),
                         NEURON_FORMS)
        layout = _choice("--int8-layout", self.layout or picks["layout"], LAYOUTS)
        if activations == "int8" and layout != "nchw":
            raise UserError("--int8-activations int8 is the TensorRT form (the portable Q/DQ graph); --int8-layout "
                            f"{layout} is for ONNX Runtime's CPU, where uint8 activations are faster: choose one")
        all_layers = TARGET_ALL_LAYERS[target] if self.all_layers is None else bool(self.all_layers)
        return replace(self, all_layers=all_layers, neuron=neuron, activations=activations,
                       layout=layout)

    def with_calibration(self, shape: Sequence[int], batch_dim: int, *, network_shape: Optional[Sequence[int]] = None,
                         spec: Optional[str] = None, layout: str = "TB", encode: str = "none") -> Int8Options:
        """The calibration data as a float32 array checked against the artifact's input ``shape``: the array
        given, the ``.npy`` file given (read without pickle), or the zoo model's shipped inputs (``spec``,
        ``network_shape`` and the I/O options say which); a one-line UserError when there is none or it does
        not fit."""
        data = self.calibration
        if data is None or isinstance(data, (str, Path)):
            data = load_calibration(data, spec, network_shape or shape, layout, encode)
        return replace(self, calibration=check_calibration(data, shape, batch_dim, "(--calibration)"))

    def given(self) -> bool:
        """Whether any int8 option was given (they apply to ``--precision int8`` only)."""
        return self.calibration is not None or any(
            v is not None for v in (self.all_layers, self.neuron, self.activations, self.layout))
