"""The int8 codes of a layer's parameters, in one place: the rewrite writes them (:mod:`.rewrite`) and the
rounding check measures what they cost (:mod:`.sensitivity`), so both see the same codes."""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import onnx
from onnx import helper


def quantize_weight(w: np.ndarray, axis: int) -> Tuple[np.ndarray, np.ndarray]:
    """Per-channel symmetric int8 along ``axis``: (codes, scales) with ``scale = max|w| / 127`` per channel."""
    other = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.max(np.abs(w), axis=other) if other else np.abs(w)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale


def dequantized_weight(w: np.ndarray, axis: int) -> np.ndarray:
    """What DequantizeLinear gives back from :func:`quantize_weight`'s codes (float32 ``code * scale``)."""
    codes, scales = quantize_weight(w, axis)
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
