"""Artifacts that take and return what the user's code does: input layout, direct encoding, readout.

Export options (``dsr-deploy export --layout TB|BT --encode none|direct --readout none|mean|lif-rate``) wrap the
network in :class:`IOAdapter` before export, so every format (TorchScript, ONNX with every lowering, pt2) carries
them, and record them in the manifest as ``io`` (the shared contract, see docs/export.md):

``{"input_layout": "TB" | "BT" | "static", "output": "spikes" | "logits", "T": int, "encode": "none" | "direct",
"readout": "none" | "mean" | "lif-rate", "source": "export options"}``

* ``--layout BT``: the artifact takes ``[B, T, ...]`` and returns ``[B, T, ...]`` spikes (a transpose each side).
* ``--encode direct``: the artifact takes a static ``[B, ...]`` input and repeats it T times inside (the
  authors' CIFAR / ImageNet input); T is fixed.
* ``--readout mean``: logits ``[B, classes]`` = the output layer's firing rate over T (IF: the authors' mean over
  T); ``--readout lif-rate``: the seed's weighted rate with the output layer's ``tau`` / ``delta_t`` (the authors'
  LIF logits). Both are :class:`dsr_deploy.models.common.RateReadout` in eval mode (one source of the math: the
  IF mean is counted, so every backend gives the same bits); T is fixed.

``--input-shape`` stays the network's ``[T, B, ...]`` shape; the manifest's ``input_shape`` is the artifact's.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .contract import READOUT_KINDS
from .errors import UserError

LAYOUTS = ("TB", "BT")
ENCODINGS = ("none", "direct")
READOUTS = ("none", *READOUT_KINDS)


def io_record(T: int, layout: str = "TB", encode: str = "none", readout: str = "none",
              per_step_readout: bool = False) -> Optional[Dict[str, Any]]:
    """The manifest's ``io`` record for these options, or None for the default (TB in, spikes out).
    ``per_step_readout`` (``--per-step-readout``): a second output, the readout after every step (early exit)."""
    if layout not in LAYOUTS:
        raise UserError(f"unknown --layout {layout!r}; choose {' or '.join(LAYOUTS)}")
    if encode not in ENCODINGS:
        raise UserError(f"unknown --encode {encode!r}; choose {' or '.join(ENCODINGS)}")
    if readout not in READOUTS:
        raise UserError(f"unknown --readout {readout!r}; choose {', '.join(READOUTS)}")
    if encode == "direct" and layout != "TB":
        raise UserError("--encode direct takes a static [B, ...] input (no time dimension): --layout does not apply")
    if per_step_readout and readout == "none":
        raise UserError("--per-step-readout adds the readout after every step: give the readout "
                        "(--readout mean or lif-rate)")
    if layout == "TB" and encode == "none" and readout == "none":
        return None
    record = {"input_layout": "static" if encode == "direct" else layout,
              "output": "logits" if readout != "none" else "spikes", "T": int(T), "encode": encode,
              "readout": readout, "source": "export options"}
    if per_step_readout:
        record["per_step_readout"] = True
    return record


def output_names(io: Optional[Mapping[str, Any]], default: str) -> List[str]:
    """The artifact's output names: ``default``, and with ``--per-step-readout`` the per-step readout's."""
    from .contract import READOUT_STEPS

    return [default, READOUT_STEPS] if (io or {}).get("per_step_readout") else [default]


def artifact_shape(network_shape: Sequence[int], io: Optional[Mapping[str, Any]]) -> Tuple[int, ...]:
    """The artifact's input shape for the network's ``[T, B, ...]`` shape."""
    s = tuple(int(d) for d in network_shape)
    layout = (io or {}).get("input_layout", "TB")
    if layout == "static":
        return s[1:]
    if layout == "BT":
        return (s[1], s[0]) + s[2:]
    return s


def canonical_shape(shape: Sequence[Any], io: Optional[Mapping[str, Any]]) -> list:
    """An artifact input shape (dims may be symbolic) as the network's ``[T, B, ...]`` (T from ``io`` when the
    input is static)."""
    s = list(shape)
    layout = (io or {}).get("input_layout", "TB")
    if layout == "static":
        return [int(io["T"])] + s
    if layout == "BT" and len(s) >= 2:
        return [s[1], s[0]] + s[2:]
    return s


def time_dim(io: Optional[Mapping[str, Any]]) -> Optional[int]:
    """Where T sits in the artifact's input (None: static input)."""
    return {"TB": 0, "BT": 1, "static": None}[(io or {}).get("input_layout", "TB")]


def batch_dim(io: Optional[Mapping[str, Any]]) -> int:
    return 1 if (io or {}).get("input_layout", "TB") == "TB" else 0


def dynamic_T(io: Optional[Mapping[str, Any]]) -> bool:
    """Whether the artifact may take another T than the export's: not with direct encoding or a readout."""
    return time_dim(io) is not None and (io or {}).get("readout", "none") == "none"


def readout_module(readout: str, neurons: List[Any]) -> nn.Module:
    from .models.common import RateReadout

    if readout == "mean":
        return RateReadout("if")
    last = neurons[-1]
    if last.kind != "lif":
        raise UserError(f"--readout lif-rate weights the output layer's spikes by its tau and delta_t; the output "
                        f"layer {last.name or '<root>'} is an IF neuron: use --readout mean")
    return RateReadout("lif", last.tau, last.delta_t)


class IOAdapter(nn.Module):
    """``net`` (``[T, B, ...]`` in, spikes out) with the I/O of ``io`` (see the module docs)."""

    def __init__(self, net: nn.Module, io: Mapping[str, Any], neurons: Optional[List[Any]] = None):
        super().__init__()
        from .convert import find_neurons

        self.net = net
        self.T = int(io["T"])
        self.static = io["input_layout"] == "static"
        self.bt = io["input_layout"] == "BT"
        self.logits = io["readout"] != "none"
        self.readout = readout_module(io["readout"], neurons or find_neurons(net)) if self.logits else nn.Identity()
        self.readout.eval()

    def forward(self, x: Tensor) -> Tensor:
        if self.static:
            x = x.unsqueeze(0).repeat([self.T] + [1] * x.dim())
        elif self.bt:
            x = x.transpose(0, 1)
        y = self.net(x)
        if self.logits:
            return self.readout(y)
        if self.bt:
            y = y.transpose(0, 1)
        return y

    def train(self, mode: bool = True) -> IOAdapter:
        super().train(mode)
        self.readout.eval()  # the readout is the deterministic eval-mode rate in every artifact
        return self


class PerStepReadout(IOAdapter):
    """:class:`IOAdapter` with ``--per-step-readout``: ``(logits, readout_steps)``, ``readout_steps[t]`` the
    readout of steps 0..t, computed by the full readout's own ops on each prefix (so bit for bit the full model's
    readout on the first t+1 steps, in every backend)."""

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        if self.static:
            x = x.unsqueeze(0).repeat([self.T] + [1] * x.dim())
        elif self.bt:
            x = x.transpose(0, 1)
        y = self.net(x)
        steps = [self.readout(y[: t + 1]) for t in range(self.T)]
        return steps[-1], torch.stack(steps)


def adapter(net: nn.Module, io: Mapping[str, Any], neurons: Optional[List[Any]] = None) -> nn.Module:
    """The I/O wrapper for the ``io`` record: :class:`PerStepReadout` or :class:`IOAdapter`."""
    return (PerStepReadout if io.get("per_step_readout") else IOAdapter)(net, io, neurons)


def wrap_io(model: nn.Module, io: Optional[Mapping[str, Any]]) -> nn.Module:
    """``model`` with the I/O of a manifest's ``io`` record (``model`` itself when absent or ``source: model``).
    The record is untrusted: its fields are checked as export options."""
    if not io or io.get("source") == "model":
        return model
    if not isinstance(io, Mapping) or not isinstance(io.get("T"), int) or isinstance(io.get("T"), bool) \
            or io["T"] <= 0:
        raise UserError("the manifest's io record has no positive integer T")
    layout = "TB" if io.get("input_layout") == "static" else io.get("input_layout")
    record = io_record(io["T"], str(layout), str(io.get("encode")), str(io.get("readout")),
                       io.get("per_step_readout") is True)
    if record is None or any(record.get(k) != io.get(k) for k in ("input_layout", "output", "encode", "readout",
                                                                   "per_step_readout")):
        raise UserError(f"the manifest's io record is inconsistent: {dict(io)}")
    # The reference of the artifact's ``output`` (verify): the logits; ``readout_steps`` has its own check.
    return IOAdapter(model, record)


def check_output(out: Tensor, shape: Sequence[int], io: Optional[Mapping[str, Any]]) -> Optional[str]:
    """Why ``out`` (the artifact model's output for input ``shape``) is not what ``io`` says, or None."""
    if isinstance(out, (tuple, list)):  # --per-step-readout: (logits, readout after every step)
        out = out[0]
    if io and io.get("output") == "logits":
        B = shape[batch_dim(io)]
        if out.dim() < 1 or out.shape[0] != B:
            return f"the model's logits have shape {list(out.shape)}; expected [B, ...] with B={B}"
        return None
    if time_dim(io) is None:  # static input [B, ...], spikes [T, B, ...] out
        T, B = int(io["T"]), shape[0]
        if out.dim() < 2 or out.shape[0] != T or out.shape[1] != B:
            return f"the model's output has shape {list(out.shape)}; expected [T, B, ...] with T={T}, B={B}"
        return None
    t, b = time_dim(io), batch_dim(io)
    if out.dim() < 2 or out.shape[t] != shape[t] or out.shape[b] != shape[b]:
        want = "[B, T, ...]" if t == 1 else "[T, B, ...]"
        return (f"the model's output has shape {list(out.shape)}; expected {want} with T={shape[t]}, B={shape[b]} "
                "(multi-step layout)")
    return None
