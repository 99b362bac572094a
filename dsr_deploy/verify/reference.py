"""The PyTorch reference run: the user's network with hooks recording every neuron call's input and spikes."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import torch

from ..convert import find_neuron_modules, find_neurons
from ..errors import UserError


@dataclass
class Call:
    """One neuron call of the reference run: its layer, its input and its spikes (as the training neuron
    took and returned them)."""

    layer: int
    x: np.ndarray
    y: np.ndarray


class Reference:
    """The user's network with hooks on its neurons: output and every neuron call's input and spikes."""

    def __init__(self, model: torch.nn.Module):
        self.model = copy.deepcopy(model).eval()
        self.infos = find_neurons(self.model)
        self._calls: List[Call] = []
        for info, m in zip(self.infos, find_neuron_modules(self.model).values()):
            m.register_forward_hook(self._hook(info.index))

    def _hook(self, index: int):
        def hook(_module, inputs, output):
            x = inputs[0].detach().cpu().numpy().copy()
            self._calls.append(Call(index, x, output.detach().cpu().numpy().copy()))
        return hook

    def neurons(self) -> dict:
        """Layer index -> the reference's training neuron module (what a neuron that quantises its input is compared
        with, on the input it integrated)."""
        return {info.index: m for info, m in zip(self.infos, find_neuron_modules(self.model).values())}

    def run(self, x: np.ndarray) -> Tuple[np.ndarray, List[Call]]:
        self._calls = []
        for m in self.model.modules():  # SpikingJelly memory modules: no state carried between inputs
            if hasattr(m, "reset") and callable(m.reset) and type(m).__module__.startswith("spikingjelly"):
                m.reset()
        try:
            with torch.no_grad():
                out = self.model(torch.from_numpy(x))
        except (KeyboardInterrupt, GeneratorExit):
            raise
        except BaseException as exc:  # the user's forward: SystemExit is a failure too (dsr_deploy.guard)
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"the PyTorch model rejects input {list(x.shape)}: {msg}") from exc
        if not isinstance(out, torch.Tensor):
            raise UserError(f"the PyTorch model returned {type(out).__name__}, expected one tensor")
        return out.detach().cpu().numpy(), list(self._calls)


def top1(output: np.ndarray, io: Optional[dict] = None) -> np.ndarray:
    """Per batch item, the predicted class: for a spike-train output ``[T, B, ...]`` (``[B, T, ...]`` with the
    BT layout) the arg-max of the output averaged over T; for a logits output ``[B, ...]`` its arg-max. The
    features after B are flattened. An output with one value per item always agrees; the other figures judge it."""
    io = io or {}
    o = output.astype(np.float64)
    if io.get("output") == "logits":
        if o.ndim < 1:
            raise UserError(f"the output has shape {list(o.shape)}; expected logits [B, ...]")
    else:
        if o.ndim < 2:
            raise UserError(f"the output has shape {list(o.shape)}; expected [T, B, ...]")
        o = o.mean(axis=1 if io.get("input_layout") == "BT" else 0)
    return o.reshape(o.shape[0], -1).argmax(axis=1)


