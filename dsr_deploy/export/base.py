"""What every export writer shares: the export context.

A *format* is a writer ``write(ctx, path) -> dict`` registered under a name and a *mode* (:mod:`.formats`). The
default mode ``"multistep"`` writes whole-sequence artifacts (input ``"input"`` ``[T, B, ...]`` -> output
``"output"``); the streaming single-step export with membrane I/O is another mode; both build an
:class:`ExportContext` and share the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..convert import NeuronInfo
from .options import ExportOptions

INPUT_NAME = "input"
OUTPUT_NAME = "output"
PROBE_PREFIX = "spikes_"  # extra outputs of a probe artifact: the spikes of neuron call k
CURRENT_PREFIX = "currents_"  # ... and the input current of neuron call k (where divergence starts)
LAYOUT = "TB..."  # the leading dims of every multi-step input: time, then batch


@dataclass
class ExportContext:
    """Everything a writer needs; built once by :func:`dsr_deploy.export.export_model`."""

    model: nn.Module  # the user's network (never modified)
    neurons: List[NeuronInfo]
    input_shape: Tuple[int, ...]  # example [T, B, ...]
    dtype: torch.dtype = torch.float32
    dynamic_batch: bool = True
    options: ExportOptions = field(default_factory=ExportOptions)  # validated by export_model (export/options.py)
    spec: Optional[str] = None  # the MODEL spec (recorded in the manifest)
    checkpoint: Optional[str] = None
    model_info: Dict[str, Any] = field(default_factory=dict)  # more of the manifest's "model" record (settings)
    # The manifest's "io" record (dsr_deploy.io_adapter, docs/export.md) when the artifact does not take
    # [T, B, ...] spikes in and give the spike train out, e.g. the authors' models ({"input_layout": "static",
    # "output": "logits", "T": 20, ..., "source": "model"}); None: TB in, spikes out. With export options
    # ``model`` is the IOAdapter-wrapped network and ``input_shape`` the artifact's input shape.
    io: Optional[Dict[str, Any]] = None
    trust_pickle: bool = False  # recorded in the manifest: the export needed --trust-pickle
    cache: Dict[str, Any] = field(default_factory=dict)  # what a mode builds once per export (the step module)

    @property
    def input_layout(self) -> str:
        return (self.io or {}).get("input_layout", "TB")

    @property
    def time_dim(self) -> Optional[int]:
        """The input's time dimension (None for a static input repeated T times inside the artifact)."""
        return {"TB": 0, "BT": 1}.get(self.input_layout)

    @property
    def batch_dim(self) -> int:
        return 1 if self.input_layout == "TB" else 0

    @property
    def output_names(self) -> List[str]:
        """The multi-step artifact's outputs: ``output``, and ``readout_steps`` with ``--per-step-readout``."""
        from ..io_adapter import output_names

        return output_names(self.io, OUTPUT_NAME)

    @property
    def T(self) -> int:
        if self.io and self.io.get("T"):
            return int(self.io["T"])
        return int(self.input_shape[self.time_dim if self.time_dim is not None else 0])

    @property
    def batch(self) -> int:
        return int(self.input_shape[self.batch_dim])

    @property
    def fixed_T(self) -> bool:
        """No export may make T dynamic: a static input repeated T times inside, or a readout over T (the LIF
        weights depend on T); ``io.source == "model"``: the model itself holds T."""
        from ..io_adapter import dynamic_T

        return bool(self.io) and (self.io.get("source") == "model" or not dynamic_T(self.io))

    def dynamic_dims(self, dynamic_T: bool = True) -> Dict[int, str]:
        """``{dim: "T" | "batch"}``: the input dimensions an export keeps symbolic."""
        dims: Dict[int, str] = {}
        if dynamic_T and self.time_dim is not None and not self.fixed_T:
            dims[self.time_dim] = "T"
        if self.dynamic_batch:
            dims[self.batch_dim] = "batch"
        return dims

    def trace_shape(self, dynamic_T: bool = True) -> Tuple[int, ...]:
        """The example shape to trace a dynamic-shape export with: torch.export specialises a dimension of
        size 1 (it cannot be symbolic then), so a dynamic T or batch of 1 is traced as 2."""
        s = list(self.input_shape)
        for d in self.dynamic_dims(dynamic_T):
            s[d] = max(s[d], 2)
        return tuple(s)

    def shape_variant(self) -> Tuple[int, ...]:
        """Another input shape the artifact must accept (a different T where it is dynamic, and batch)."""
        s = list(self.input_shape)
        for d, what in self.dynamic_dims().items():
            s[d] += 1 if what == "T" else 2
        return tuple(s)

    def example_input(self, seed: int = 0, shape: Optional[Tuple[int, ...]] = None) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randn(shape or self.input_shape, generator=g, dtype=torch.float32).to(self.dtype)
