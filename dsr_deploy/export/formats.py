"""The export format registry: a writer per (mode, format name).

The built-in writers are registered on first use (:func:`formats` / :func:`modes`), so importing the package stays
cheap and no writer module imports this one back; :func:`register_format` adds more.
"""

from __future__ import annotations

from .base import Format, Writer

_FORMATS: dict[tuple[str, str], Format] = {}
_builtins_registered = False


def register_format(name: str, filename: str, writer: Writer, *, mode: str = "multistep",
                    description: str = "") -> None:
    _FORMATS[(mode, name)] = Format(name, mode, filename, writer, description)


def register_builtin_formats() -> None:
    """Register the built-in writers once (the multistep formats)."""
    global _builtins_registered
    if _builtins_registered:
        return
    _builtins_registered = True
    from .onnx_writer import write_onnx
    from .pt2_writer import write_pt2
    from .torchscript_writer import write_torchscript

    register_format("torchscript", "model.ts", write_torchscript, description="TorchScript (torch.jit.load)")
    register_format("onnx", "model.onnx", write_onnx, description="ONNX: dsr nodes + function fallback, or portable")
    register_format("pt2", "model.pt2", write_pt2, description="torch.export program (torch.export.load)")


def formats(mode: str = "multistep") -> dict[str, Format]:
    register_builtin_formats()
    return {n: f for (m, n), f in _FORMATS.items() if m == mode}


def modes() -> list[str]:
    register_builtin_formats()
    return sorted({m for m, _ in _FORMATS})
