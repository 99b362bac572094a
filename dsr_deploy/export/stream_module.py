"""The single-step module of a streaming export: the network run for one time step, every DSR neuron's membrane
carried in and out as explicit tensors (:class:`StreamingModule`, built by :func:`build_streaming_module`).

Each neuron is replaced by a step of the layer (:class:`_StepNeuron`): under ONNX export a ``dsr::DSRIFStep`` /
``DSRLIFStep`` node, with ``lowering="ops"`` a call of ``torch.ops.dsr.if_spike`` / ``lif_spike`` with ``v_init``
and ``return_state``, otherwise the scripted reference step (:func:`dsr_deploy.functional.if_step` /
``lif_step``). The exporters and the mode's writers are :mod:`.streaming`'s.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .. import functional as F
from ..contract import DOMAIN as ONNX_DOMAIN
from ..contract import DOMAIN_VERSION as ONNX_DOMAIN_VERSION
from ..contract import SJ_STEP_OP_TYPES, STEP_OP_TYPES
from ..convert import set_child
from ..errors import UserError, first_line

__all__ = ["ALL_STEP_OPS", "StreamingModule", "build_streaming_module", "initial_membrane", "step_functions",
           "streamable_neurons"]

IF_STEP_OP = STEP_OP_TYPES["if"]
LIF_STEP_OP = STEP_OP_TYPES["lif"]
ALL_STEP_OPS = {**STEP_OP_TYPES, **SJ_STEP_OP_TYPES}  # NeuronInfo.kind -> the step node's op type


def initial_membrane(info) -> float:
    """Where a layer's membrane starts a stream: 0, or a SpikingJelly hard reset's v_reset (as SpikingJelly does)."""
    if not info.kind.startswith("sj_") or info.v_reset is None:
        return 0.0
    return float(torch.tensor(info.v_reset, dtype=torch.float32))  # the float32 membrane's value




def _find_neurons(model: nn.Module) -> list:
    from ..convert import find_neurons

    try:
        return find_neurons(model)
    except ValueError as exc:
        raise UserError(str(exc)) from exc


# ---------------------------------------------------------------------------------------------------------
# The single-step module.

_scripted: dict[str, Any] = {}


def step_functions() -> tuple:
    """The scripted reference steps ``(if_step, lif_step)`` (scripted once per process)."""
    if not _scripted:
        _scripted["if"] = torch.jit.script(F.if_step)
        _scripted["lif"] = torch.jit.script(F.lif_step)
        _scripted["sj"] = torch.jit.script(F.sj_step)
    return _scripted["if"], _scripted["lif"]


def sj_step_function():
    """The scripted SpikingJelly reference step (:func:`dsr_deploy.functional.sj_step`)."""
    step_functions()
    return _scripted["sj"]


class _StateIO:
    """The membranes of the call in progress: a side channel between StreamingModule and its neurons."""

    def __init__(self, n: int):
        self.v_in: Sequence[Tensor] = ()
        self.v_out: list[Tensor | None] = [None] * n


class _StepNeuron(nn.Module):
    """Stands in for a DSR neuron: one step of the layer, membrane read from and written to the side channel."""

    def __init__(self, info, index: int, io: _StateIO, lowering: str):
        from ..convert import onnx_attributes
        from ..convert_sj import sj_onnx_attributes
        from ..neuron_spec import SJ_CHARGE

        super().__init__()
        self.info, self.index, self.lowering = info, index, lowering
        self.sj_charge = SJ_CHARGE.get(info.kind)  # None: a DSR neuron
        self.onnx_attrs = sj_onnx_attributes(info) if self.sj_charge else onnx_attributes(info)
        object.__setattr__(self, "_io", io)  # not a submodule, not a buffer

    def forward(self, x_seq: Tensor) -> Tensor:
        if not torch.jit.is_tracing() and (x_seq.dim() < 2 or x_seq.shape[0] != 1):
            raise RuntimeError(f"{self.info.name}: a streaming step expects [1, B, ...], got {list(x_seq.shape)}")
        io, i, n = self._io, self.index, self.info
        if io.v_out[i] is not None:
            raise RuntimeError(f"neuron {n.name} is called twice in one step; streaming needs one call per step")
        x_t, v = x_seq[0], io.v_in[i]
        if torch.onnx.is_in_onnx_export():
            op = ALL_STEP_OPS[n.kind]
            y_t, v_new = torch.onnx.ops.symbolic_multi_out(
                f"{ONNX_DOMAIN}::{op}", (x_t, v), self.onnx_attrs,
                dtypes=(x_t.dtype, torch.float32), shapes=(x_t.shape, v.shape), version=ONNX_DOMAIN_VERSION,
            )
        elif self.sj_charge is not None:
            y_t, v_new = self._sj_step(x_seq, v)
        elif self.lowering == "ops":
            from .. import ops

            ops.load_native()
            if n.kind == "if":
                y, v_new = torch.ops.dsr.if_spike(x_seq, n.v_threshold, n.alpha, v, True)
            else:
                y, v_new = torch.ops.dsr.lif_spike(x_seq, n.v_threshold, n.alpha, n.tau, n.delta_t, v, True,
                                                   n.decay, n.gain)
            y_t = y[0]
        else:
            if_step, lif_step = step_functions()
            if n.kind == "if":
                y_t, v_new = if_step(x_t, v, n.v_threshold, n.alpha)
            else:
                y_t, v_new = lif_step(x_t, v, n.v_threshold, n.alpha, n.tau, n.delta_t, n.decay, n.gain)
        io.v_out[i] = v_new
        return y_t.unsqueeze(0)

    def _sj_step(self, x_seq: Tensor, v: Tensor) -> tuple:
        n = self.info
        decay_input = bool(n.decay_input) if n.decay_input is not None else True
        leak = float(n.leak or 0.0)
        if self.lowering == "ops":
            y, v_new = torch.ops.dsr.sj_spike(x_seq, self.sj_charge, n.v_threshold, n.v_reset, leak, decay_input, v,
                                              True)
            return y[0], v_new
        return sj_step_function()(x_seq[0], v, self.sj_charge, n.v_threshold, n.v_reset, leak, decay_input)


class StreamingModule(nn.Module):
    """``forward(x_t, v_in_0, ..., v_in_{n-1}) -> (y_t, v_out_0, ..., v_out_{n-1})`` around a multi-step net.

    With a readout (:meth:`with_readout`, ``export --mode streaming --readout``) one more state pair follows the
    membranes, ``v_in_n`` / ``v_out_n``: the output layer's spikes of the last ``window`` steps ``[B, window, ...]``,
    newest last, and ``y_t`` is the readout of that window (:class:`RateReadout` over ``window`` steps, zeros for
    steps not yet seen). After ``window`` steps from zeros it is the multi-step export's readout, the same module on
    the same ``[T, B, ...]`` spikes; the step itself stays stateless, so servers and clients carry it as they carry
    the membranes."""

    def __init__(self, net: nn.Module, neurons: list, state_shapes: list[tuple[int, ...]],
                 lowering: str = "functional"):
        super().__init__()
        self.net = net
        self.neurons = neurons
        self.state_shapes = state_shapes  # per-sample shapes (no batch dim), one per neuron layer
        self.lowering = lowering
        self.readout: nn.Module | None = None
        self.readout_kind = "none"
        self.readout_shape: tuple[int, ...] | None = None  # per sample: (window, *y_t)
        object.__setattr__(self, "_io", None)

    def with_readout(self, kind: str, window: int, step_output_shape: Sequence[int]) -> StreamingModule:
        """Carry the readout ``kind`` (``mean`` / ``lif-rate``) over ``window`` steps as the last state pair."""
        from ..io_adapter import readout_module

        self.readout = readout_module(kind, self.neurons).eval()
        self.readout_kind = kind
        self.readout_shape = (int(window), *(int(d) for d in step_output_shape))
        return self

    @property
    def all_state_shapes(self) -> list[tuple[int, ...]]:
        """Every state's per-sample shape: the membranes, then the readout's window (when there is one)."""
        return list(self.state_shapes) + ([self.readout_shape] if self.readout_shape is not None else [])

    def forward(self, x_t: Tensor, *v_in: Tensor):
        io, n = self._io, len(self.neurons)
        if len(v_in) != len(self.all_state_shapes):
            raise RuntimeError(f"expected {len(self.all_state_shapes)} states, got {len(v_in)}")
        io.v_in, io.v_out = v_in[:n], [None] * n
        y = self.net(x_t.unsqueeze(0))
        missing = [self.neurons[i].name for i, v in enumerate(io.v_out) if v is None]
        if missing:
            raise RuntimeError(f"neurons not called in this step: {missing}")
        v_out = list(io.v_out)
        io.v_in, io.v_out = (), [None] * n
        if self.readout is None:
            return (y[0], *v_out)
        # The window moves one step: the oldest step leaves, this step's spikes enter last.
        # (y is [1, B, ...]: a transpose, not a reshape, so the exported graph keeps the batch symbolic)
        window = torch.cat([v_in[n][:, 1:].to(y.dtype), y.transpose(0, 1)], dim=1)
        logits = self.readout(window.transpose(0, 1).contiguous())  # [T, B, ...] as the multi-step readout sees
        return (logits, *v_out, window.to(torch.float32))

    def zero_states(self, batch: int, device=None) -> list[Tensor]:
        """The states that start a stream: zeros, v_reset for a SpikingJelly hard-reset layer; an empty window."""
        states = [torch.full((batch, *s), initial_membrane(n), dtype=torch.float32, device=device)
                  for n, s in zip(self.neurons, self.state_shapes)]
        if self.readout_shape is not None:
            states.append(torch.zeros((batch, *self.readout_shape), dtype=torch.float32, device=device))
        return states


def _replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    if name == "":
        raise UserError("the model is a bare neuron; wrap it in a network (nn.Sequential) to stream it")
    set_child(root, name, new)


def streamable_neurons(model: nn.Module, lowering: str) -> list:
    """The model's neurons, after checking that it can be streamed with ``lowering`` (one-line errors)."""
    if lowering not in ("functional", "ops"):
        raise UserError(f"unknown streaming lowering {lowering!r}; use 'functional' or 'ops'")
    neurons = _find_neurons(model)
    if not neurons:
        raise UserError("the model has no DSR neuron (DSRIFNode / DSRLIFNode) nor a supported SpikingJelly one; "
                        "nothing to stream")
    flat = [n.name for n in neurons if n.layout == "flat"]
    if flat:
        raise UserError(f"neuron {flat[0]} takes [T*B, ...] with T fixed inside the model (the authors' layout); "
                        "it cannot be streamed one step at a time: export it in multi-step mode")
    return neurons


def _check_keeps_T(net: nn.Module, example_step: Tensor, out: Any) -> None:
    """The output must keep T first: ``[1, B, ...]`` for one step and ``[2, B, ...]`` for two. With one step
    and a batch of one, a network that reduces over T (``[B, classes]``) looks the same; two steps tell."""
    shape = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
    fine = isinstance(out, Tensor) and out.dim() >= 1 and out.shape[0] == 1
    if fine:
        try:
            with torch.no_grad():
                out2 = net(torch.cat([example_step.unsqueeze(0)] * 2))
        except Exception as exc:  # noqa: BLE001 - any failure here is the same finding
            raise UserError(f"the model failed on two time steps: {first_line(exc)}") from exc
        fine = isinstance(out2, Tensor) and out2.dim() == out.dim() and out2.shape[0] == 2 \
            and out2.shape[1:] == out.shape[1:]
        two = list(out2.shape) if isinstance(out2, Tensor) else type(out2).__name__
        shape = f"{shape} (and for two steps {two})"
    if not fine:
        raise UserError(
            f"the network's output for one time step is {shape}: streaming needs an output that keeps the "
            "time dimension first ([T, B, ...]); export the network without its reduction over T"
        )


def build_streaming_module(model: nn.Module, example_step: Tensor, lowering: str = "functional",
                           readout: str = "none", window: int | None = None) -> StreamingModule:
    """Wrap ``model`` (multi-step, [T, B, ...]) as a single-step :class:`StreamingModule`.

    ``example_step`` is one time step ``[B, ...]``; it fixes each membrane's per-sample shape. ``model`` itself
    is not modified (a copy is wrapped) and must be in eval mode semantics (it is put in eval mode). ``readout``
    (``mean`` / ``lif-rate``) over ``window`` steps: :meth:`StreamingModule.with_readout`.
    """
    from ..convert import find_neuron_modules

    neurons = streamable_neurons(model, lowering)
    net = copy.deepcopy(model).eval()
    from ..neuron import DSRIFNode, DSRLIFNode

    for m in net.modules():  # a network built for a fixed T (every zoo model) streams one step at a time
        if isinstance(m, (DSRIFNode, DSRLIFNode)):
            m.T = None
    if example_step.dim() < 1:
        raise UserError("the example step must be [B, ...]")
    # Membrane shapes: the input shape each neuron sees in one step.
    seen: dict[str, tuple] = {}
    hooks = []
    modules = find_neuron_modules(net)
    for n in neurons:
        m = modules[n.name]

        def hook(mod, args, name=n.name):
            if name in seen:
                raise UserError(f"neuron {name} is called more than once per forward; it cannot be streamed")
            seen[name] = tuple(args[0].shape)
        hooks.append(m.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            out = net(example_step.unsqueeze(0))
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"the model failed on one time step {list(example_step.unsqueeze(0).shape)}: {exc}") from exc
    finally:
        for h in hooks:
            h.remove()
    unused = [n.name for n in neurons if n.name not in seen]
    if unused:
        raise UserError(f"neurons never called in a forward pass: {', '.join(unused)}")
    _check_keeps_T(net, example_step, out)
    batch = example_step.shape[0]
    shapes = []
    for n in neurons:
        s = seen[n.name]
        if len(s) < 2 or s[0] != 1 or s[1] != batch:
            raise UserError(f"neuron {n.name} sees {list(s)}: expected [1, B, ...] (time, then batch)")
        shapes.append(tuple(int(d) for d in s[2:]))
    io = _StateIO(len(neurons))
    steps = {id(modules[n.name]): _StepNeuron(n, i, io, lowering) for i, n in enumerate(neurons)}
    # Every place a neuron sits (a shared neuron sits in several: it then fails loudly at its second call).
    places = [(name, m) for name, m in net.named_modules(remove_duplicate=False) if id(m) in steps]
    for name, m in places:
        _replace_module(net, name, steps[id(m)])
    for p in net.parameters():
        p.requires_grad_(False)
    sm = StreamingModule(net, neurons, shapes, lowering)
    object.__setattr__(sm, "_io", io)
    if readout != "none":
        sm.with_readout(readout, int(window or 1), tuple(out.shape[2:]))
    return sm.eval()

