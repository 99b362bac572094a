"""``torch`` backend: the PyTorch model itself, eager (the reference every other runner is compared with).

Artifact: an ``nn.Module``, or a MODEL spec string (:mod:`dsr_deploy.model_spec`): ``zoo:NAME``,
``package.module:factory`` or ``path/to/file.py:factory``; options ``checkpoint`` (loaded with
``weights_only=True``) and ``trust_pickle``. For an export folder, ``load_runner(DIR, backend="torch")`` builds the
manifest's model spec with its checkpoint. The model takes one tensor ``[T, B, ...]``
named ``input`` (override with ``input_name``) and returns one tensor ``output`` (or a tuple / dict of them).

Options: ``device`` ("cpu", "cuda", "cuda:1"), ``fp16`` (run the model in float16), ``input_shape`` (the
``[T, B, ...]`` shape, to describe the input; T and B are reported as dynamic), ``input_name`` /
``output_names``, ``threads`` (torch intra-op threads, process-wide), ``reset_state`` (call ``reset()`` on every
submodule before each run: SpikingJelly's stateful neurons need it; then the runner is not thread-safe).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from ..errors import UserError, first_line
from .base import Backend, Runner, RunnerOptions, TensorSpec, to_torch
from .torch_file import collect_outputs


def _is_module(artifact: Any) -> bool:
    try:
        import torch

        return isinstance(artifact, torch.nn.Module)
    except ImportError:  # pragma: no cover
        return False


def is_spec(artifact: Any) -> bool:
    """A MODEL spec (``zoo:NAME``, ``package.module:factory``, ``path/to/file.py:factory``), not a file."""
    if not isinstance(artifact, str) or ":" not in artifact or Path(artifact).exists():
        return False
    if artifact.startswith("zoo:"):
        return True
    where, _, attr = artifact.rpartition(":")
    return bool(where) and attr.isidentifier() and (
        where.endswith(".py") or all(p.isidentifier() for p in where.split(".")))


def build_model(spec: str, checkpoint: Optional[str] = None, trust_pickle: bool = False, settings=None):
    """The loaded MODEL spec (with ``checkpoint`` and ``settings``, ``--set``):
    :func:`dsr_deploy.model_spec.load_model`."""
    from ..model_spec import load_model

    return load_model(spec, checkpoint, trust_pickle, settings=settings)


def accepts(artifact: Any) -> bool:
    return _is_module(artifact) or is_spec(artifact)


@dataclass
class TorchOptions(RunnerOptions):
    """The ``torch`` backend's options (see the module docstring)."""

    checkpoint: Optional[str] = None
    settings: Optional[dict] = None
    input_shape: Optional[Sequence[int]] = None
    input_name: Optional[str] = None
    output_names: Optional[Sequence[str]] = None
    fp16: bool = False
    reset_state: bool = False


class TorchRunner(Runner):
    backend = "torch"
    Options = TorchOptions
    options: TorchOptions

    def __init__(self, artifact: Any, **options: Any):
        super().__init__(artifact, **options)
        self.device = str(self.options.device or "cpu")
        self.model = None
        self._dtype = "float16" if self.options.fp16 else "float32"
        self.input_name = self.options.input_name or "input"
        self.output_names = list(self.options.output_names or ["output"])
        self._shape = tuple(self.options.input_shape) if self.options.input_shape is not None else None

    def _load(self) -> None:
        import torch

        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError("torch: device 'cuda' requested but torch sees no CUDA GPU")
        if _is_module(self.artifact):
            model = self.artifact
            if self.options.fp16 or self.device != "cpu":
                import copy

                model = copy.deepcopy(model)  # never convert or move the caller's module in place
        else:
            loaded = build_model(str(self.artifact), self.options.checkpoint,
                                 bool(self.options.trust_pickle), self.options.settings)
            model = loaded.model
            if self._shape is None and loaded.default_input_shape is not None:
                self._shape = tuple(loaded.default_input_shape)
        model = model.eval().to(self.device)
        if self.options.fp16:
            model = model.half()
        if self.options.threads:
            torch.set_num_threads(int(self.options.threads))
        self.model = model
        self._resets = [m for m in model.modules() if callable(getattr(m, "reset", None))] \
            if self.options.reset_state else []

    @property
    def example_shape(self) -> Optional[tuple]:
        """The full ``[T, B, ...]`` shape given or known from the MODEL spec (bench's default T)."""
        return self._shape

    def release(self) -> None:
        self.model = None
        super().release()

    def inputs(self) -> list[TensorSpec]:
        if self._shape is None and not _is_module(self.artifact):
            self.ensure_loaded()  # a MODEL spec says its default input shape once built
        if self._shape is None:
            return [TensorSpec(self.input_name, None, self._dtype)]  # rank unknown for an arbitrary module
        return [TensorSpec(self.input_name, ("T", "B") + tuple(self._shape[2:]), self._dtype)]

    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec(n, None, self._dtype) for n in self.output_names]

    def describe(self) -> dict:
        d = super().describe()
        if _is_module(self.artifact):
            d["artifact"] = type(self.artifact).__name__
        d.update(device=self.device, dtype=self._dtype)
        return d

    def neurons(self) -> list:
        """The model's inference neurons (an inference copy's dsr-op modules), else its training neurons."""
        from ..convert import find_neuron_modules
        from .neurons import torch_module_neurons

        self.ensure_loaded()
        found = torch_module_neurons(self.model.named_modules(), kinds=("IFSpike", "LIFSpike", "SJSpike"),
                                     device=self.device)
        if not found:
            training = find_neuron_modules(self.model)
            found = torch_module_neurons(training.items(), kinds=None, device=self.device,
                                         layers={n: k for k, n in enumerate(training)})
        return found

    def _infer(self, feeds: dict[str, Any], copy_outputs: bool) -> dict[str, Any]:
        import torch

        x = to_torch(feeds[self.input_name], self.device)
        with torch.inference_mode():
            for m in self._resets:
                m.reset()
            try:
                out = self.model(x)
            except (RuntimeError, ValueError, TypeError) as exc:
                raise UserError(f"torch: the model failed on input {list(x.shape)}: {first_line(exc)}") from None
        return collect_outputs(out, self.output_names, copy_outputs, self.backend)


#: The backend's description (collected by :mod:`.registry`): the reference every artifact is compared with.
BACKEND = Backend("torch", TorchRunner, accepts, formats=("torch",), priority=10, reference=True)

__all__ = ["BACKEND", "TorchRunner", "build_model"]
