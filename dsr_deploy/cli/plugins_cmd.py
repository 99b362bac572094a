"""``dsr-deploy plugins build`` and ``dsr-deploy plugins status``: the native kernels of ``plugins/``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .validate import emit_json

plugins_app = typer.Typer(
    help="Build and inspect the native spike-loop plugins (PyTorch ops, ONNX Runtime ops, TensorRT plugins).",
    no_args_is_help=True,
)


@plugins_app.command("build")
def build_cmd(
    torch_ops: bool = typer.Option(True, "--torch/--no-torch", help="Build the PyTorch kernels."),
    cuda: Optional[bool] = typer.Option(
        None, "--cuda/--no-cuda",
        help="CUDA kernels (default: on when nvcc is found and torch is a CUDA build or sees a GPU).",
    ),
    ort: bool = typer.Option(
        True, "--ort/--no-ort", help="Build the ONNX Runtime custom-op library (no ONNX Runtime SDK needed)."
    ),
    ort_root: Optional[str] = typer.Option(
        None, "--ort-root",
        help="Folder with ONNX Runtime's onnxruntime_c_api.h (default $ONNXRUNTIME_ROOT): also check the library's "
             "ABI declaration against it at compile time.",
    ),
    trt_root: Optional[str] = typer.Option(
        None, "--trt-root", help="TensorRT folder with include/NvInfer.h (default $TENSORRT_ROOT); needs --cuda."
    ),
    cuda_arch: Optional[str] = typer.Option(
        None, "--cuda-arch", help="CMAKE_CUDA_ARCHITECTURES (default: the visible GPU's, else 90)."
    ),
    build_dir: Optional[Path] = typer.Option(
        None, "--build-dir", help="CMake build folder (default: under ~/.cache/dsr-deploy/build/)."
    ),
    lib_dir: Optional[Path] = typer.Option(
        None, "--lib-dir",
        help="Install folder (default $DSR_DEPLOY_LIB_DIR, else ~/.cache/dsr-deploy/plugins/<torch + sources key>/, "
             "where dsr_deploy finds the libraries).",
    ),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", help="Parallel compile jobs."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the CMake output."),
    as_json: bool = typer.Option(False, "--json", help="Print the build record as JSON."),
):
    """Configure and build plugins/ with CMake and install the libraries where dsr_deploy finds them."""
    from .. import plugin_build

    record = plugin_build.build(torch=torch_ops, cuda=cuda, ort=ort, ort_root=ort_root, trt_root=trt_root,
                                cuda_arch=cuda_arch, build_dir=build_dir, lib_dir=lib_dir, jobs=jobs,
                                verbose=verbose)
    if as_json:
        emit_json(json.dumps(record, indent=2))
        return
    from .render import plugins_built

    plugins_built(record)


@plugins_app.command("status")
def status_cmd(
    ort_root: Optional[str] = typer.Option(None, "--ort-root", help="ONNX Runtime headers to report on."),
    trt_root: Optional[str] = typer.Option(None, "--trt-root", help="TensorRT headers to report on."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
):
    """What is built, whether it loads here, and what is missing and why."""
    from .. import plugins

    st = plugins.status(ort_root=ort_root, trt_root=trt_root)
    if as_json:
        emit_json(json.dumps(st, indent=2))
        return
    from .render import plugins_status

    plugins_status(st)


def register(app: typer.Typer) -> None:
    app.add_typer(plugins_app, name="plugins")
