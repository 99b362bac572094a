"""What every inference neuron module shares: its layer index, the flat-layout handling and the probe list."""

from __future__ import annotations

from typing import Dict, Optional

from torch import Tensor, nn


class SpikeBase(nn.Module):
    """What the inference neurons share: the parameters as plain floats and an optional probe list."""

    def __init__(self, info):  # a dsr_deploy.convert.NeuronInfo
        super().__init__()
        self.index = info.index
        self.layer_name = info.name
        self.v_threshold = float(info.v_threshold)
        self.alpha = float(info.alpha)
        # 0: input [T, B, ...]; T > 0: a "flat" layer, input [T*B, ...] unflattened to [T, B, ...] around the op.
        self.timesteps = int(info.timesteps or 0) if info.layout == "flat" else 0
        # verify sets this to a list to collect each call's (layer, input, spikes) (dsr_deploy.verify); else None.
        self.probe: Optional[list] = None
        # metadata_props of the emitted ONNX node (the ONNX writer sets the layer index here).
        self.onnx_meta: Optional[Dict[str, str]] = None

    def _spikes(self, x: Tensor) -> Tensor:  # [T, B, ...] -> [T, B, ...]
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        # A flat layer's probe records the [T, B, ...] spikes (what the dsr node of an ONNX file outputs too).
        if self.timesteps:
            xs = x.unflatten(0, (self.timesteps, -1))
            y = self._spikes(xs)
            self._record(xs, y)
            return y.flatten(0, 1)
        return self._record(x, self._spikes(x))

    def _record(self, x: Tensor, y: Tensor) -> Tensor:
        if self.probe is not None:
            self.probe.append((self.index, x, y))
        return y
