"""Small networks for the export / verify tests (the zoo is another helper's; these are ours).

* ``sj_conv_net``: SpikingJelly multi-step layers (``layer.Conv2d``, ``layer.BatchNorm2d``,
  ``SeqToANNContainer``, ``layer.Linear``) holding both SpikingJelly DSR neuron types; the IF threshold is a
  trained parameter stored *below* its lower bound (SpikingJelly 2.0 clamps out of place), so an exporter that
  does not clamp is caught.
* ``ours_conv_net``: our DSRIFNode / DSRLIFNode with plain ``torch.nn`` layers and a residual add (scriptable).
* ``sj_neuron_net`` / ``ours_neuron_net``: neurons and elementwise ops only (every backend must be bit-exact).
* ``no_neuron_net``, ``raising_factory``, ``tuple_net``: bad inputs for the CLI.

Each factory is deterministic (fixed seeds) so ``path/to/export_nets.py:factory`` rebuilds the same model.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dsr_deploy.neuron import DSRIFNode, DSRLIFNode

SJ_CONV_SHAPE = (4, 2, 3, 8, 8)
OURS_CONV_SHAPE = (4, 2, 3, 8, 8)
NEURON_SHAPE = (5, 2, 4, 6)


def _sj():
    from spikingjelly.activation_based import layer, neuron

    return layer, neuron


def _init_bn(bn: nn.Module) -> None:
    with torch.no_grad():
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 1.5)
        bn.weight.uniform_(0.8, 1.6)


def sj_conv_net() -> nn.Module:
    layer, neuron = _sj()
    torch.manual_seed(0)
    net = nn.Sequential(
        layer.Conv2d(3, 8, 3, padding=1, step_mode="m"),
        layer.BatchNorm2d(8, step_mode="m"),
        neuron.DSRIFNode(T=4, v_threshold=1.0, alpha=0.5, v_threshold_lower_bound=0.6),
        layer.SeqToANNContainer(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)),
        neuron.DSRLIFNode(T=4, v_threshold=0.3, tau=1.0, delta_t=0.05, alpha=0.3, v_threshold_lower_bound=5e-4),
        layer.SeqToANNContainer(nn.AvgPool2d(2), nn.Flatten()),
        layer.Linear(8 * 4 * 4, 10, step_mode="m"),
        neuron.DSRIFNode(T=4, v_threshold=0.5, alpha=0.5, v_threshold_lower_bound=0.01),
    )
    _init_bn(net[1])
    _init_bn(net[3][1])
    with torch.no_grad():
        net[0].weight.mul_(2.0)
        net[3][0].weight.mul_(4.0)
        net[2].v_threshold.fill_(0.25)  # below its bound 0.6: the effective threshold is 0.6
    return net.eval()


class _OursConv(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.sn1 = DSRLIFNode(T=None, v_threshold=0.3, tau=1.0, delta_t=0.05, alpha=0.3, v_threshold_lower_bound=5e-4)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.sn2 = DSRIFNode(T=None, v_threshold=1.0, alpha=0.5)
        self.fc = nn.Linear(8 * 4 * 4, 10)
        self.sn3 = DSRIFNode(T=None, v_threshold=0.4, alpha=0.5, v_threshold_training=False)
        _init_bn(self.bn1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, b = x.shape[0], x.shape[1]
        h = self.bn1(self.conv1(x.flatten(0, 1)))
        s1 = self.sn1(h.reshape(t, b, h.shape[1], h.shape[2], h.shape[3]))
        h2 = self.conv2(s1.flatten(0, 1)) * 20.0
        s2 = self.sn2(h2.reshape(s1.shape) + s1)  # a residual add
        p = nn.functional.avg_pool2d(s2.flatten(0, 1), 2).flatten(1)
        return self.sn3(self.fc(p).reshape(t, b, 10))


def ours_conv_net() -> nn.Module:
    return _OursConv().eval()


class _SJNeurons(nn.Module):
    def __init__(self):
        super().__init__()
        _, neuron = _sj()
        self.a = neuron.DSRIFNode(T=5, v_threshold=1.0, alpha=0.5, v_threshold_lower_bound=0.01)
        self.b = neuron.DSRLIFNode(T=5, v_threshold=0.3, tau=1.0, delta_t=0.05, alpha=0.3,
                                   v_threshold_lower_bound=0.2)
        with torch.no_grad():
            self.b.v_threshold.fill_(0.05)  # below the bound 0.2

    def forward(self, x):
        s1 = self.a(x * 1.5 + 0.25)
        s2 = self.b(x - 0.5 * s1)
        return s2 * 0.05 + s1


def sj_neuron_net() -> nn.Module:
    return _SJNeurons().eval()


class _OursNeurons(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = DSRLIFNode(T=None, v_threshold=0.7, tau=2.0, delta_t=0.05, alpha=0.3)
        self.b = DSRIFNode(T=None, v_threshold=6.0, alpha=0.5)

    def forward(self, x):
        s1 = self.a(x * 2.0)
        return self.b(x * 3.0 + s1 * 0.1) - s1 * 0.01


def ours_neuron_net() -> nn.Module:
    return _OursNeurons().eval()


def no_neuron_net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 4))


def raising_factory() -> nn.Module:
    raise RuntimeError("checkpoint server unreachable")


def not_a_module():
    return 42


def spiky_input(shape, seed: int = 0, scale: float = 2.0) -> np.ndarray:
    """Inputs around the thresholds so layers fire often (not all zeros, not saturated)."""
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# Exports shared by the test modules of one pytest process (exporting is the slow part).

_EXPORTS: dict = {}
_ROOT = None


def nets_file() -> str:
    import os

    return os.path.abspath(__file__)


def exported(factory: str, shape, formats=("torchscript", "onnx", "pt2"), **options):
    """Export ``export_nets.py:factory`` once per distinct arguments; returns the export folder (a Path)."""
    import atexit
    import shutil
    import tempfile
    import warnings
    from pathlib import Path

    from dsr_deploy.export import export_model
    from dsr_deploy.model_spec import load_model

    global _ROOT
    key = (factory, tuple(shape), tuple(formats), tuple(sorted(options.items())))
    if key not in _EXPORTS:
        if _ROOT is None:
            _ROOT = Path(tempfile.mkdtemp(prefix="dsr-export-tests-"))
            atexit.register(shutil.rmtree, _ROOT, True)
        out = _ROOT / f"export{len(_EXPORTS)}"
        loaded = load_model(f"{nets_file()}:{factory}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_model(loaded.model, shape, out, formats=formats, spec=loaded.spec, **options)
        _EXPORTS[key] = out
    return _EXPORTS[key]


def ours_fixed_T_net() -> nn.Module:
    """Our neuron built with T=6: it rejects any other number of time steps."""
    return nn.Sequential(DSRIFNode(T=6, v_threshold=1.0)).eval()


def single_neuron() -> nn.Module:
    return DSRLIFNode(T=None, v_threshold=0.5, tau=2.0, delta_t=0.05, alpha=0.3).eval()
