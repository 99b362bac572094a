"""Lookalikes of networks trained with the authors' DSR code (github qymeng94/DSR), for the direct-export tests.

Written from the published facts only (docs: platform notes §1 / §7, issue 12), not from their code:

* neuron classes ``IFNeuron`` / ``LIFNeuron`` built from an ``snn_setting`` dict, holding ``timesteps``, ``Vth``
  (an ``nn.Parameter`` when the threshold is trained, else a plain tensor attribute), ``alpha``, ``Vth_bound`` and,
  for LIF, ``tau`` as a float32 tensor and ``delta_t`` as a Python float;
* every activation is ``[T*B, ...]`` (time-major, flattened); a neuron takes and returns that layout;
* LIF coefficients in float32 (``beta = torch.exp(-delta_t / tau)``, ``1 - beta``), output ``spike / delta_t``;
* CIFAR models repeat their ``[B, C, H, W]`` input T times with ``torch.cat(..., 0)``; the DVS model takes
  ``[B, T, 2, H, W]``; logits are the rate over T (IF: mean; LIF: weights ``exp(-(T*dt - i*dt)/tau)``, i = 1..T,
  normalised).

Tiny widths (CIFAR-style PreAct-ResNet: 8/16 channels, 8x8 images; DVS-style VGG: 2 input channels, 8x8) so every
export takes seconds. Each factory is deterministic. No dsr_deploy import: this file stands for the user's code.
"""

from __future__ import annotations

import torch
from torch import nn

CIFAR_SHAPE = (2, 3, 8, 8)  # [B, C, H, W]
DVS_T = 3
DVS_SHAPE = (2, DVS_T, 2, 8, 8)  # [B, T, 2, H, W]
CIFAR_T = 4


def setting(kind: str, T: int, train_vth: bool = True, **kw) -> dict:
    s = {"timesteps": T, "train_Vth": train_vth}
    if kind == "if":
        s.update(Vth=6.0, alpha=0.5, Vth_bound=0.01)
    else:
        s.update(Vth=0.3, alpha=0.3, Vth_bound=5e-4, tau=1.0, delta_t=0.05)
    s.update(kw)
    return s


class _Neuron(nn.Module):
    def __init__(self, snn_setting: dict):
        super().__init__()
        self.snn_setting = snn_setting
        self.timesteps = int(snn_setting["timesteps"])
        self.alpha = float(snn_setting["alpha"])
        self.Vth_bound = float(snn_setting["Vth_bound"])
        vth = torch.tensor(float(snn_setting["Vth"]))
        if snn_setting["train_Vth"]:
            self.Vth = nn.Parameter(vth)
        else:
            self.Vth = vth  # a plain tensor attribute, not in the state dict

    def _threshold(self) -> torch.Tensor:
        return torch.clamp(self.Vth, min=self.Vth_bound)

    def _steps(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(self.timesteps, -1, *x.shape[1:])


class IFNeuron(_Neuron):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = self._steps(x)
        vth = self._threshold()
        mem = torch.zeros_like(xs[0])
        spikes = []
        for t in range(self.timesteps):
            mem = mem + xs[t]
            s = (mem >= self.alpha * vth).float() * vth
            mem = mem - s
            spikes.append(s)
        return torch.cat(spikes, 0)


class LIFNeuron(_Neuron):
    def __init__(self, snn_setting: dict):
        super().__init__(snn_setting)
        self.tau = torch.tensor(float(snn_setting["tau"]))  # float32, as in their code
        self.delta_t = float(snn_setting["delta_t"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = self._steps(x)
        vth = self._threshold()
        beta = torch.exp(-self.delta_t / self.tau)  # float32 arithmetic
        mem = torch.zeros_like(xs[0])
        spikes = []
        for t in range(self.timesteps):
            mem = beta * mem + (1 - beta) * xs[t]
            s = (mem >= self.alpha * vth).float() * vth
            mem = mem - s
            spikes.append(s / self.delta_t)
        return torch.cat(spikes, 0)


def rate(out: torch.Tensor, snn_setting: dict, lif: bool) -> torch.Tensor:
    """Logits from the [T*B, classes] output: IF mean over T, LIF weighted rate."""
    T = snn_setting["timesteps"]
    o = out.view(T, -1, *out.shape[1:])
    if not lif:
        return o.mean(0)
    dt, tau = snn_setting["delta_t"], torch.tensor(float(snn_setting["tau"]))
    i = torch.arange(1, T + 1, dtype=torch.float32)
    w = torch.exp(-(T * dt - i * dt) / tau)
    w = w / w.sum()
    return (w.view(T, *([1] * (o.dim() - 1))) * o).sum(0)


def _neuron(lif: bool, s: dict) -> nn.Module:
    return LIFNeuron(s) if lif else IFNeuron(s)


class PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, lif: bool, s: dict):
        super().__init__()
        self.bn1, self.act1 = nn.BatchNorm2d(cin), _neuron(lif, s)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.act2 = nn.BatchNorm2d(cout), _neuron(lif, s)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if (stride != 1 or cin != cout) else None

    def forward(self, x):
        out = self.act1(self.bn1(x))
        sc = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.act2(self.bn2(out)))
        return out + sc


class PreActResNetLike(nn.Module):
    """CIFAR-style: conv3x3 stem, pre-activation blocks, head BN -> neuron -> AvgPool -> neuron -> Linear -> BN1d
    -> neuron, logits = rate over T."""

    def __init__(self, lif: bool, s: dict, num_classes: int = 10):
        super().__init__()
        self.lif, self.snn_setting, self.T = lif, s, s["timesteps"]
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.layer1 = PreActBlock(8, 8, 1, lif, s)
        self.layer2 = PreActBlock(8, 16, 2, lif, s)
        self.bn = nn.BatchNorm2d(16)
        self.act = _neuron(lif, s)
        self.pool = nn.AvgPool2d(4)
        self.act_pool = _neuron(lif, s)
        self.fc = nn.Linear(16, num_classes)
        self.bn_fc = nn.BatchNorm1d(num_classes)
        self.act_fc = _neuron(lif, s)

    def forward(self, x):
        x = torch.cat([x for _ in range(self.T)], 0)  # direct encoding: [T*B, C, H, W]
        out = self.layer2(self.layer1(self.conv1(x)))
        out = self.act_pool(self.pool(self.act(self.bn(out))))
        out = self.act_fc(self.bn_fc(self.fc(out.flatten(1))))
        return rate(out, self.snn_setting, self.lif)


class VGGLike(nn.Module):
    """DVS-style: [B, T, 2, H, W] in, conv -> BN -> neuron -> Dropout(0.1), AvgPool2d(2), logits = rate."""

    def __init__(self, lif: bool, s: dict, num_classes: int = 10):
        super().__init__()
        self.lif, self.snn_setting, self.T = lif, s, s["timesteps"]
        self.features = nn.Sequential(
            nn.Conv2d(2, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), _neuron(lif, s), nn.Dropout(0.1),
            nn.AvgPool2d(2),
            nn.Conv2d(8, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), _neuron(lif, s), nn.Dropout(0.1),
            nn.AvgPool2d(2),
        )
        self.classifier = nn.Linear(16 * 2 * 2, num_classes)
        self.act_out = _neuron(lif, s)

    def forward(self, x):
        x = x.transpose(0, 1).flatten(0, 1)  # [B, T, ...] -> [T*B, ...], time-major
        out = self.act_out(self.classifier(self.features(x).flatten(1)))
        return rate(out, self.snn_setting, self.lif)


def _init(net: nn.Module, seed: int, gain: float) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * gain / m.weight[0].numel() ** 0.5)
                if m.bias is not None:  # every parameter from the seed: a rebuilt net is the same net (verify)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                m.running_mean.uniform_(-0.2, 0.2, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
                m.weight.uniform_(0.8, 1.6, generator=g)
                m.bias.uniform_(-0.1, 0.3, generator=g)
        k = 0
        for m in net.modules():  # perturbed thresholds, one below its bound
            if isinstance(m, _Neuron):
                m.Vth.mul_(0.8 + 0.05 * k)
                k += 1
    return net.eval()


def resnet_if() -> nn.Module:
    return _init(PreActResNetLike(False, setting("if", CIFAR_T, Vth=1.0)), 1, 3.0)


def resnet_lif() -> nn.Module:
    return _init(PreActResNetLike(True, setting("lif", CIFAR_T, Vth=0.3)), 2, 2.0)


def resnet_lif_fixed_vth() -> nn.Module:
    """A LIF net whose thresholds are plain tensors (trained with train_Vth off)."""
    return _init(PreActResNetLike(True, setting("lif", CIFAR_T, train_vth=False, Vth=0.3)), 3, 2.0)


def vgg_if() -> nn.Module:
    return _init(VGGLike(False, setting("if", DVS_T, Vth=1.0)), 4, 3.0)


def vgg_lif() -> nn.Module:
    return _init(VGGLike(True, setting("lif", DVS_T, Vth=0.3)), 5, 2.0)


class _NoNeuron(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return torch.relu(self.conv(x))


def no_neuron() -> nn.Module:
    return _NoNeuron().eval()
