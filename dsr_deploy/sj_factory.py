"""SpikingJelly model-zoo factories from the command line: ``--set spiking_neuron=LIFNode --set step_mode=m``.

SpikingJelly's zoo factories (``spiking_resnet18``, ``sew_resnet18``, ``spiking_vgg11_bn``, ...) take the neuron
*class* (``spiking_neuron=``) and hand their other keywords to every neuron; ``step_mode='m'`` reaches only the
neurons, and the zoo's own convention is ``functional.set_step_mode(net, 'm')`` after building. So, for a factory
that takes ``spiking_neuron``: a class name among :data:`NEURON_NAMES` becomes SpikingJelly's class, ``v_reset=none``
becomes None (a soft reset), and a network built with ``step_mode=m`` (or ``multi_step=true``) gets every
SpikingJelly module set to multi-step, as the zoo's documentation does. SpikingJelly is imported only then, for a
spec that asks for it.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping

from torch import nn

from .errors import UserError

NEURON_NAMES = ("IFNode", "LIFNode", "ParametricLIFNode")


def resolve(settings: Mapping[str, Any]) -> Dict[str, Any]:
    """The factory's keywords with SpikingJelly's neuron class (and ``v_reset=none``) resolved."""
    out = dict(settings)
    name = out.get("spiking_neuron")
    if not isinstance(name, str):
        return out
    short = name.rsplit(".", 1)[-1]
    if short not in NEURON_NAMES:
        raise UserError(f"--set spiking_neuron={name}: supported: {', '.join(NEURON_NAMES)} (SpikingJelly's)")
    try:
        from spikingjelly.activation_based import neuron
    except ImportError as exc:
        raise UserError(f"--set spiking_neuron={name} needs SpikingJelly (pip install spikingjelly): {exc}") from exc
    out["spiking_neuron"] = getattr(neuron, short)
    if isinstance(out.get("v_reset"), str) and out["v_reset"].lower() == "none":
        out["v_reset"] = None
    return out


def finish(model: nn.Module, settings: Mapping[str, Any]) -> nn.Module:
    """Multi-step everywhere when the factory was asked for it (the zoo sets it on the neurons only)."""
    if settings.get("step_mode") != "m" and settings.get("multi_step") is not True:
        return model
    if not any(type(m).__module__.startswith("spikingjelly.") for m in model.modules()):
        return model
    from spikingjelly.activation_based import functional

    functional.set_step_mode(model, "m")
    return model
