"""``torchscript`` backend: a ``torch.jit.save``-d module (``model.ts``), loaded with ``torch.jit.load``.

Input names are the ``forward`` argument names (or the export manifest's); outputs are named by the manifest,
else ``output``. Options: ``device``, ``fp16`` (convert the module's parameters to float16; inputs are then float16),
``threads`` (torch intra-op threads, process-wide), ``input_names`` / ``output_names``, ``gpu_fusion`` (default
False, see below). A scripted module is thread-safe for inference: one runner serves several threads.

On CUDA, TorchScript's profiling executor fuses elementwise ops with NNC, which compiles the fused kernel with
NVRTC's default ``--fmad=true``: the LIF update ``beta*v + gain*x`` may then become one fused multiply-add and the
spikes stop being bit-exact with eager PyTorch (the CPU fuser is off by default, so CPU runs are unaffected).
Loading on a CUDA device therefore turns GPU fusion off for the process
(``torch._C._jit_override_can_fuse_on_gpu(False)``, what ``torch.jit.fuser("none")`` sets); pass
``gpu_fusion=True`` to keep it. ``describe()`` says which.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError, first_line
from .base import Backend, TensorSpec, model_io_from_manifest
from .torch_file import TorchCallableRunner, TorchFileOptions, zip_kind

SUFFIXES = (".ts", ".torchscript", ".jit", ".pt", ".pth")


def accepts(artifact: Any) -> bool:
    if not isinstance(artifact, (str, Path)) or Path(artifact).is_dir():
        return False
    if str(artifact).lower().endswith((".ts", ".torchscript", ".jit")):
        return True
    # .pt / .pth / other names: only a TorchScript zip (not a checkpoint, not a .pt2).
    return Path(artifact).is_file() and zip_kind(artifact) == "torchscript"


@dataclass
class TorchScriptOptions(TorchFileOptions):
    """The ``torchscript`` backend's options (see the module docstring)."""

    gpu_fusion: bool = False


class TorchScriptRunner(TorchCallableRunner):
    backend = "torchscript"
    Options = TorchScriptOptions
    options: TorchScriptOptions

    def _load(self) -> None:
        import torch

        path = Path(self.artifact)
        if not path.is_file():
            raise UserError(f"torchscript: {path}: no such file")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError("torchscript: device 'cuda' requested but torch sees no CUDA GPU")
        if self.device.startswith("cuda") and not self.options.gpu_fusion:
            torch._C._jit_override_can_fuse_on_gpu(False)  # before the first call: the executor fuses on call 2
        try:
            module = torch.jit.load(str(path), map_location=self.device)
        except Exception as exc:  # corrupt zip, not TorchScript, unknown ops: all one line
            raise UserError(f"torchscript: cannot load {path}: {first_line(exc)}") from None
        module.eval()
        if self.options.fp16:
            module = module.half()  # parameters and buffers; the dsr recurrence keeps a float32 membrane
        if self.options.threads:
            torch.set_num_threads(int(self.options.threads))
        arg_names = [a.name for a in module.forward.schema.arguments[1:]]
        ins, outs, shape = model_io_from_manifest(path, arg_names, ["output"])
        ins = list(self.options.input_names or ins)
        if len(ins) != len(arg_names):
            ins = arg_names
        dtype = next((str(p.dtype).replace("torch.", "") for p in module.parameters() if p.is_floating_point()),
                     "float32")
        self._inputs = [TensorSpec(n, (("T", "B") + tuple(shape[2:])) if shape and n == "input" else None, dtype)
                        for n in ins]
        self._output_names = list(self.options.output_names or outs)
        self.fn = module

    def neurons(self) -> list:
        """The scripted neuron submodules of the loaded file, each run alone in the TorchScript interpreter."""
        from .neurons import torch_module_neurons

        self.ensure_loaded()
        found = torch_module_neurons(self.fn.named_modules(), device=self.device)
        if not found:
            raise UserError("torchscript: the file holds no scripted DSR neuron module (not written by dsr-deploy?)")
        return found

    def describe(self) -> dict:
        import torch

        out = super().describe()
        if self.device.startswith("cuda"):
            out["gpu_fusion"] = bool(torch._C._jit_can_fuse_on_gpu())
        return out

    @property
    def module(self):
        """The loaded ``torch.jit.ScriptModule``."""
        return self.fn


#: The backend's description (collected by :mod:`.registry`).
BACKEND = Backend("torchscript", TorchScriptRunner, accepts, formats=("torchscript", "ts"), priority=5)
