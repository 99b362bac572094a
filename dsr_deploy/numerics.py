"""Comparing outputs that may hold NaN, and finding non-finite weights (a NaN checkpoint exports and runs, and
every backend then faithfully returns NaN: that is agreement, and the user is warned once at export)."""

from __future__ import annotations

import math
from typing import List

import numpy as np


def count_equal(have: np.ndarray, want: np.ndarray) -> int:
    """Elements equal, NaN counting as equal to NaN at the same place (spikes of a NaN membrane)."""
    have, want = np.asarray(have), np.asarray(want)
    eq = have == want
    if np.issubdtype(have.dtype, np.floating) or np.issubdtype(want.dtype, np.floating):
        eq |= np.isnan(have) & np.isnan(want)
    return int(eq.sum())


def max_abs_diff(have: np.ndarray, want: np.ndarray, previous: float = 0.0) -> float:
    """``max(previous, max |have - want|)`` where NaN at the same place in both is no difference, NaN in one
    only is ``nan`` (and stays ``nan``: Python's ``max`` would drop it)."""
    have = np.asarray(have, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if have.size == 0:
        return previous
    both = np.isnan(have) & np.isnan(want)
    d = np.abs(have - want)
    d = d[~both]
    if d.size == 0:
        return previous
    worst = float(np.max(d))  # nan if any single NaN is left
    if math.isnan(previous) or math.isnan(worst):
        return math.nan
    return max(previous, worst)


def non_finite_parameters(model) -> List[str]:
    """Names of the model's floating-point parameters and buffers that hold NaN or infinity."""
    import torch

    names = []
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if torch.is_floating_point(t) and not bool(torch.isfinite(t).all()):
            names.append(name)
    return names
