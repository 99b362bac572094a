"""``pt2`` backend: a ``.pt2`` archive, either a ``torch.export.save``-d ExportedProgram (run through
``ExportedProgram.module()``) or an AOTInductor package (``torch._inductor.aoti_load_package``, compiled code).

The archive kind is read from its contents. ``dsr::`` ops in the program resolve through
:mod:`dsr_deploy.ops` (imported here; the native kernels are used when ``libdsr_torch_ops.so`` is built).
Input names are the program's user inputs (or the manifest's); outputs ``output`` (or the manifest's).
Options: ``device`` (an ExportedProgram is moved there; an AOTInductor package runs where it was compiled
for), ``threads``, ``input_names`` / ``output_names``, ``trust_pickle``.

A ``.pt2`` is untrusted input: ``torch.export.load`` unpickles with ``weights_only=False`` every weight or
constant whose payload config says ``"use_pickle": true`` (and custom / opaque object constants), and falls back
to that for ``sample_inputs`` (and the older format's serialized state) when the safe unpickler refuses them. So
the archive is inspected first (:func:`pickled_entries`: the zip's JSON configs, and the pickles tried with
``weights_only=True``) and such entries are refused unless ``trust_pickle``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError, first_line
from .base import Backend, TensorSpec, model_io_from_manifest
from .torch_file import TorchCallableRunner, TorchFileOptions, zip_kind


def accepts(artifact: Any) -> bool:
    if not isinstance(artifact, (str, Path)) or Path(artifact).is_dir():
        return False
    if str(artifact).lower().endswith(".pt2"):
        return True
    return Path(artifact).is_file() and zip_kind(artifact) in ("exported_program", "aoti")


# Constants torch.export.load restores with an unrestricted unpickler (torchbind / opaque Python objects).
_PICKLED_CONSTANT_PREFIXES = ("custom_obj_", "opaque_obj_")
# The pre-2.8 archive layout: torch.load with a weights_only=False fallback.
_LEGACY_PICKLES = ("serialized_state_dict.json", "serialized_constants.json", "serialized_example_inputs.json")


def _safe_pickle(data: bytes) -> bool:
    """Whether torch's restricted unpickler (``weights_only=True``) reads ``data``: then torch.export.load never
    falls back to the unrestricted one for it."""
    import io

    import torch

    if not data:
        return True
    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:
        return False
    return True


def pickled_entries(path: Any) -> list[str]:
    """The entries of the ``.pt2`` archive ``path`` that ``torch.export.load`` would unpickle without
    restriction (each as ``entry (why)``); empty for an archive that loads safely. Nothing is unpickled."""
    import json
    import zipfile

    found = []
    try:
        with zipfile.ZipFile(path) as z:
            for member in z.namelist():
                tail = member.split("/", 1)[1] if "/" in member else member
                name = member if member in _LEGACY_PICKLES else tail  # messages: without the archive's root folder
                if tail.startswith(("data/weights/", "data/constants/")) and tail.endswith("_config.json"):
                    try:
                        config = json.loads(z.read(member)).get("config", {})
                        entries = list(config.items()) if isinstance(config, dict) else None
                    except (ValueError, AttributeError):
                        entries = None
                    if entries is None:
                        found.append(f"{name} (unreadable payload config)")
                        continue
                    for key, meta in entries:
                        meta = meta if isinstance(meta, dict) else {}
                        if meta.get("use_pickle"):
                            found.append(f"{name}:{key} (use_pickle)")
                        elif str(meta.get("path_name", "")).startswith(_PICKLED_CONSTANT_PREFIXES):
                            found.append(f"{name}:{key} (pickled object constant)")
                elif (tail.startswith("data/") and tail.endswith(".pt")) or name in _LEGACY_PICKLES:
                    if not _safe_pickle(z.read(member)):
                        found.append(f"{name} (pickled objects beyond tensors)")
    except (OSError, zipfile.BadZipFile) as exc:
        raise UserError(f"pt2: cannot read {path}: {first_line(exc)}") from None
    return found


def check_archive(path: Any, trust_pickle: bool = False) -> None:
    """Refuse a ``.pt2`` whose loading would run pickled code, unless the user trusts it (``--trust-pickle``)."""
    if trust_pickle:
        return
    found = pickled_entries(path)
    if found:
        more = f" (+{len(found) - 1} more)" if len(found) > 1 else ""
        raise UserError(f"pt2: {path} holds pickled Python objects that loading would run as code "
                        f"({found[0]}{more}); refused: pass --trust-pickle if you trust this file")


def _dim(d) -> Any:
    return int(d) if isinstance(d, int) or str(d).isdigit() else str(d)


@dataclass
class PT2Options(TorchFileOptions):
    """The ``pt2`` backend's options (see the module docstring): the torch-file options, nothing more."""


class PT2Runner(TorchCallableRunner):
    backend = "pt2"
    Options = PT2Options
    options: PT2Options

    def __init__(self, artifact: Any, **options: Any):
        super().__init__(artifact, **options)
        self.kind = None  # "exported_program" | "aoti"

    def _load(self) -> None:
        import torch

        from .. import ops  # noqa: F401  (registers dsr:: ops the program calls)

        path = Path(self.artifact)
        if not path.is_file():
            raise UserError(f"pt2: {path}: no such file")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError("pt2: device 'cuda' requested but torch sees no CUDA GPU")
        if self.options.fp16:
            raise UserError("pt2: fp16 is not supported on an exported program; export the model in float16")
        ops.load_native()
        self.kind = zip_kind(path)
        if self.options.threads:
            torch.set_num_threads(int(self.options.threads))
        specs: list[TensorSpec] = []
        try:
            if self.kind == "aoti":
                from torch._inductor import aoti_load_package

                self.fn = aoti_load_package(str(path))
                # The package does not keep argument names: the manifest's, else the multi-step name.
                names = self.options.input_names or model_io_from_manifest(path, ["input"], [])[0]
                specs = [TensorSpec(n, None, "float32") for n in names]
            elif self.kind == "exported_program":
                check_archive(path, bool(self.options.trust_pickle))
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
            raise UserError(f"pt2: cannot load {path}: {first_line(exc)}") from None
        ins, outs, _ = model_io_from_manifest(path, [s.name for s in specs], ["output"])
        ins = list(self.options.input_names or ins)
        if len(ins) == len(specs):
            specs = [TensorSpec(n, s.shape, s.dtype) for n, s in zip(ins, specs)]
        self._inputs = specs
        self._output_names = list(self.options.output_names or outs)

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
                raise UserError(f"pt2: cannot read the dsr calls of {self.artifact}: {first_line(exc)}") from None
            if not found:
                raise UserError(f"pt2: {self.artifact} records no dsr op call")
            return found
        return program_neurons(self.program.graph, self.device)


#: The backend's description (collected by :mod:`.registry`).
BACKEND = Backend("pt2", PT2Runner, accepts, formats=("pt2", "torch.export", "exported_program", "aoti", "aotinductor"),
                  priority=5)
