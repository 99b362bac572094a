"""Probes (an artifact with every neuron call's spikes and input exposed, for the end-to-end per-layer figures) and
the backends that can run an artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..convert import find_neurons
from ..export.base import CURRENT_PREFIX, OUTPUT_NAME, PROBE_PREFIX, ExportContext
from ..manifest import as_manifest


def _onnx_probe(path: Path, tmp: Path) -> Tuple[Path, List[Optional[int]]]:
    import onnx

    from ..export.onnx_writer import add_probe_outputs, probe_targets

    model = onnx.load(str(path))
    targets = probe_targets(model)
    probe = add_probe_outputs(model)
    out = tmp / f"probe_{path.stem}.onnx"
    onnx.save(probe, str(out))
    return out, [idx for idx, _ in targets]


def _torch_ctx(model, manifest: dict) -> ExportContext:
    manifest = as_manifest(manifest)
    io = manifest.io
    return ExportContext(model=model, neurons=find_neurons(model), input_shape=tuple(manifest.input_shape),
                         dynamic_batch=bool(manifest.dynamic_batch), io=dict(io) if io else None)


def make_probe(fmt: str, path: Path, model, manifest: dict, tmp: Path) -> Tuple[Path, Optional[List[int]], str]:
    """The probe artifact for ``path`` and the layer index of each probe output (None: same order as
    the reference's calls)."""
    manifest = as_manifest(manifest)
    if fmt == "onnx":
        p, idx = _onnx_probe(path, tmp)
        return p, idx, "probe: this file with the neuron outputs exposed"
    if fmt == "torchscript":
        from ..export.torchscript_writer import write_torchscript_probe

        p = tmp / "probe.ts"
        write_torchscript_probe(_torch_ctx(model, manifest), p)
        return p, None, "probe: re-exported TorchScript with the neuron outputs exposed"
    if fmt in ("pt2", "aoti"):
        from ..export.pt2_writer import write_pt2_probe

        p = tmp / ("probe.aoti.pt2" if fmt == "aoti" else "probe.pt2")
        write_pt2_probe(_torch_ctx(model, manifest), p, aot=(fmt == "aoti"))
        what = "AOTInductor package" if fmt == "aoti" else "torch.export program"
        return p, None, f"probe: re-exported {what} with the neuron outputs exposed"
    raise ValueError(f"per-layer probes are not made for {fmt} artifacts (output figures only)")


def probe_output_names(n_calls: int) -> List[str]:
    return ([OUTPUT_NAME] + [f"{PROBE_PREFIX}{k}" for k in range(n_calls)]
            + [f"{CURRENT_PREFIX}{k}" for k in range(n_calls)])


# ---------------------------------------------------------------------------------------------------------
# Backends per artifact.


def backends_for(path: Path) -> List[Tuple[str, Dict[str, Any], str, Optional[str]]]:
    """(backend, runner options, variant label, skip reason) for every backend that could run ``path``."""
    from ..runtime import run_targets

    return run_targets(path)



