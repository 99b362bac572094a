"""Timing: percentiles and summaries, the CPU / CUDA-event timer, the memcpy floor, and the inputs a runner is
timed on."""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ..errors import UserError
from ..manifest import Manifest, as_manifest
from ..runtime.base import Runner


def percentile(sorted_ms: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default) of an already sorted sequence."""
    return float(np.percentile(np.asarray(sorted_ms, dtype=np.float64), q))


def summarize(times_ms: Sequence[float], batch: int, timesteps: int, neurons: Optional[int]) -> dict:
    if not times_ms:
        raise ValueError("no timed iterations")
    t = np.sort(np.asarray(times_ms, dtype=np.float64))
    mean = float(t.mean())
    lat = {"p50": percentile(t, 50), "p90": percentile(t, 90), "p99": percentile(t, 99), "mean": mean,
           "min": float(t[0]), "max": float(t[-1]), "std": float(t.std(ddof=1)) if len(t) > 1 else 0.0}
    samples = batch / (mean / 1e3)
    return {"latency_ms": lat, "iterations": len(t),
            "throughput": {"samples_per_s": samples,
                           "neuron_steps_per_s": samples * timesteps * neurons if neurons else None}}


# ---------------------------------------------------------------------------------------------------------
# Timing loops.

class Timer:
    """Times one call: CUDA events + device synchronisation on a GPU, the monotonic clock on the CPU."""

    def __init__(self, device: str, synchronize: Callable[[], None]):
        self.gpu = device.startswith("cuda")
        self.synchronize = synchronize
        if self.gpu:
            import torch

            self._torch = torch
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)

    def time_ms(self, fn: Callable[[], Any]) -> float:
        if self.gpu:
            self._start.record()
            fn()
            self.synchronize()
            self._end.record()
            self._end.synchronize()
            return float(self._start.elapsed_time(self._end))
        t0 = time.perf_counter_ns()
        fn()
        self.synchronize()
        return (time.perf_counter_ns() - t0) / 1e6


def run_timed(fn: Callable[[], Any], timer: Timer, warmup: int, iters: Optional[int],
              seconds: Optional[float], on_iteration: Optional[Callable[[], None]] = None) -> list[float]:
    """Warm-up calls (not recorded), then timed calls until ``iters`` or ``seconds`` (at least one)."""
    for _ in range(warmup):
        fn()
    timer.synchronize()
    times: list[float] = []
    deadline = time.monotonic() + seconds if seconds else None
    while True:
        times.append(timer.time_ms(fn))
        if on_iteration:
            on_iteration()
        if iters is not None and len(times) >= iters:
            break
        if deadline is not None and time.monotonic() >= deadline:
            break
    return times


def memcpy_ms(nbytes: int, device: str, warmup: int = 2, iters: int = 10) -> float:
    """Median time of copying ``nbytes`` once on ``device`` (the floor any runner is compared with)."""
    import torch

    n = max(1, nbytes // 4)
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    sync = (lambda: torch.cuda.synchronize(device)) if device.startswith("cuda") else (lambda: None)
    times = run_timed(lambda: dst.copy_(src), Timer(device, sync), warmup, iters, None)
    return float(np.median(times))


# ---------------------------------------------------------------------------------------------------------
# Inputs and neuron counts.

def input_spec(runner: Runner, fallback_shape: Optional[Sequence[int]] = None, io: Optional[dict] = None):
    """The single multi-step input ``[T, B, ...]`` of ``runner``: (name, per-sample dims, dtype, fixed T).

    ``io`` (the manifest's record): the artifact's input is ``[B, T, ...]`` or static ``[B, ...]``; its shape
    is read as the network's ``[T, B, ...]`` (a static input has the fixed T of the record)."""
    from ..io_adapter import canonical_shape

    specs = runner.inputs()
    if len(specs) != 1:
        raise UserError(f"bench: {runner.backend} model takes {len(specs)} inputs "
                        f"({', '.join(s.name for s in specs)}); "
                        "bench runs multi-step models with one input [T, B, ...]")
    spec = specs[0]
    shape = spec.shape
    if shape is not None and io:
        shape = canonical_shape(shape, io)
    if shape is not None and len(shape) < 2:
        raise UserError(f"bench: input {spec.name!r} has rank {len(shape)}; expected [T, B, ...]")
    if fallback_shape is not None and shape is not None:
        if len(shape) != len(fallback_shape) or any(
                isinstance(d, int) and d >= 0 and d != int(f) for d, f in zip(shape[2:], fallback_shape[2:])):
            dims = ",".join("?" if not isinstance(d, int) or d < 0 else str(d) for d in shape)
            raise UserError(f"bench: --input-shape {','.join(map(str, fallback_shape))} does not match the "
                            f"{runner.backend} model input [{dims}]")
    if shape is None or any(not isinstance(d, int) or d < 0 for d in shape[2:]):
        if fallback_shape is None:
            raise UserError(f"bench: cannot tell the input shape of {runner.artifact} ({runner.backend}); "
                            "pass --input-shape T,B,C,H,W")
        tail = tuple(int(d) for d in fallback_shape[2:])
    else:
        tail = tuple(int(d) for d in shape[2:])
    fixed_t = shape[0] if shape is not None and isinstance(shape[0], int) and shape[0] > 0 else None
    fixed_b = shape[1] if shape is not None and isinstance(shape[1], int) and shape[1] > 0 else None
    return spec.name, tail, spec.dtype or "float32", fixed_t, fixed_b


def count_neurons(model, sample_shape: Sequence[int]) -> Optional[int]:
    """Neurons per sample per time step of an eager model: summed outputs of its DSR neuron modules."""
    import torch

    hits: list[int] = []

    def hook(_m, _inp, out):
        if isinstance(out, torch.Tensor) and out.dim() >= 2:
            hits.append(out[0, 0].numel())

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if type(m).__name__ in ("DSRIFNode", "DSRLIFNode")]
    if not handles:
        return None
    try:
        with torch.inference_mode():
            for m in model.modules():
                if callable(getattr(m, "reset", None)) and type(m).__name__ in ("DSRIFNode", "DSRLIFNode"):
                    m.reset()
            p = next(model.parameters(), None)
            model(torch.zeros(tuple(sample_shape), dtype=p.dtype if p is not None else torch.float32,
                              device=p.device if p is not None else "cpu"))
    finally:
        for h in handles:
            h.remove()
    return sum(hits) or None


def neurons_from_manifest(manifest: Optional[Manifest]) -> Optional[int]:
    """Neurons per sample per step from an export manifest's ``neurons`` list, when it gives sizes."""
    if not manifest:
        return None
    manifest = as_manifest(manifest)  # a validated one, or a mapping built in memory
    if not manifest.neurons:
        return None
    total = 0
    for n in manifest.neurons:
        if not isinstance(n, dict):
            return None
        size = n.get("neurons") or n.get("size") or n.get("numel")
        shape = n.get("shape") or n.get("step_shape") or n.get("output_shape")
        if isinstance(size, int):
            total += size
        elif isinstance(shape, list) and all(isinstance(d, int) for d in shape):
            total += math.prod(shape[2:] if n.get("layout", "TB") == "TB" and len(shape) > 2 else shape)
        else:
            return None
    return total or None


def make_input(shape: Sequence[int], dtype: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(0.5, 1.0, size=tuple(shape)).astype(dtype if dtype != "bfloat16" else "float32")
