"""``export --precision int8``: the float32 ONNX export rewritten into a quantised Q/DQ graph, spikes exact.

* :mod:`.options`: :class:`Int8Options` and what each ``--target`` picks;
* :mod:`.calibrate`: calibration data and the per-tensor scales (MSE over candidate clipping ranges);
* :mod:`.rewrite`: what to quantise and the Q/DQ graph (the method is described there);
* :mod:`.neurons`: ``--int8-neuron quantized``, the dsr ops on the current codes;
* :mod:`.residual`: the residual path in int8 (BatchNorms folded into the convolutions feeding them, the shortcut
  add quantised: ``QLinearAdd``);
* :mod:`.layout`: ``--int8-layout nhwc``, channels-last for ONNX Runtime's CPU provider (:mod:`.prune`: the
  nodes it leaves out);
* :mod:`.weights`: the int8 weight and bias codes; :mod:`.sensitivity`: the layers whose int8 rounding is too
  coarse for their current, kept float32 (float fallback, recorded in ``float_layers``);
* :mod:`.graph`: the graph questions and builders they share.
"""

from __future__ import annotations

from .calibrate import ZOO_CALIBRATION, check_calibration, load_calibration, qparams
from .options import ACTIVATIONS, CALIBRATION_HINT, LAYOUTS, NEURON_FORMS, TARGET_FORMS, TARGETS, Int8Options

__all__ = ["ACTIVATIONS", "CALIBRATION_HINT", "LAYOUTS", "META_QUANT", "NEURON_FORMS", "TARGETS", "TARGET_FORMS",
           "ZOO_CALIBRATION", "Int8Options", "check_calibration", "load_calibration", "plan", "qparams",
           "quantize", "quantize_file", "quantize_model", "quantize_weight", "spike_value"]

# The graph rewrite imports onnx: loaded when first used, so `import dsr_deploy.export` stays cheap.
_LAZY = {"spike_value": ".graph", "META_QUANT": ".rewrite", "plan": ".rewrite",
         "quantize": ".rewrite", "quantize_file": ".rewrite", "quantize_model": ".rewrite",
         "quantize_weight": ".weights"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
