"""What input a network takes, read from the network itself (its neurons' layout and its first weighted layer):
the hint in the errors about ``--input-shape`` (missing, or rejected by the model)."""

from __future__ import annotations

from typing import Optional, Sequence

from torch import nn


def _first_weighted(model: nn.Module) -> Optional[nn.Module]:
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            return m
    return None


def expected_input(model: nn.Module, neurons: Optional[Sequence] = None) -> str:
    """``"B,C,H,W (C = 3; ...)"``-style text for ``model``: the authors' networks (neurons on ``[T*B, ...]``)
    take static images ``B,C,H,W`` (repeated over T inside) or, with 2 input channels, DVS events ``B,T,2,H,W``;
    ours and SpikingJelly's take ``T,B,...``."""
    from .convert import find_neurons

    neurons = list(neurons) if neurons is not None else find_neurons(model)
    first = _first_weighted(model)
    flat = [n for n in neurons if n.layout == "flat"]
    if isinstance(first, nn.Conv2d):
        c = first.in_channels
        if flat:
            T = flat[0].timesteps
            if c == 2:
                return f"B,T,2,H,W (DVS-style events; T = {T}, the neurons' timesteps)"
            return f"B,{c},H,W (a static image; the model repeats it over T = {T} inside)"
        return f"T,B,{c},H,W"
    if isinstance(first, nn.Linear):
        return f"B,{first.in_features}" if flat else f"T,B,{first.in_features}"
    return "B,..." if flat else "T,B,..."


def missing_shape_message(model: nn.Module) -> str:
    shape = expected_input(model)
    return f"--input-shape is required for a model outside the zoo; this model takes {shape}"
