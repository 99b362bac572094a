"""int8 calibration: the float32 model run on the calibration inputs, a sample of each tensor kept, and the
clipping range with the smallest quantisation error (the module docstring of :mod:`.rewrite`); the calibration
data itself (``--calibration X.npy`` or a zoo model's shipped inputs)."""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ...errors import UserError

CALIBRATION_HINT = ("--precision int8 needs calibration data: pass --calibration X.npy (inputs as the model takes "
                    "them, any number of samples along the batch dimension)")
PERCENTILES = (100.0, 99.999, 99.99, 99.9)
SAMPLE = 1 << 20  # values kept per tensor for the MSE search


class Reservoir:
    """A uniform sample (at most :data:`SAMPLE` values) of everything a tensor took; with ``axis``, each value's
    channel index along that axis is kept beside it."""

    def __init__(self, seed: int, axis: Optional[int] = None):
        self.parts: List[np.ndarray] = []
        self.chans: List[np.ndarray] = []
        self.count = 0
        self.axis = axis
        self.rng = np.random.default_rng(seed)

    def add(self, a: np.ndarray) -> None:
        a = np.asarray(a, dtype=np.float32)
        ch = None
        if self.axis is not None:  # the channel of each element of the C-ordered array
            axis = self.axis % a.ndim
            inner = int(np.prod(a.shape[axis + 1:], dtype=np.int64))
            ch = ((np.arange(a.size, dtype=np.int64) // inner) % a.shape[axis]).astype(np.int32)
        a = a.reshape(-1)
        keep = np.isfinite(a)
        a, ch = a[keep], (ch[keep] if ch is not None else None)
        if a.size > SAMPLE // 4:
            pick = self.rng.integers(0, a.size, SAMPLE // 4)
            a, ch = a[pick], (ch[pick] if ch is not None else None)
        self.parts.append(a)
        if ch is not None:
            self.chans.append(ch)
        self.count += a.size
        if self.count > 2 * SAMPLE:
            pick = self.rng.integers(0, self.count, SAMPLE)
            self.parts = [np.concatenate(self.parts)[pick]]
            if self.chans:
                self.chans = [np.concatenate(self.chans)[pick]]
            self.count = SAMPLE

    def values(self) -> np.ndarray:
        return np.concatenate(self.parts) if self.parts else np.zeros(1, np.float32)

    def channels(self) -> np.ndarray:
        """The channel index of each of :meth:`values` (``axis`` given)."""
        return np.concatenate(self.chans) if self.chans else np.zeros(1, np.int32)


def qparams(values: np.ndarray, signed: bool = False) -> Tuple[float, int]:
    """uint8 (scale, zero point) of ``values`` by MSE over the candidate clipping ranges (module docstring);
    ``signed``: int8 symmetric, zero point 0."""
    v = np.asarray(values, dtype=np.float64)
    if signed:
        return _symmetric_qparams(v)
    neg, pos = -v[v < 0], v[v > 0]
    best = None
    for p in PERCENTILES:
        lo = -float(np.percentile(neg, p)) if neg.size else 0.0
        hi = float(np.percentile(pos, p)) if pos.size else 0.0
        if hi - lo <= 0:
            continue
        scale = np.float32((hi - lo) / 255.0)
        zp = int(np.clip(round(-lo / float(scale)), 0, 255))
        q = np.clip(np.round(v / float(scale)) + zp, 0, 255)
        err = float(np.mean(((q - zp) * float(scale) - v) ** 2))
        if best is None or err < best[0]:
            best = (err, float(scale), zp)
    if best is None:  # all zeros: any scale represents it
        return 1.0, 0
    return best[1], best[2]


def grid_qparams(data: np.ndarray, signed: bool = False) -> Optional[Tuple[float, int]]:
    """(scale, zero point) that represent every value of ``data`` (and 0) on its own grid when it takes at most
    256 (int8: 255, symmetric) evenly spaced values -- an 8-bit image scaled by a constant, say -- else None. An
    analog input quantised with it is exact up to float rounding: the first layer then sees the data itself."""
    u = np.unique(np.concatenate([np.asarray(data, np.float64).reshape(-1), [0.0]]))
    if u.size < 2 or u.size > 256:
        return None
    scale = float(np.float32(np.min(np.diff(u))))
    codes = np.round(u / scale)
    if scale <= 0 or np.max(np.abs(codes * scale - u)) > 1e-6 * max(np.max(np.abs(u)), scale):
        return None
    if signed:
        return (scale, 0) if np.max(np.abs(codes)) <= 127 else None
    zp = int(-codes[0])
    return (scale, zp) if codes[-1] + zp <= 255 else None


def _symmetric_qparams(v: np.ndarray) -> Tuple[float, int]:
    """int8 (scale, 0): the clipping range ``[-a, a]`` whose codes (QuantizeLinear: round, saturate to
    [-128, 127]) give the smallest mean squared error, ``a`` the extreme or a percentile of ``|v|``."""
    mag = np.abs(v)
    best = None
    for p in PERCENTILES:
        amax = float(np.percentile(mag, p)) if mag.size else 0.0
        if amax <= 0:
            continue
        scale = np.float32(amax / 127.0)
        q = np.clip(np.round(v / float(scale)), -128, 127)
        err = float(np.mean((q * float(scale) - v) ** 2))
        if best is None or err < best[0]:
            best = (err, float(scale))
    return (1.0, 0) if best is None else (best[1], 0)


def _batches(data: np.ndarray, batch_dim: int, chunk: int) -> Iterable[np.ndarray]:
    n = data.shape[batch_dim]
    for start in range(0, n, chunk):
        yield np.ascontiguousarray(np.take(data, range(start, min(n, start + chunk)), axis=batch_dim))


def calibrate(model: Any, tensors: Sequence[str], data: np.ndarray, batch_dim: int,
              chunk: int = 4, states: Optional[Sequence[Tuple[str, str, Sequence[int]]]] = None,
              signed: bool = False) -> Dict[str, Tuple[float, int]]:
    """Run the float32 ``model`` on ``data`` (:func:`collect`) and return the uint8 (``signed``: int8 symmetric)
    (scale, zero point) of each tensor in ``tensors``."""
    return {t: qparams(s.values(), signed) for t, s in collect(model, tensors, data, batch_dim, chunk,
                                                                states).items()}


def collect(model: Any, tensors: Sequence[str], data: np.ndarray, batch_dim: int, chunk: int = 4,
            states: Optional[Sequence[Tuple[str, str, Sequence[int]]]] = None,
            axes: Optional[Dict[str, int]] = None) -> Dict[str, Reservoir]:
    """Run the float32 ``model`` on ``data`` (batched along ``batch_dim``) with stock ONNX Runtime and return a
    sample of each tensor in ``tensors`` (``axes``: {tensor: channel axis} of those whose samples keep their
    channel index). ``states`` (a streaming step model): ``(input, output, per-sample shape)`` of each membrane;
    ``data`` ``[T, N, ...]`` is then fed one step at a time from zero membranes, as a stream runs."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    tensors = list(dict.fromkeys(tensors))
    if not tensors:
        return {}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {o.name for o in probe.graph.output}
    for t in tensors:
        if t not in outputs:
            probe.graph.output.append(helper.make_empty_tensor_value_info(t))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    stats = {t: Reservoir(k, (axes or {}).get(t)) for k, t in enumerate(tensors)}
    for x in _batches(data.astype(np.float32, copy=False), batch_dim, chunk):
        if not states:
            outs = sess.run(tensors, {name: x})
            for t, v in zip(tensors, outs):
                stats[t].add(v)
            continue
        v = {i: np.zeros((x.shape[1], *shape), np.float32) for i, _, shape in states}
        for step in x:
            outs = sess.run(tensors + [o for _, o, _ in states], {name: step, **v})
            for t, val in zip(tensors, outs):
                stats[t].add(val)
            v = {i: val for (i, _, _), val in zip(states, outs[len(tensors):])}
    return stats


def check_calibration(data: Any, shape: Sequence[int], batch_dim: int, where: str) -> np.ndarray:
    """The calibration array as float32, or a one-line UserError when it cannot feed an input of ``shape``."""
    if not isinstance(data, np.ndarray) or data.dtype.kind not in "fiub":
        raise UserError(f"calibration data {where} must be a numeric array (got {type(data).__name__})")
    want = list(shape)
    if data.ndim != len(want) or any(d != w for i, (d, w) in enumerate(zip(data.shape, want)) if i != batch_dim) \
            or data.shape[batch_dim] < 1:
        want[batch_dim] = "N"
        raise UserError(f"calibration data {where} has shape {list(data.shape)}; the model takes {want} "
                        f"(any N >= 1 along dimension {batch_dim})")
    data = data.astype(np.float32)
    if not np.isfinite(data).all():
        raise UserError(f"calibration data {where} holds NaN or infinite values")
    return data


def _digits_training_inputs(T: int) -> np.ndarray:
    """zoo digits-cnn: its training split (never the held-out images), direct-encoded over T: ``[T, N, 1, 8, 8]``."""
    from ...models.digits import load_digits_split

    x = load_digits_split().x_train.numpy()
    return np.ascontiguousarray(np.broadcast_to(x[None], (T, *x.shape)), dtype=np.float32)


#: Zoo models that ship calibration data: name -> (T -> inputs [T, N, ...]).
ZOO_CALIBRATION = {"digits-cnn": _digits_training_inputs}


def load_calibration(path: Optional[Any], spec: Optional[str], shape: Sequence[int], layout: str = "TB",
                     encode: str = "none") -> np.ndarray:
    """``--calibration X.npy`` (read without pickle), else the zoo model's shipped data in the artifact's input
    layout, else a one-line UserError saying calibration is required."""

    if path is not None:
        from ...input_files import load_npy

        return load_npy(path, "--calibration")
    name = (spec or "")[4:] if (spec or "").startswith("zoo:") else None
    if name not in ZOO_CALIBRATION:
        raise UserError(CALIBRATION_HINT + (f"; {spec} ships no calibration data" if spec else ""))
    x = ZOO_CALIBRATION[name](int(shape[0]))  # [T, N, ...]
    if encode == "direct":
        return np.ascontiguousarray(x[0])
    return np.ascontiguousarray(x.swapaxes(0, 1)) if layout == "BT" else x
