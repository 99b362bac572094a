"""Direct encoding: a static input fed to a spiking network at every time step (the authors' CIFAR/ImageNet input)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["direct_encode", "DirectEncoder"]


def direct_encode(x: Tensor, T: int) -> Tensor:
    """``[B, ...] -> [T, B, ...]``: ``x`` repeated ``T`` times along a new leading time dimension (a contiguous copy,
    so the result can be handed to any runtime as is)."""
    if isinstance(T, bool) or not isinstance(T, int) or T <= 0:
        raise ValueError(f"T must be a positive int, got {T!r}")
    if not isinstance(x, Tensor):
        x = torch.as_tensor(x)
    return x.unsqueeze(0).expand((T,) + tuple(x.shape)).contiguous()


class DirectEncoder(nn.Module):
    """Module form of :func:`direct_encode` (put it in front of a zoo network to feed it ``[B, ...]``)."""

    def __init__(self, T: int):
        super().__init__()
        if isinstance(T, bool) or not isinstance(T, int) or T <= 0:
            raise ValueError(f"T must be a positive int, got {T!r}")
        self.T = T

    def forward(self, x: Tensor) -> Tensor:
        return x.unsqueeze(0).expand([self.T] + list(x.shape)).contiguous()
