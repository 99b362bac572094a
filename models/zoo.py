"""Zoo definitions register themselves here (see models/__init__.py).

Every factory takes ``T``, ``neuron`` ('if' | 'lif') and the neuron hyper-parameters (``v_threshold``,
``alpha``, ``tau``, ``delta_t``, ``v_threshold_lower_bound``, ...; defaults in :mod:`.common`), and the network
takes ``[T, B, ...]`` (see :func:`dsr_deploy.encoding.direct_encode` for static input). Networks return the output
layer's spike train ``[T, B, classes]``; ``readout="rate"`` returns the authors' logits (firing rate over T)
instead, and :func:`dsr_deploy.models.common.firing_rate` turns any artifact's spike output into the same logits.
"""

from __future__ import annotations

from . import ZooEntry, register
from .digits import DIGITS_CHECKPOINT, DIGITS_MODEL_KWARGS, DIGITS_T
from .preact_resnet import PreActResNet18, PreActResNet18ImageNet
from .small import SpikingCNN, SpikingMLP
from .vgg import VGG11DVS

for _kind in ("if", "lif"):
    _K = _kind.upper()
    register(ZooEntry(
        name=f"preact-resnet18-{_kind}", factory=PreActResNet18, input_shape=(20, 1, 3, 32, 32),
        summary=f"Spiking PreAct-ResNet-18 (DSR-{_K}), CIFAR-sized input, the authors' structure; untrained",
        defaults={"T": 20, "neuron": _kind, "num_classes": 10},
    ))
    register(ZooEntry(
        name=f"preact-resnet18-imagenet-{_kind}", factory=PreActResNet18ImageNet, input_shape=(50, 1, 3, 224, 224),
        summary=f"Spiking PreAct-ResNet-18 (DSR-{_K}) with the 7x7 stem, ImageNet-sized input; untrained",
        defaults={"T": 50, "neuron": _kind, "num_classes": 1000},
    ))
    register(ZooEntry(
        name=f"vgg11-dvs-{_kind}", factory=VGG11DVS, input_shape=(10, 1, 2, 48, 48),
        summary=f"Spiking VGG-11 (DSR-{_K}) for DVS input (2 channels, 48x48), the authors' structure; untrained",
        defaults={"T": 10, "neuron": _kind, "num_classes": 10}, encoding="events",
    ))

register(ZooEntry(
    name="cnn-small", factory=SpikingCNN, input_shape=(8, 1, 1, 28, 28),
    summary="Small spiking CNN (2 conv, DSR-IF by default), 28x28 grey input; untrained",
    defaults={"T": 8, "neuron": "if", "in_channels": 1, "image_size": 28, "channels": (16, 32), "num_classes": 10,
              "v_threshold": 1.0},
))
register(ZooEntry(
    name="mlp", factory=SpikingMLP, input_shape=(8, 1, 1, 28, 28),
    summary="Spiking MLP 784-256-10 (DSR-IF by default), 28x28 grey input; untrained",
    defaults={"T": 8, "neuron": "if", "in_features": 784, "hidden": (256,), "num_classes": 10, "v_threshold": 1.0},
))
register(ZooEntry(
    name="digits-cnn", factory=SpikingCNN, input_shape=(DIGITS_T, 1, 1, 8, 8),
    summary="Small spiking CNN (DSR-IF) trained on scikit-learn's 8x8 digits; the quickstart's default model",
    checkpoint=DIGITS_CHECKPOINT, defaults=dict(DIGITS_MODEL_KWARGS),
))
