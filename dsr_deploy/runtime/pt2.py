"""``pt2`` backend: a ``.pt2`` archive, either a ``torch.export.save``-d ExportedProgram (run through
``ExportedProgram.module()``) or an AOTInductor package (``torch._inductor.aoti_load_package``, compiled code).

The archive kind is read from its contents. ``dsr::`` ops in the program resolve through
:mod:`dsr_deploy.ops` (imported here; the native kernels are used when ``libdsr_torch_ops.so`` is built).
Input names are the program's user inputs (or the manifest's); outputs ``output`` (or the manifest's).
Options: ``device`` (an ExportedProgram is moved there; an AOTInductor package runs where it was compiled
for), ``threads``, ``input_names`` / ``output_names``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UserError
from .base import TensorSpec, TorchCallableRunner, model_io_from_manifest, one_line, register_backend, zip_kind


def accepts(artifact: Any) -> bool:
    if not isinstance(artifact, (str, Path)) or Path(artifact).is_dir():
        return False
    if str(artifact).lower().endswith(".pt2"):
        return True
    return Path(artifact).is_file() and zip_kind(artifact) in ("exported_program", "aoti")


def _dim(d) -> Any:
    return int(d) if isinstance(d, int) or str(d).isdigit() else str(d)


class PT2Runner(TorchCallableRunner):
    backend = "pt2"

    def __init__(self, artifact: Any, **options: Any):
        super().__init__(artifact, **options)
        self.kind = None  # "exported_program" | "aoti"

    def load(self) -> "PT2Runner":
        import torch

        from .. import ops  # noqa: F401  (registers dsr:: ops the program calls)

        path = Path(self.artifact)
        if not path.is_file():
            raise UserError(f"pt2: {path}: no such file")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError("pt2: device 'cuda' requested but torch sees no CUDA GPU")
        if self.options.get("fp16"):
            raise UserError("pt2: fp16 is not supported on an exported program; export the model in float16")
        ops.load_native()
        self.kind = zip_kind(path)
        if self.options.get("threads"):
            torch.set_num_threads(int(self.options["threads"]))
        specs: list[TensorSpec] = []
        try:
            if self.kind == "aoti":
                from torch._inductor import aoti_load_package

                self.fn = aoti_load_package(str(path))
                # The package does not keep argument names: the manifest's, else the multi-step name.
                names = self.options.get("input_names") or model_io_from_manifest(path, ["input"], [])[0]
                specs = [TensorSpec(n, None, "float32") for n in names]
            elif self.kind == "exported_program":
                ep = torch.export.load(str(path))
                user = list(ep.graph_signature.user_inputs)
                for node in ep.graph.nodes:
                    if node.op == "placeholder" and node.name in user:
                        val = node.meta.get("val")
                        shape = tuple(_dim(d) for d in val.shape) if val is not None else None
                        dtype = str(val.dtype).replace("torch.", "") if val is not None else "float32"
                        specs.append(TensorSpec(node.name, shape, dtype))
                self.program = ep
                module = ep.module()
                if self.device != "cpu":
                    module = module.to(self.device)
                self.fn = module
            else:
                raise UserError(f"pt2: cannot load {path}: not a torch.export or AOTInductor archive")
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"pt2: cannot load {path}: {one_line(exc)}") from None
        ins, outs, _ = model_io_from_manifest(path, [s.name for s in specs], ["output"])
        ins = list(self.options.get("input_names") or ins)
        if len(ins) == len(specs):
            specs = [TensorSpec(n, s.shape, s.dtype) for n, s in zip(ins, specs)]
        self._inputs = specs
        self._output_names = list(self.options.get("output_names") or outs)
        self.loaded = True
        return self

    def describe(self) -> dict:
        return {**super().describe(), "kind": self.kind}

    def neurons(self) -> list:
        """The program's dsr op calls, each called alone with the arguments the program (or, for an AOTInductor
        package, its extern-kernel record) holds."""
        from .neurons import aoti_neurons, program_neurons

        self.ensure_loaded()
        if self.kind == "aoti":
            try:
                found = aoti_neurons(Path(self.artifact), self.device)
            except Exception as exc:
                raise UserError(f"pt2: cannot read the dsr calls of {self.artifact}: {one_line(exc)}") from None
            if not found:
                raise UserError(f"pt2: {self.artifact} records no dsr op call")
            return found
        return program_neurons(self.program.graph, self.device)


register_backend("pt2", PT2Runner, accepts, priority=5)
