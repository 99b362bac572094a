"""TorchScript writer: the reference recurrences of :mod:`dsr_deploy.functional` scripted into the artifact.

The ``"script"`` inference copy's neurons call ``functional.if_forward`` / ``lif_forward``; scripting compiles
that very code (a real ``for t in range(x.size(0))`` loop, so T and batch stay dynamic) into the file, which
then loads with plain ``torch.jit.load`` in a process that never imports dsr_deploy.

The whole network is scripted when TorchScript accepts it (plain ``torch.nn`` networks). SpikingJelly's layers
do not script, so otherwise the neurons are scripted one by one and the network around them is traced: a
traced call into a scripted module keeps its loop, and the traced layers record shapes symbolically. The writer
then checks the traced module on a second input with a different T and batch against the eager inference copy
and refuses to write a module that baked in the example's shape.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Dict, Tuple

import torch
from torch import nn

from ..convert import IFSpikeScript, LIFSpikeScript, SJSpikeScript, inference_copy, set_child
from ..errors import UserError, first_line
from ..io import atomic_path, write_through_memory
from .base import PROBE_PREFIX, ExportContext

_SCRIPT_NEURONS = (IFSpikeScript, LIFSpikeScript, SJSpikeScript)


class _Probed(nn.Module):
    """Wraps a network so its forward returns ``(output, spikes_0, ..., spikes_n-1, currents_0, ...,
    currents_n-1)``: each neuron call's spikes and input, in call order."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self._sink: list = []
        self._currents: list = []
        for name, m in list(net.named_modules()):
            if isinstance(m, (*_SCRIPT_NEURONS, torch.jit.ScriptModule)) and name and hasattr(m, "index"):
                set_child(net, name, _Recorder(m, self._sink, self._currents))

    def forward(self, x):
        self._sink.clear()
        self._currents.clear()
        out = self.net(x)
        spikes, currents = list(self._sink), list(self._currents)
        self._sink.clear()
        self._currents.clear()
        return (out, *spikes, *currents)


class _Recorder(nn.Module):
    def __init__(self, inner: nn.Module, sink: list, currents: list):
        super().__init__()
        self.inner = inner
        self.sink = sink
        self.currents = currents

    def forward(self, x):
        y = self.inner(x)
        # A flat layer ([T*B, ...]) records its [T, B, ...] spikes, as the other formats' probes do.
        t = int(getattr(self.inner, "timesteps", 0) or 0)
        self.sink.append(y.unflatten(0, (t, -1)) if t > 0 else y)
        self.currents.append(x.unflatten(0, (t, -1)) if t > 0 else x)
        return y


def _same(got: Any, want: Any) -> bool:
    """Bit-equal outputs (a tensor, or a tuple of them: ``--per-step-readout``)."""
    if isinstance(want, (tuple, list)):
        return isinstance(got, (tuple, list)) and len(got) == len(want) and all(map(_same, got, want))
    return isinstance(got, torch.Tensor) and got.shape == want.shape and torch.equal(got, want)


def script_model(ctx: ExportContext, probe: bool = False) -> Tuple[torch.jit.ScriptModule, str]:
    """The TorchScript module of ``ctx.model`` and how it was made (``"script"`` or ``"trace"``)."""
    net = inference_copy(ctx.model, "script")
    if probe and isinstance(net, _SCRIPT_NEURONS):
        net = nn.Sequential(net)  # a single-neuron network: give the probe a child to record
    x = ctx.example_input()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not probe:
            try:
                return torch.jit.script(net), "script"
            except Exception:  # SpikingJelly layers and the like: fall back to scripted neurons + trace
                pass
        for name, m in list(net.named_modules()):
            if isinstance(m, _SCRIPT_NEURONS):
                scripted = torch.jit.script(m)
                if not name:
                    return (scripted if not probe else torch.jit.trace(_Probed(m), x, check_trace=False)), "script"
                set_child(net, name, scripted)
        target = _Probed(net) if probe else net
        try:
            traced = torch.jit.trace(target, x, check_trace=False)
        except Exception as exc:
            raise UserError(f"TorchScript export failed: {first_line(exc)}") from exc
        # The traced layers must not have baked in the example's T / batch.
        x2 = ctx.example_input(seed=1, shape=ctx.shape_variant())
        ref = inference_copy(ctx.model, "op")
        with torch.no_grad():
            want = ref(x2)
            try:
                got = traced(x2)
                got = got[0] if probe else got
                ok = _same(got, want)
            except Exception:
                ok = False
        if not ok:
            raise UserError("TorchScript export: the traced network does not generalise to another T / batch "
                            "(it baked in the example's shape); make its forward scriptable")
    return traced, "trace"


def write_torchscript(ctx: ExportContext, path: Path) -> Dict[str, Any]:
    module, method = script_model(ctx)
    with atomic_path(path) as tmp:
        write_through_memory(tmp, lambda f: torch.jit.save(module, f))
    return {"format": "torchscript", "path": Path(path).name, "method": method, "dynamic_T": not ctx.fixed_T,
            "dynamic_batch": True, "needs_dsr_deploy": False}


def write_torchscript_probe(ctx: ExportContext, path: Path) -> Dict[str, Any]:
    """The probe variant (outputs ``output``, ``spikes_<k>``, ``currents_<k>``) that verify uses for per-layer
    agreement and to show where divergence starts."""
    module, method = script_model(ctx, probe=True)
    with atomic_path(path) as tmp:
        write_through_memory(tmp, lambda f: torch.jit.save(module, f))
    return {"format": "torchscript", "path": str(path), "method": method, "probe_prefix": PROBE_PREFIX}
