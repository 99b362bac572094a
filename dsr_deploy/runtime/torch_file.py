"""What the torch-executed artifacts (TorchScript, pt2, and the eager model) share: recognising torch zip archives
by content (suffixes lie: ``.pt`` is TorchScript or a checkpoint, ``.pt2`` is torch.export or AOTInductor), the
common runner around a loaded callable and the naming of its outputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from ..errors import UserError, first_line
from .base import Runner, RunnerOptions, TensorSpec, to_torch


def zip_entries(path: Union[str, Path]) -> Optional[list[str]]:
    """The member names of the zip archive ``path``, or None when it is not a readable zip."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return None


def zip_kind(path: Union[str, Path]) -> Optional[str]:
    """"torchscript", "aoti", "exported_program" or None for the torch zip archive ``path``."""
    names = zip_entries(path)
    if not names:
        return None
    tails = {n.split("/", 1)[1] if "/" in n else n for n in names}
    if any("aotinductor" in n for n in names):
        return "aoti"
    if "archive_format" in tails or any(t.startswith("models/") or t == "serialized_exported_program.json"
                                        for t in tails):
        return "exported_program"
    if "data.pkl" in tails and any(t.startswith("code/") for t in tails):
        return "torchscript"
    return None


def collect_outputs(out: Any, names: Sequence[str], copy_outputs: bool, backend: str) -> dict[str, Any]:
    """Name a torch model's result (a tensor, a tuple/list or a dict of tensors) by ``names``."""
    import torch

    if isinstance(out, torch.Tensor):
        items = [out]
    elif isinstance(out, Mapping):
        items = list(out.values())
    elif isinstance(out, (tuple, list)):
        items = list(out)
    else:
        raise UserError(f"{backend}: the model returned a {type(out).__name__}, expected tensors")
    if len(names) != len(items):
        names = ["output"] + [f"output_{i}" for i in range(1, len(items))]
    conv = (lambda t: t.detach().cpu().numpy()) if copy_outputs else (lambda t: t)
    return {n: conv(t) for n, t in zip(names, items)}


@dataclass
class TorchFileOptions(RunnerOptions):
    """Options of the torch-executed artifacts (TorchScript, pt2): ``fp16`` (float16 parameters and inputs),
    ``input_names`` / ``output_names`` (override the manifest's names)."""

    fp16: bool = False
    input_names: Optional[Sequence[str]] = None
    output_names: Optional[Sequence[str]] = None


class TorchCallableRunner(Runner):
    """What the torch-executed artifacts (TorchScript, pt2) share once loaded: a callable ``self.fn`` taking the
    inputs positionally, input specs, output names; ``infer`` with feed checks and one-line model errors."""

    Options: type[TorchFileOptions] = TorchFileOptions
    options: TorchFileOptions

    def __init__(self, artifact: Any, **options: Any):
        super().__init__(artifact, **options)
        self.device = str(self.options.device or "cpu")
        self.fn = None
        self._inputs: list[TensorSpec] = []
        self._output_names: list[str] = []

    def release(self) -> None:
        self.fn = None
        super().release()

    def inputs(self) -> list[TensorSpec]:
        self.ensure_loaded()
        return list(self._inputs)

    def outputs(self) -> list[TensorSpec]:
        self.ensure_loaded()
        return [TensorSpec(n, None, self._inputs[0].dtype if self._inputs else "float32")
                for n in self._output_names]

    def describe(self) -> dict:
        return {**super().describe(), "device": self.device}

    def _infer(self, feeds: dict[str, Any], copy_outputs: bool) -> dict[str, Any]:
        import torch

        args = [to_torch(feeds[s.name], self.device) for s in self._inputs]
        with torch.inference_mode():
            try:
                out = self.fn(*args)
            except (KeyboardInterrupt, GeneratorExit):
                raise
            except BaseException as exc:  # shape errors: torch.jit.Error, guard failures (RuntimeError /
                # AssertionError); an eager model's forward is user code: SystemExit is its failure too
                shapes = ", ".join(f"{s.name}{list(a.shape)}" for s, a in zip(self._inputs, args))
                raise UserError(f"{self.backend}: the model failed on {shapes}: {first_line(exc)}") from None
        return collect_outputs(out, self._output_names, copy_outputs, self.backend)
