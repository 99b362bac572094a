"""``torchscript`` backend: a ``torch.jit.save``-d module (``model.ts``), loaded with ``torch.jit.load``.

Input names are the ``forward`` argument names (or the export manifest's); outputs are named by the manifest,
else ``output``. Options: ``device``, ``fp16`` (convert the module's parameters to float16; inputs are then float16),
``threads`` (torch intra-op threads, process-wide), ``input_names`` / ``output_names``. A scripted module is thread-safe for inference: one runner serves several threads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..errors import UserError
from .base import (Runner, TensorSpec, collect_outputs, is_file_with, model_io_from_manifest, one_line,
                   register_backend, to_torch, zip_kind)

SUFFIXES = (".ts", ".torchscript", ".jit", ".pt", ".pth")


def accepts(artifact: Any) -> bool:
    if not isinstance(artifact, (str, Path)) or Path(artifact).is_dir():
        return False
    if str(artifact).lower().endswith((".ts", ".torchscript", ".jit")):
        return True
    # .pt / .pth / other names: only a TorchScript zip (not a checkpoint, not a .pt2).
    return Path(artifact).is_file() and zip_kind(artifact) == "torchscript"


class TorchScriptRunner(Runner):
    backend = "torchscript"

    def __init__(self, artifact: Any, **options: Any):
        super().__init__(artifact, **options)
        self.device = str(options.get("device") or "cpu")
        self.module = None
        self._inputs: list[TensorSpec] = []
        self._output_names: list[str] = []

    def load(self) -> "TorchScriptRunner":
        import torch

        path = Path(self.artifact)
        if not path.is_file():
            raise UserError(f"torchscript: {path}: no such file")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError("torchscript: device 'cuda' requested but torch sees no CUDA GPU")
        try:
            module = torch.jit.load(str(path), map_location=self.device)
        except Exception as exc:  # corrupt zip, not TorchScript, unknown ops: all one line
            raise UserError(f"torchscript: cannot load {path}: {one_line(exc)}") from None
        module.eval()
        if self.options.get("fp16"):
            module = module.half()  # parameters and buffers; the dsr recurrence keeps a float32 membrane
        if self.options.get("threads"):
            torch.set_num_threads(int(self.options["threads"]))
        arg_names = [a.name for a in module.forward.schema.arguments[1:]]
        ins, outs, shape = model_io_from_manifest(path, arg_names, ["output"])
        ins = list(self.options.get("input_names") or ins)
        if len(ins) != len(arg_names):
            ins = arg_names
        dtype = next((str(p.dtype).replace("torch.", "") for p in module.parameters() if p.is_floating_point()),
                     "float32")
        self._inputs = [TensorSpec(n, (("T", "B") + tuple(shape[2:])) if shape and n == "input" else None, dtype)
                        for n in ins]
        self._output_names = list(self.options.get("output_names") or outs)
        self.module = module
        self.loaded = True
        return self

    def release(self) -> None:
        self.module = None
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

    def infer(self, feeds: Mapping[str, Any], copy_outputs: bool = True) -> dict[str, Any]:
        import torch

        self.ensure_loaded()
        feeds = self.check_feeds(feeds)
        args = [to_torch(feeds[s.name], self.device) for s in self._inputs]
        with torch.inference_mode():
            try:
                out = self.module(*args)
            except Exception as exc:  # TorchScript raises torch.jit.Error for shape errors
                shapes = ", ".join(f"{s.name}{list(a.shape)}" for s, a in zip(self._inputs, args))
                raise UserError(f"torchscript: the model failed on {shapes}: {one_line(exc)}") from None
        return collect_outputs(out, self._output_names, copy_outputs, self.backend)


register_backend("torchscript", TorchScriptRunner, accepts, priority=5)
