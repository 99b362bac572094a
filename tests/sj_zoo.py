"""Test-only access to SpikingJelly 2.0's model zoo (spiking_resnet, sew_resnet, spiking_vgg) in a venv without
torchvision and h5py.

``spikingjelly.activation_based.model``'s package ``__init__`` imports every zoo model, spikformer among them,
whose distributed helpers import h5py; ``spiking_resnet`` / ``spiking_vgg`` import ``load_state_dict_from_url``
from torchvision (used only for pretrained weights). torchvision must not be installed here (its builds pull another
torch), so this shim imports the three model files directly: stand-in package modules for the two packages whose
``__init__`` would fail, and a stand-in ``torchvision.models.utils`` that lives only during the import (it points
at ``torch.hub.load_state_dict_from_url``, never called with pretrained=False). Users with SpikingJelly's
dependencies installed import the zoo normally (``spikingjelly.activation_based.model.spiking_resnet:...``).
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import torch


def _zoo():
    import spikingjelly.activation_based as ab

    base = Path(ab.__file__).parent
    for name, sub in (("spikingjelly.activation_based.model", "model"),
                      ("spikingjelly.activation_based.distributed.vision", "distributed/vision")):
        if name not in sys.modules:
            pkg = types.ModuleType(name)
            pkg.__path__ = [str(base / sub)]
            sys.modules[name] = pkg
    stand_ins = [n for n in ("torchvision", "torchvision.models", "torchvision.models.utils") if n not in sys.modules]
    for n in stand_ins:
        mod = types.ModuleType(n)
        mod.__path__ = []
        sys.modules[n] = mod
    if "torchvision.models.utils" in stand_ins:
        sys.modules["torchvision.models.utils"].load_state_dict_from_url = torch.hub.load_state_dict_from_url
    try:
        return [importlib.import_module(f"spikingjelly.activation_based.model.{n}")
                for n in ("spiking_resnet", "sew_resnet", "spiking_vgg")]
    finally:
        for n in stand_ins:
            sys.modules.pop(n, None)


def spiking_resnet18(**kwargs):
    return _zoo()[0].spiking_resnet18(**kwargs)


def sew_resnet18(**kwargs):
    kwargs.setdefault("cnf", "ADD")
    return _zoo()[1].sew_resnet18(**kwargs)


def spiking_vgg11_bn(**kwargs):
    return _zoo()[2].spiking_vgg11_bn(**kwargs)
