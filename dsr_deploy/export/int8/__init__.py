"""``export --precision int8``: the float32 ONNX export rewritten into a quantised Q/DQ graph, spikes exact.

* :mod:`.options`: :class:`Int8Options` and what each ``--target`` picks;
* :mod:`.calibrate`: calibration data and the per-tensor scales (MSE over candidate clipping ranges);
* :mod:`.rewrite`: what to quantise and the Q/DQ graph (the method is described there);
* :mod:`.neurons`: ``--int8-neuron quantized``, the dsr ops on the current codes;
* :mod:`.layout`: ``--int8-layout nhwc``, channels-last for ONNX Runtime's CPU provider;
* :mod:`.graph`: the graph questions and builders they share.
"""

from __future__ import annotations

from .calibrate import ZOO_CALIBRATION, calibrate, check_calibration, load_calibration, qparams
from .graph import spike_value
from .options import ACTIVATIONS, CALIBRATION_HINT, LAYOUTS, NEURON_FORMS, TARGET_FORMS, TARGETS, Int8Options
from .rewrite import META_QUANT, plan, quantize, quantize_file, quantize_model, quantize_weight

__all__ = ["ACTIVATIONS", "CALIBRATION_HINT", "LAYOUTS", "META_QUANT", "NEURON_FORMS", "TARGETS", "TARGET_FORMS",
           "ZOO_CALIBRATION", "Int8Options", "calibrate", "check_calibration", "load_calibration", "plan", "qparams",
           "quantize", "quantize_file", "quantize_model", "quantize_weight", "spike_value"]
