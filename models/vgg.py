"""The authors' spiking VGG-11 for DVS input (github qymeng94/DSR, CIFAR10-DVS): ``[T, B, 2, 48, 48]``.

Five stages; each conv3x3 is followed by BN -> neuron -> Dropout(0.1); each stage ends with AvgPool2d(2).
Head: AdaptiveAvgPool2d(7) -> Flatten -> Linear(512*7*7) -> BN1d -> neuron; returns the spike train
``[T, B, classes]``, or with ``readout="rate"`` the authors' logits = firing rate over T.
Stage ``k`` is an ``nn.Sequential`` with the authors' layer order (conv, BN, neuron, dropout, ..., pool), the
stateless layers wrapped in :class:`SeqToANN` (so ``layer1.0.module.weight`` is the authors' ``layer1.0.weight``).
"""

from __future__ import annotations

from torch import Tensor, nn

from .common import SeqToANN, make_neuron, make_readout, neuron_settings

__all__ = ["VGG11DVS", "VGG11_CFG"]

VGG11_CFG = ((64, "M"), (128, "M"), (256, 256, "M"), (512, 512, "M"), (512, 512, "M"))


class VGG11DVS(nn.Module):
    def __init__(self, T: int = 10, neuron: str = "if", num_classes: int = 10, dropout: float = 0.1,
                 in_channels: int = 2, readout: str = "spikes", **neuron_params):
        super().__init__()
        settings = neuron_settings(neuron, neuron_params)
        self.T = T
        self.neuron = neuron
        channels = in_channels
        stages = []
        for cfg in VGG11_CFG:
            layers = []
            for item in cfg:
                if item == "M":
                    layers.append(SeqToANN(nn.AvgPool2d(kernel_size=2, stride=2)))
                else:
                    layers += [SeqToANN(nn.Conv2d(channels, item, kernel_size=3, padding=1)),
                               SeqToANN(nn.BatchNorm2d(item)), make_neuron(neuron, T, neuron_params),
                               SeqToANN(nn.Dropout(dropout))]
                    channels = item
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4, self.layer5 = stages
        self.avgpool = SeqToANN(nn.AdaptiveAvgPool2d((7, 7)))
        self.classifier = nn.Sequential(SeqToANN(nn.Flatten()), SeqToANN(nn.Linear(512 * 7 * 7, num_classes)),
                                        SeqToANN(nn.BatchNorm1d(num_classes)), make_neuron(neuron, T, neuron_params))
        self.readout = make_readout(readout, neuron, settings)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.layer5(self.layer4(self.layer3(self.layer2(self.layer1(x)))))
        return self.readout(self.classifier(self.avgpool(out)))
