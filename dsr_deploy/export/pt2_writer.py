"""pt2 writer: ``torch.export`` of the ``"op"`` inference copy (one ``dsr::if_spike`` / ``lif_spike`` node per
neuron call, thanks to the ops' fake kernels), saved with ``torch.export.save``; with ``aot`` also an
AOTInductor package (``torch._inductor.aoti_compile_and_package``), loaded with
``torch._inductor.aoti_load_package``.

Loading either needs the dsr ops registered in the process (``import dsr_deploy.ops``; the runtime runners do
it). T and batch are dynamic (``Dim.DYNAMIC``); a fixed batch with ``--static-batch``.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any, Dict

import torch
from torch import nn

from ..convert import SpikeBase, inference_copy
from ..errors import UserError, first_line
from ..io import atomic_path, write_through_memory
from .base import PROBE_PREFIX, ExportContext

AOT_FILENAME = "model.aoti.pt2"


class ProbedOp(nn.Module):
    """Returns ``(output, spikes_0, ..., spikes_n-1, currents_0, ..., currents_n-1)``: every inference neuron
    records its call's input and spikes into a shared list while tracing."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self._mods = [m for m in net.modules() if isinstance(m, SpikeBase)]

    def forward(self, x):
        sink: list = []
        for m in self._mods:
            m.probe = sink
        try:
            out = self.net(x)
        finally:
            for m in self._mods:
                m.probe = None
        return (out, *[y for _, _, y in sink], *[x for _, x, _ in sink])


def export_program(ctx: ExportContext, probe: bool = False) -> torch.export.ExportedProgram:
    net = inference_copy(ctx.model, "op")
    if probe:
        net = ProbedOp(net)
    D = torch.export.Dim.DYNAMIC
    dims = {d: D for d in ctx.dynamic_dims()} or None  # T and batch (where the io layout puts them)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.export(net, (ctx.example_input(shape=ctx.trace_shape()),),
                                       dynamic_shapes=(dims or None,))
    except Exception as exc:
        raise UserError(f"torch.export failed: {first_line(exc)}") from exc


def write_pt2(ctx: ExportContext, path: Path) -> Dict[str, Any]:
    ep = export_program(ctx)
    with atomic_path(path) as tmp:
        write_through_memory(tmp, lambda f: torch.export.save(ep, f))
    ops = [str(n.target) for n in ep.graph.nodes if n.op == "call_function" and str(n.target).startswith("dsr.")]
    entry = {"format": "pt2", "path": Path(path).name, "dsr_nodes": len(ops), "dynamic_T": not ctx.fixed_T,
             "dynamic_batch": ctx.dynamic_batch, "loader": "torch.export.load (after import dsr_deploy.ops)"}
    return entry


def compile_aot(ep: torch.export.ExportedProgram, path: Path) -> None:
    def package(f):
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch._inductor.aoti_compile_and_package(ep, package_path=f)

    with atomic_path(path) as tmp:
        write_through_memory(tmp, package)


def write_pt2_aot(ctx: ExportContext, path: Path) -> Dict[str, Any]:
    ep = export_program(ctx)
    try:
        compile_aot(ep, Path(path))
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"AOTInductor compilation failed: {first_line(exc)}") from exc
    return {"format": "aoti", "path": Path(path).name, "dynamic_T": not ctx.fixed_T, "dynamic_batch": ctx.dynamic_batch,
            "loader": "torch._inductor.aoti_load_package (after import dsr_deploy.ops)"}


def write_pt2_probe(ctx: ExportContext, path: Path, aot: bool = False) -> Dict[str, Any]:
    ep = export_program(ctx, probe=True)
    if aot:
        compile_aot(ep, Path(path))
    else:
        with atomic_path(path) as tmp:
            write_through_memory(tmp, lambda f: torch.export.save(ep, f))
    return {"format": "aoti" if aot else "pt2", "path": str(path), "probe_prefix": PROBE_PREFIX}
