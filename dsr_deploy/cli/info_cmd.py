"""``dsr-deploy info``: versions and which optional backends are importable."""

from __future__ import annotations

import importlib.util
import json
import platform

import typer

from .validate import emit_json

ORDER = 0  # first in --help

OPTIONAL = {
    # import name: (pip extra, what it enables)
    "onnxruntime": ("core", "ONNX Runtime runner (CPU)"),
    "tensorrt": ("tensorrt", "TensorRT engines and runner"),
    "pytriton": ("serve", "dsr-deploy serve (PyTriton)"),
    "tritonclient": ("serve", "Triton clients"),
    "spikingjelly": ("test", "SpikingJelly interop and test oracle"),
    "matplotlib": ("bench", "bench --plot"),
}


def collect() -> dict:
    import numpy
    import onnx
    import torch

    from .. import __version__, ops

    def version_of(name):
        try:
            from importlib import metadata

            return metadata.version(name)
        except Exception:
            return None

    try:
        import onnxruntime

        ort = {"version": onnxruntime.__version__, "providers": onnxruntime.get_available_providers()}
    except ImportError:
        ort = None
    native = ops.native_status()
    return {
        "dsr_deploy": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "numpy": numpy.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort,
        "native_torch_ops": native,
        "optional": {
            name: {
                "importable": importlib.util.find_spec(name) is not None,
                "version": version_of({"pytriton": "nvidia-pytriton"}.get(name, name)),
                "extra": extra,
                "enables": what,
            }
            for name, (extra, what) in OPTIONAL.items()
        },
    }


def register(app: typer.Typer) -> None:
    @app.command()
    def info(as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON.")):
        """Print library versions and which optional backends are available."""
        data = collect()
        if as_json:
            emit_json(json.dumps(data, indent=2))
            return
        from .render import info_report

        info_report(data)
