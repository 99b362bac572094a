"""Small spiking networks for quick work: a two-conv CNN and an MLP, input ``[T, B, C, H, W]``.

Both are ``nn.Sequential`` of :class:`SeqToANN` (stateless layers on the folded batch) and DSR neurons, ending in
an optional firing-rate readout (``readout="rate"``), the layer order a SpikingJelly user writes with
``SeqToANNContainer``.
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from .common import SeqToANN, make_neuron, make_readout, neuron_settings

__all__ = ["SpikingCNN", "SpikingMLP"]


class SpikingCNN(nn.Module):
    """conv3x3 -> BN -> neuron -> conv3x3 -> BN -> neuron -> AvgPool(2) -> Linear -> BN1d -> neuron [-> rate]."""

    def __init__(self, T: int = 8, neuron: str = "if", in_channels: int = 1, image_size: int = 28,
                 channels: Sequence[int] = (16, 32), num_classes: int = 10, readout: str = "spikes",
                 **neuron_params):
        super().__init__()
        if image_size % 2:
            raise ValueError(f"image_size must be even (one 2x2 pool), got {image_size}")
        settings = neuron_settings(neuron, neuron_params)
        self.T = T
        self.neuron = neuron
        c1, c2 = (int(c) for c in channels)
        self.features = nn.Sequential(
            SeqToANN(nn.Conv2d(in_channels, c1, 3, padding=1, bias=False), nn.BatchNorm2d(c1)),
            make_neuron(neuron, T, neuron_params),
            SeqToANN(nn.Conv2d(c1, c2, 3, padding=1, bias=False), nn.BatchNorm2d(c2)),
            make_neuron(neuron, T, neuron_params),
            SeqToANN(nn.AvgPool2d(2)),
        )
        flat = c2 * (image_size // 2) ** 2
        self.classifier = nn.Sequential(
            SeqToANN(nn.Flatten(), nn.Linear(flat, num_classes), nn.BatchNorm1d(num_classes)),
            make_neuron(neuron, T, neuron_params),
        )
        self.readout = make_readout(readout, neuron, settings)

    def forward(self, x: Tensor) -> Tensor:
        return self.readout(self.classifier(self.features(x)))


class SpikingMLP(nn.Module):
    """Flatten -> (Linear -> BN1d -> neuron) per hidden width -> Linear -> BN1d -> neuron [-> rate]."""

    def __init__(self, T: int = 8, neuron: str = "if", in_features: int = 784, hidden: Sequence[int] = (256,),
                 num_classes: int = 10, readout: str = "spikes", **neuron_params):
        super().__init__()
        settings = neuron_settings(neuron, neuron_params)
        self.T = T
        self.neuron = neuron
        layers: list[nn.Module] = [SeqToANN(nn.Flatten())]
        width = in_features
        for h in list(hidden) + [num_classes]:
            layers += [SeqToANN(nn.Linear(width, int(h)), nn.BatchNorm1d(int(h))),
                       make_neuron(neuron, T, neuron_params)]
            width = int(h)
        self.layers = nn.Sequential(*layers)
        self.readout = make_readout(readout, neuron, settings)

    def forward(self, x: Tensor) -> Tensor:
        return self.readout(self.layers(x))
