"""Load checkpoints of zoo architectures written by SpikingJelly (or the authors' code) into zoo models.

Where the keys come from:

* our zoo: stateless layers inside :class:`~dsr_deploy.models.common.SeqToANN` have a ``module`` segment
  (``features.0.module.0.weight``), neurons hold ``v_threshold``;
* SpikingJelly: ``layer.SeqToANNContainer(conv, bn)`` is a Sequential (``features.0.0.weight``), multi-step
  layers (``layer.Conv2d(step_mode='m')``) keep the plain keys, a DSR neuron holds ``v_threshold`` only when it is
  trained (a fixed threshold is a plain attribute, not in the state dict);
* the authors' code (qymeng94/DSR): plain layers, neurons hold ``Vth``; ``nn.DataParallel`` / DDP add ``module.``.

Mapping, in order of preference:

1. by name: both sides' keys normalised (``module`` segments dropped, ``Vth`` -> ``v_threshold``) and equal;
2. by order: the checkpoint's layers (grouped by key prefix, classified as conv / linear / batch-norm / neuron from
   their tensors) are matched one to one, in registration order, with the zoo model's layers of the same kind and
   shapes. Neuron thresholds are matched among themselves; a checkpoint with none (fixed thresholds) keeps the
   zoo model's values (pass the same hyper-parameters when building it).

Anything that does not line up raises :class:`~dsr_deploy.errors.UserError` naming the first mismatch. Neuron
hyper-parameters that are not tensors (alpha, tau, delta_t, bounds) are never in a state dict: build the zoo
model with the values the checkpoint was trained with.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Union

import torch
from torch import Tensor, nn

from dsr_deploy.errors import UserError

__all__ = ["normalize_key", "map_state_dict", "load_spikingjelly", "MappingReport", "read_checkpoint"]

_WRAPPER_SEGMENTS = {"module"}  # our SeqToANN, DataParallel / DDP
_RENAMES = {"Vth": "v_threshold"}
_CONTAINER_KEYS = ("state_dict", "model", "net", "model_state_dict")
_BN_LEAVES = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}


def normalize_key(key: str) -> str:
    parts = [p for p in key.split(".") if p not in _WRAPPER_SEGMENTS]
    if parts:
        parts[-1] = _RENAMES.get(parts[-1], parts[-1])
    return ".".join(parts)


@dataclass
class MappingReport:
    mode: str  # "name" | "order"
    mapping: OrderedDict[str, str] = field(default_factory=OrderedDict)  # zoo key -> checkpoint key
    kept: list = field(default_factory=list)  # zoo keys that kept the model's value (not in the checkpoint)

    def to_dict(self) -> dict:
        return {"mode": self.mode, "mapping": dict(self.mapping), "kept": list(self.kept)}


def read_checkpoint(source: Union[str, Path, Mapping[str, Tensor], nn.Module]) -> OrderedDict[str, Tensor]:
    """A state dict from a file (``weights_only=True``), a mapping, or a module; common containers unwrapped."""
    if isinstance(source, nn.Module):
        return OrderedDict(source.state_dict())
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise UserError(f"checkpoint {path} does not exist")
        try:
            source = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickled model objects, corrupt files
            raise UserError(f"cannot read {path} as a weights-only checkpoint ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}); "
                            "save model.state_dict() instead") from exc
    if not isinstance(source, Mapping):
        raise UserError(f"a checkpoint must hold a state dict, got {type(source).__name__}")
    for key in _CONTAINER_KEYS:
        inner = source.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, Tensor) for v in inner.values()):
            source = inner
            break
    state = OrderedDict((k, v) for k, v in source.items() if isinstance(v, Tensor))
    if not state:
        raise UserError("the checkpoint holds no tensors")
    return state


def _is_neuron_key(key: str) -> bool:
    return normalize_key(key).rsplit(".", 1)[-1] == "v_threshold"


def _groups(state: Mapping[str, Tensor]) -> OrderedDict[str, OrderedDict[str, Tensor]]:
    groups: OrderedDict[str, OrderedDict[str, Tensor]] = OrderedDict()
    for key, value in state.items():
        prefix, _, leaf = key.rpartition(".")
        groups.setdefault(prefix, OrderedDict())[_RENAMES.get(leaf, leaf)] = value
    return groups


def _kind(prefix: str, leaves: Mapping[str, Tensor]) -> str:
    names = set(leaves)
    if names == {"v_threshold"}:
        return "neuron"
    if "running_mean" in names and names <= _BN_LEAVES:
        return "batchnorm"
    w = leaves.get("weight")
    if w is not None and names <= {"weight", "bias"}:
        if w.dim() == 2:
            return "linear"
        if w.dim() >= 3:
            return "conv"
    raise UserError(f"cannot classify checkpoint entry {prefix or '<root>'} with tensors {sorted(names)}; "
                    "only conv, linear, batch-norm and DSR neuron layers can be mapped by order")


def _shape_signature(leaves: Mapping[str, Tensor]) -> tuple:
    return tuple((k, tuple(v.shape)) for k, v in sorted(leaves.items()) if k != "num_batches_tracked")


def _map_by_name(source, target) -> Optional[MappingReport]:
    src = {}
    for k in source:
        n = normalize_key(k)
        if n in src:
            return None
        src[n] = k
    report = MappingReport("name")
    for tk, tv in target.items():
        n = normalize_key(tk)
        if n in src:
            if tuple(source[src[n]].shape) != tuple(tv.shape):
                return None
            report.mapping[tk] = src[n]
        elif _is_neuron_key(tk) or tk.endswith("num_batches_tracked"):
            report.kept.append(tk)
        else:
            return None
    if set(report.mapping.values()) != set(source):
        return None  # checkpoint entries with no place in the model
    return report


def _map_by_order(source, target) -> MappingReport:
    src_groups, tgt_groups = _groups(source), _groups(target)
    src = [(p, _kind(p, g), g) for p, g in src_groups.items()]
    tgt = [(p, _kind(p, g), g) for p, g in tgt_groups.items()]
    report = MappingReport("order")
    src_layers = [s for s in src if s[1] != "neuron"]
    tgt_layers = [t for t in tgt if t[1] != "neuron"]
    if len(src_layers) != len(tgt_layers):
        raise UserError(f"the checkpoint has {len(src_layers)} conv/linear/batch-norm layers, the zoo model "
                        f"{len(tgt_layers)}: not the same architecture")
    for (sp, sk, sg), (tp, tk, tg) in zip(src_layers, tgt_layers):
        if sk != tk or _shape_signature(sg) != _shape_signature(tg):
            raise UserError(f"checkpoint layer {sp or '<root>'} ({sk} {_shape_signature(sg)}) does not match zoo "
                            f"layer {tp} ({tk} {_shape_signature(tg)}): not the same architecture")
        for leaf in tg:
            tkey = f"{tp}.{leaf}" if tp else leaf
            if leaf in sg:
                report.mapping[tkey] = _original_key(source, sp, leaf)
            elif leaf == "num_batches_tracked":
                report.kept.append(tkey)
            else:
                raise UserError(f"checkpoint layer {sp} lacks {leaf!r} needed by zoo layer {tp}")
    src_neurons = [s for s in src if s[1] == "neuron"]
    tgt_neurons = [t for t in tgt if t[1] == "neuron"]
    if src_neurons and len(src_neurons) != len(tgt_neurons):
        raise UserError(f"the checkpoint has {len(src_neurons)} neuron thresholds, the zoo model "
                        f"{len(tgt_neurons)}: not the same architecture (or a mix of trained and fixed thresholds)")
    if src_neurons:
        for (sp, _, _), (tp, _, _) in zip(src_neurons, tgt_neurons):
            report.mapping[f"{tp}.v_threshold" if tp else "v_threshold"] = _original_key(source, sp, "v_threshold")
    else:
        report.kept += [f"{tp}.v_threshold" if tp else "v_threshold" for tp, _, _ in tgt_neurons]
    return report


def _original_key(source, prefix: str, leaf: str) -> str:
    for cand in (leaf, *[k for k, v in _RENAMES.items() if v == leaf]):
        key = f"{prefix}.{cand}" if prefix else cand
        if key in source:
            return key
    raise KeyError(f"{prefix}.{leaf}")


def map_state_dict(source: Mapping[str, Tensor], model: nn.Module) -> tuple[OrderedDict[str, Tensor], MappingReport]:
    """``(state dict with the zoo model's keys, report)``; entries the checkpoint lacks keep the model's values."""
    target = model.state_dict()
    report = _map_by_name(source, target) or _map_by_order(source, target)
    mapped: OrderedDict[str, Tensor] = OrderedDict()
    for tk, tv in target.items():
        if tk in report.mapping:
            value = source[report.mapping[tk]]
            if tuple(value.shape) != tuple(tv.shape):
                raise UserError(f"{report.mapping[tk]} has shape {list(value.shape)}, zoo {tk} needs {list(tv.shape)}")
            mapped[tk] = value.detach().to(dtype=tv.dtype).clone()
        else:
            mapped[tk] = tv.detach().clone()
    return mapped, report


def load_spikingjelly(model: nn.Module, source, *, return_report: bool = False):
    """Load a SpikingJelly (or authors') checkpoint of the same architecture into the zoo ``model`` in place.

    ``source``: a path (read with ``weights_only=True``), a state dict, or the SpikingJelly module itself.
    Returns ``model`` (and the :class:`MappingReport` with ``return_report=True``).
    """
    state = read_checkpoint(source)
    mapped, report = map_state_dict(state, model)
    model.load_state_dict(mapped, strict=True)
    return (model, report) if return_report else model
