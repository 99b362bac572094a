"""The dsr-deploy model zoo (installed as ``dsr_deploy.models``; ``zoo:NAME`` on the command line).

Registry API (stable; the CLI and the exporters use only this):

* ``names() -> list[str]``
* ``build(name, **kwargs) -> torch.nn.Module``: the network; entries with shipped weights load them
  (``weights_only=True``) unless ``pretrained=False``
* ``input_shape(name) -> tuple[int, ...]``: the default ``[T, B, ...]`` input shape
* ``describe(name) -> dict``: a one-line summary, neuron type, checkpoint path if any, the factory defaults

Entries: ``preact-resnet18-{if,lif}`` (CIFAR), ``preact-resnet18-imagenet-{if,lif}``, ``vgg11-dvs-{if,lif}``,
``cnn-small``, ``mlp`` (untrained) and ``digits-cnn`` (shipped weights, the quickstart's model; card in
``digits-cnn.md``). ``build`` forwards ``T``, ``neuron`` ('if' | 'lif'), the neuron hyper-parameters and
``readout`` ('spikes': ``[T, B, classes]``, the default; 'rate': the authors' logits ``[B, classes]``).
SpikingJelly / authors' checkpoints of these architectures load with :func:`.interop.load_spikingjelly`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch


@dataclass
class ZooEntry:
    name: str
    factory: Callable[..., torch.nn.Module]
    input_shape: tuple[int, ...]
    summary: str
    checkpoint: Optional[str] = None  # file name inside this package
    defaults: dict[str, Any] = field(default_factory=dict)
    # What the network sees in use: "direct" (a static image repeated over T, the authors' CIFAR / ImageNet input
    # and the digits model's) or "events" (a different frame per step, DVS); verify generates inputs to match.
    encoding: str = "direct"


_REGISTRY: dict[str, ZooEntry] = {}


def register(entry: ZooEntry) -> None:
    _REGISTRY[entry.name] = entry


def names() -> list[str]:
    _load_definitions()
    return sorted(_REGISTRY)


def _entry(name: str) -> ZooEntry:
    _load_definitions()
    if name not in _REGISTRY:
        from dsr_deploy.errors import UserError

        raise UserError(f"unknown zoo model {name!r}; available: {', '.join(sorted(_REGISTRY)) or 'none'}")
    return _REGISTRY[name]


def build(name: str, **kwargs) -> torch.nn.Module:
    e = _entry(name)
    pretrained = kwargs.pop("pretrained", True)
    # An untrained entry is the same network every time (a seeded initialisation that leaves the caller's RNG
    # alone): an export of it can be rebuilt and verified, and results are reproducible.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed(name))
        model = e.factory(**{**e.defaults, **kwargs})
    if e.checkpoint and pretrained:
        from importlib import resources

        path = resources.files(__name__) / e.checkpoint
        if not path.is_file():
            from dsr_deploy.errors import UserError

            raise UserError(f"zoo model {name!r}: its checkpoint {e.checkpoint} is missing from the installed "
                            "package (reinstall dsr-deploy, or pass pretrained=False for random weights)")
        with resources.as_file(path) as p:
            state = torch.load(p, map_location="cpu", weights_only=True)
        model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
    return model


def _seed(name: str) -> int:
    import zlib

    return zlib.crc32(name.encode())


def input_shape(name: str) -> tuple[int, ...]:
    return tuple(_entry(name).input_shape)


def describe(name: str) -> dict:
    e = _entry(name)
    return {"name": e.name, "summary": e.summary, "input_shape": list(e.input_shape), "checkpoint": e.checkpoint,
            "neuron": e.defaults.get("neuron"), "defaults": dict(e.defaults), "encoding": e.encoding}


_loaded = False


def _load_definitions() -> None:
    # Definitions register themselves on import; kept lazy so `import dsr_deploy` stays light.
    global _loaded
    if _loaded:
        return
    _loaded = True
    from . import zoo  # noqa: F401
