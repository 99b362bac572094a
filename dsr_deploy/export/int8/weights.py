"""The int8 codes of a layer's parameters, in one place: the rewrite writes them (:mod:`.rewrite`) and the
rounding check measures what they cost (:mod:`.sensitivity`), so both see the same codes."""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import onnx
from onnx import helper

#: Weight codes of a layer whose uint8 input codes can pass SAFE_INPUT_CODE (a calibrated input, not spikes or
#: a small grid): -63..63 (7 bits). ONNX Runtime's u8s8 convolution / GEMM on a CPU without VNNI (AVX2's
#: vpmaddubsw) adds two u8 x s8 products in a saturating int16: 2 x 255 x 127 overflows it, 2 x 255 x 63 = 32130
#: does not (ONNX Runtime's own advice: reduce_range). Spike codes (0 / 1, small counts) cannot reach it.
NARROW_LEVELS = 63
LEVELS = 127
SAFE_INPUT_CODE = 129  # 2 x 129 x 127 = 32766: input codes up to this never saturate with 8-bit weights


def weight_levels(node: onnx.NodeProto, narrow) -> int:
    """The largest weight code of quantised layer ``node``: :data:`NARROW_LEVELS` when its input is in ``narrow``
    (the tensors whose codes may pass :data:`SAFE_INPUT_CODE`, chosen by the rewrite), else 127."""
    return NARROW_LEVELS if node.input[0] in narrow else LEVELS


def quantize_weight(w: np.ndarray, axis: int, levels: int = LEVELS) -> Tuple[np.ndarray, np.ndarray]:
    """Per-channel symmetric int8 along ``axis``: (codes, scales) with ``scale = max|w| / levels`` per channel,
    codes -levels..levels."""
    other = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.max(np.abs(w), axis=other) if other else np.abs(w)
    scale = np.where(amax > 0, amax / float(levels), 1.0).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.round(w / scale.reshape(shape)), -levels, levels).astype(np.int8)
    return q, scale


def dequantized_weight(w: np.ndarray, axis: int, levels: int = LEVELS) -> np.ndarray:
    """What DequantizeLinear gives back from :func:`quantize_weight`'s codes (float32 ``code * scale``)."""
    codes, scales = quantize_weight(w, axis, levels)
    shape = [1] * w.ndim
    shape[axis] = -1
    return codes.astype(np.float32) * scales.reshape(shape)


def quantize_bias(b: np.ndarray, in_scale: float, scales: np.ndarray) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """The int32 bias of a quantised layer (uint8 activations): (codes, scales) with ``scale = input scale x weight
    scale`` per output channel (what QLinearConv takes), or None when the bias does not match the weight's channels
    (it then stays float32)."""
    b = np.asarray(b, np.float64)
    bs = (np.float64(in_scale) * scales.astype(np.float64)).astype(np.float32)
    if b.shape != bs.shape:
        return None
    return np.round(b / bs).astype(np.int32), bs


def weight_axis(node: onnx.NodeProto) -> int:
    """The output-channel axis of a weighted node's weight."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        trans = {a.name: a.i for a in node.attribute}.get("transB", 0)
        return 0 if trans else 1
    return 1  # MatMul: [K, N]


def output_channel_axis(node: onnx.NodeProto) -> int:
    """The output-channel axis of a weighted node's output: 1 for a Conv ([N, C, ...]), the last otherwise."""
    return 1 if node.op_type == "Conv" else -1


def bias_gain(node: onnx.NodeProto) -> float:
    """What multiplies the bias: Gemm's ``beta`` (1 elsewhere)."""
    if node.op_type != "Gemm":
        return 1.0
    return float({a.name: helper.get_attribute_value(a) for a in node.attribute}.get("beta", 1.0))
