"""The authors' spiking PreAct-ResNet-18 (github qymeng94/DSR), on our DSR neurons, input ``[T, B, 3, H, W]``.

* CIFAR (:class:`PreActResNet18`): conv3x3/64 stem (no bias); 4 stages of two pre-activation blocks
  (BN -> neuron -> conv3x3, BN -> neuron -> dropout -> conv3x3, 1x1 conv shortcut when the shape changes);
  head BN -> neuron -> AvgPool(4) -> neuron -> Linear -> BN1d -> neuron; logits = firing rate over T.
* ImageNet (:class:`PreActResNet18ImageNet`): 7x7/2 stem -> BN -> neuron -> AvgPool(3, 2, 1); blocks without conv
  bias, downsample = 1x1 conv + BN; head BN -> neuron -> global AvgPool -> neuron -> Linear -> BN1d -> neuron.

Output: the last neuron layer's spike train ``[T, B, classes]`` (default, the multi-step layout exporters expect),
or with ``readout="rate"`` the authors' logits ``[B, classes]`` (firing rate over T).

Attribute names follow the authors' code (``conv1``, ``layer1.0.bn1``, ``relu1`` ...), so their checkpoints map
by name (their ``Vth`` is our ``v_threshold``; see :mod:`dsr_deploy.models.interop`).
"""

from __future__ import annotations

from torch import Tensor, nn

from .common import fold, make_neuron, make_readout, neuron_settings, unfold

__all__ = ["PreActBlock", "PreActResNet18", "PreBasicBlock", "PreActResNet18ImageNet"]


class PreActBlock(nn.Module):
    """CIFAR pre-activation basic block; ``[T, B, C, H, W] -> [T, B, C', H', W']``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float, neuron: str, T: int,
                 params: dict):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, padding=0)
        else:
            self.shortcut = nn.Identity()
        self.relu1 = make_neuron(neuron, T, params)
        self.relu2 = make_neuron(neuron, T, params)

    def forward(self, x: Tensor) -> Tensor:
        T, B = x.shape[0], x.shape[1]
        s = fold(self.relu1(unfold(self.bn1(fold(x)), T, B)))
        out = self.bn2(self.conv1(s))
        out = fold(self.relu2(unfold(out, T, B)))
        out = self.conv2(self.dropout(out)) + self.shortcut(s)
        return unfold(out, T, B)


def _init_authors(model: nn.Module, linear_std: float = 0.0) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear_std > 0:
                nn.init.normal_(m.weight, 0.0, linear_std)
            nn.init.zeros_(m.bias)


class PreActResNet18(nn.Module):
    """Spiking PreAct-ResNet-18 for CIFAR-sized input ``[T, B, 3, 32, 32]`` -> ``[T, B, num_classes]`` spikes."""

    def __init__(self, T: int = 20, neuron: str = "if", num_classes: int = 10, dropout: float = 0.0,
                 in_channels: int = 3, readout: str = "spikes", **neuron_params):
        super().__init__()
        settings = neuron_settings(neuron, neuron_params)
        self.T = T
        self.neuron = neuron
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        channels = 64
        stages = []
        for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks = []
            for s in (stride, 1):
                blocks.append(PreActBlock(channels, width, s, dropout, neuron, T, neuron_params))
                channels = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn1 = nn.BatchNorm2d(512)
        self.pool = nn.AvgPool2d(4)
        self.flat = nn.Flatten()
        self.drop = nn.Dropout(dropout)
        self.linear = nn.Linear(512, num_classes)
        self.bn2 = nn.BatchNorm1d(num_classes)
        self.relu1 = make_neuron(neuron, T, neuron_params)
        self.relu2 = make_neuron(neuron, T, neuron_params)
        self.relu3 = make_neuron(neuron, T, neuron_params)
        self.readout = make_readout(readout, neuron, settings)
        _init_authors(self)

    def forward(self, x: Tensor) -> Tensor:
        T, B = x.shape[0], x.shape[1]
        out = unfold(self.conv1(fold(x)), T, B)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = self.relu1(unfold(self.bn1(fold(out)), T, B))
        out = self.relu2(unfold(self.pool(fold(out)), T, B))
        out = self.linear(self.drop(self.flat(fold(out))))
        out = self.relu3(unfold(self.bn2(out), T, B))
        return self.readout(out)


class PreBasicBlock(nn.Module):
    """ImageNet pre-activation basic block (no conv bias; downsample = 1x1 conv + BN)."""

    def __init__(self, inplanes: int, planes: int, stride: int, neuron: str, T: int, params: dict):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        else:
            self.downsample = nn.Identity()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu1 = make_neuron(neuron, T, params)
        self.relu2 = make_neuron(neuron, T, params)

    def forward(self, x: Tensor) -> Tensor:
        T, B = x.shape[0], x.shape[1]
        s = fold(self.relu1(unfold(self.bn1(fold(x)), T, B)))
        out = self.bn2(self.conv1(s))
        out = self.conv2(fold(self.relu2(unfold(out, T, B))))
        return unfold(out + self.downsample(s), T, B)


class PreActResNet18ImageNet(nn.Module):
    """Spiking PreAct-ResNet-18 with the 7x7 stem, ``[T, B, 3, 224, 224]`` -> ``[T, B, num_classes]`` spikes."""

    def __init__(self, T: int = 50, neuron: str = "if", num_classes: int = 1000, base_width: int = 64,
                 in_channels: int = 3, readout: str = "spikes", **neuron_params):
        super().__init__()
        settings = neuron_settings(neuron, neuron_params)
        self.T = T
        self.neuron = neuron
        w = base_width
        self.conv1 = nn.Conv2d(in_channels, w, 7, 2, 3, bias=False)
        self.maxpool = nn.AvgPool2d(kernel_size=3, stride=2, padding=1)  # the authors' name for an average pool
        inplanes = w
        stages = []
        for planes, stride in ((w, 1), (2 * w, 2), (4 * w, 2), (8 * w, 2)):
            stages.append(nn.Sequential(PreBasicBlock(inplanes, planes, stride, neuron, T, neuron_params),
                                        PreBasicBlock(planes, planes, 1, neuron, T, neuron_params)))
            inplanes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8 * w, num_classes)
        self.bn1 = nn.BatchNorm2d(w)
        self.bn2 = nn.BatchNorm2d(8 * w)
        self.bn3 = nn.BatchNorm1d(num_classes)
        self.relu1 = make_neuron(neuron, T, neuron_params)
        self.relu2 = make_neuron(neuron, T, neuron_params)
        self.relu3 = make_neuron(neuron, T, neuron_params)
        self.relu4 = make_neuron(neuron, T, neuron_params)
        self.readout = make_readout(readout, neuron, settings)
        _init_authors(self)

    def forward(self, x: Tensor) -> Tensor:
        T, B = x.shape[0], x.shape[1]
        out = self.relu1(unfold(self.bn1(self.conv1(fold(x))), T, B))
        out = unfold(self.maxpool(fold(out)), T, B)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = self.relu2(unfold(self.bn2(fold(out)), T, B))
        out = self.relu3(unfold(self.avgpool(fold(out)), T, B))
        out = self.fc(fold(out).flatten(1))
        out = self.relu4(unfold(self.bn3(out), T, B))
        return self.readout(out)
