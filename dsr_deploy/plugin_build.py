"""``dsr-deploy plugins build``: configure, build and install the native libraries of ``plugins/`` with CMake.

What can be built here is :func:`dsr_deploy.plugins.detect`'s answer; the libraries go to
:func:`dsr_deploy.plugins.install_dir`, each replaced atomically, with ``build_info.json`` saying what each was
built against (:func:`dsr_deploy.plugins.status` reads it).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from .errors import UserError
from .io import atomic_write_text, check_writable_dir
from .plugins import (
    BUILD_INFO,
    LIBRARIES,
    ORT_API_VERSION_TARGETED,
    TRT_NOT_BUILT,
    default_build_dir,
    detect,
    install_dir,
    read_build_info,
    source_dir,
    tool_version,
    torch_arch,
)


def run(cmd: list[str], log: list[str], verbose: bool, env: Optional[dict] = None) -> None:
    log.append("$ " + " ".join(cmd))
    if verbose:
        print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    log.append(proc.stdout + proc.stderr)
    if verbose:
        sys.stderr.write(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
        # The compiler's own message ("nvcc fatal : ...", "x.cpp:3: error: ..."), not the build tool's progress lines.
        errors = ([ln for ln in tail if re.search(r"\b(error|fatal)\b", ln, re.IGNORECASE)
                   and not ln.lstrip().startswith(("[", "FAILED:", "ninja:", "gmake", "make"))]
                  or [ln for ln in tail if "error" in ln.lower()] or tail[-1:])
        raise UserError(f"`{' '.join(cmd[:3])} ...` failed: {errors[0] if errors else 'no output'} "
                        "(rerun with --verbose for the full log)")


def build(
    *,
    torch: bool = True,
    cuda: Optional[bool] = None,
    ort_root: Optional[str] = None,
    trt_root: Optional[str] = None,
    ort: Optional[bool] = None,
    trt: Optional[bool] = None,
    cuda_arch: Optional[str] = None,
    build_dir: Optional[Path] = None,
    lib_dir: Optional[Path] = None,
    jobs: Optional[int] = None,
    build_type: str = "Release",
    verbose: bool = False,
) -> dict:
    """Configure, build and install the plugins; returns what was built (also written to ``build_info.json``).

    ``cuda=None`` builds CUDA kernels when nvcc is found and torch sees a GPU or is a CUDA build;
    ``ort=None`` builds the ONNX Runtime library (it needs no SDK; ``ort_root``, a folder with ONNX Runtime's
    ``onnxruntime_c_api.h``, adds the check of the ABI declaration against it); ``trt=None`` builds the TensorRT
    plugins when their headers are found. Asking for something that cannot be built (``cuda=True`` without nvcc,
    an ``ort_root`` without the header) is an error, not a silent skip.
    """
    src = source_dir()
    found = detect(ort_root, trt_root)
    cuda, ort, trt, cuda_arch = _what_to_build(found, torch, cuda, ort, trt, ort_root, trt_root, cuda_arch)
    lib_dir = Path(lib_dir) if lib_dir else install_dir()
    check_writable_dir(lib_dir)
    build_dir = _build_dir(build_dir, src)
    configure = _configure_command(found, src, build_dir, build_type, torch=torch, cuda=cuda, ort=ort, trt=trt,
                                   cuda_arch=cuda_arch)
    log: list[str] = []
    started = time.time()
    run(configure, log, verbose)
    run([found["cmake"]["path"], "--build", str(build_dir), "--parallel", str(jobs or os.cpu_count() or 2)], log,
        verbose)
    wanted = {"torch": torch, "ort": ort, "trt": trt, "trt_dynamic": trt, "kernels": True}
    built, skipped = _install(found, build_dir, lib_dir, wanted, log, verbose)
    record = {
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.time() - started, 1),
        "platform": platform.platform(),
        "compiler": tool_version([found["cxx"]["path"], "--version"]),
        "torch": found["torch"]["version"] if torch else None,
        "cuda": {"nvcc": tool_version([found["cuda"]["nvcc"], "--version"]), "arch": cuda_arch} if cuda else None,
        "ort_abi": ({"api_version": ORT_API_VERSION_TARGETED, "declaration": "plugins/onnxruntime/dsr_ort_abi.h",
                     "checked_against": ({k: found["ort"].get(k) for k in ("include", "ORT_API_VERSION")}
                                         if found["ort"]["include"] else None)} if ort else None),
        "trt_headers": {k: v for k, v in found["trt"].items() if k not in ("available",)} if trt else None,
        "libraries": built,
        "skipped": skipped,
    }
    _write_build_info(lib_dir, record, built, cuda)
    record["build_dir"] = str(build_dir)
    record["lib_dir"] = str(lib_dir)
    record["options"] = {"torch": torch, "cuda": bool(cuda), "ort": bool(ort), "trt": bool(trt)}
    return record


def _what_to_build(found: dict, torch: bool, cuda: Optional[bool], ort: Optional[bool], trt: Optional[bool],
                   ort_root: Optional[str], trt_root: Optional[str], cuda_arch: Optional[str]) -> tuple:
    """``(cuda, ort, trt, cuda_arch)`` resolved against what :func:`detect` found; one-line errors for what
    was asked for and cannot be built."""
    for tool in ("cmake", "cxx"):
        if not found[tool]["available"]:
            raise UserError(found[tool]["reason"])
    import torch as _torch

    if cuda is None:
        cuda = found["cuda"]["available"] and (found["cuda"]["gpu_visible"] or bool(_torch.version.cuda))
    elif cuda and not found["cuda"]["available"]:
        raise UserError(f"--cuda: {found['cuda']['reason']}")
    # An explicit --ort-root / --trt-root must be usable; the environment variables only enable auto-detection.
    if ort is None:
        ort = True
    if ort_root and not found["ort"]["include"]:
        raise UserError(found["ort"]["reason"])
    if ort_root and not ort:
        raise UserError("--ort-root checks the ONNX Runtime library against that header: drop --no-ort")
    if trt is None:
        trt = True if trt_root else found["trt"]["available"] and cuda
    if trt and not found["trt"]["available"]:
        raise UserError(found["trt"]["reason"])
    if trt and not cuda:
        raise UserError("the TensorRT plugins need CUDA kernels: pass --cuda (nvcc must be available)")
    if not (torch or ort or trt or cuda):
        raise UserError("nothing to build: enable at least one of --torch, --ort, --cuda, --trt-root")
    if cuda and not cuda_arch:
        # The visible GPU's architecture; without one, Hopper (sm_90, the GPU check's target).
        if found["cuda"]["gpu_visible"]:
            major, minor = _torch.cuda.get_device_capability(0)
            cuda_arch = f"{major}{minor}"
        else:
            cuda_arch = "90"
    return cuda, ort, trt, cuda_arch


def _build_dir(build_dir: Optional[Path], src: Path) -> Path:
    if build_dir is None:
        build_dir = default_build_dir(src)
        try:
            build_dir.mkdir(parents=True, exist_ok=True)
        except OSError:  # a read-only home: build in the temp folder (the libraries still go to lib_dir)
            build_dir = Path(tempfile.gettempdir()) / f"dsr-deploy-plugins-build-{build_dir.name}"
    build_dir = Path(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    return build_dir


def _configure_command(found: dict, src: Path, build_dir: Path, build_type: str, *, torch: bool, cuda: bool,
                       ort: bool, trt: bool, cuda_arch: Optional[str]) -> list[str]:
    def on(flag: bool) -> str:
        return "ON" if flag else "OFF"

    configure = [
        found["cmake"]["path"], "-S", str(src), "-B", str(build_dir), f"-DCMAKE_BUILD_TYPE={build_type}",
        f"-DDSR_BUILD_TORCH={on(torch)}", f"-DDSR_BUILD_CUDA={on(cuda)}", f"-DDSR_BUILD_ORT={on(ort)}",
        f"-DDSR_BUILD_TRT={on(trt)}", f"-DCMAKE_PREFIX_PATH={found['torch']['cmake_prefix']}",
        f"-DPython_EXECUTABLE={sys.executable}",
    ]
    if found["ninja"]["available"] and not (build_dir / "CMakeCache.txt").is_file():
        configure += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={found['ninja']['path']}"]
    # Always given (empty: no check), so a reused build folder never keeps an earlier build's header.
    configure.append(f"-DONNXRUNTIME_ROOT={found['ort']['include'] or ''}")
    if trt:
        configure.append(f"-DTENSORRT_ROOT={found['trt']['root']}")
    if cuda:
        configure.append(f"-DCMAKE_CUDA_ARCHITECTURES={cuda_arch}")
        root = found["cuda"]["root"]
        nvcc = str(Path(root) / "bin" / "nvcc") if root else found["cuda"]["nvcc"]
        configure.append(f"-DCMAKE_CUDA_COMPILER={nvcc}")
        # A CUDA torch adds its own -gencode list (TORCH_CUDA_ARCH_LIST, else every arch it was built for, some of
        # which a newer nvcc refuses); give it the one architecture asked for.
        arch = torch_arch(cuda_arch)
        if arch:
            configure.append(f"-DTORCH_CUDA_ARCH_LIST={arch}")
        if root:  # for torch's FindCUDA and for FindCUDAToolkit, which would otherwise guess from a wrapper's folder
            configure += [f"-DCUDA_TOOLKIT_ROOT_DIR={root}", f"-DCUDAToolkit_ROOT={root}"]
    return configure


def _install(found: dict, build_dir: Path, lib_dir: Path, wanted: dict, log: list[str], verbose: bool) -> tuple:
    """Install into a staging folder beside ``lib_dir``, then move each wanted library into place (atomic: a
    loaded copy keeps its inode). Returns ``(built {key: path}, skipped {key: why})``."""
    staging = Path(tempfile.mkdtemp(prefix=".dsr-plugins-install.", dir=lib_dir))
    try:
        run([found["cmake"]["path"], "--install", str(build_dir), "--prefix", str(staging)], log, verbose)
        built, skipped = {}, {}
        for key, (name, _what, _option) in LIBRARIES.items():
            if not wanted[key]:
                continue
            produced = staging / name
            if not produced.is_file() and key == "trt":
                # CMake refuses the static-registration library without libnvinfer (it would not load): say why.
                why = next((ln.strip() for chunk in log for ln in chunk.splitlines() if TRT_NOT_BUILT in ln), None)
                if why:
                    skipped[key] = why
                    continue
            if not produced.is_file():
                raise UserError(f"the build did not produce {name}; rerun with --verbose")
            os.replace(produced, lib_dir / name)
            built[key] = str(lib_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return built, skipped


def _write_build_info(lib_dir: Path, record: dict, built: dict, cuda: bool) -> None:
    """Merge this build's record into ``build_info.json`` (one entry per library: what it was built against)."""
    import torch as _torch

    previous = read_build_info(lib_dir)
    merged = dict(previous.get("libraries_info", {}))
    for key in built:
        merged[key] = {k: v for k, v in record.items() if k != "libraries"}
        merged[key]["path"] = built[key]
        merged[key]["cuda_kernels"] = bool(cuda) and (key != "torch" or bool(_torch.version.cuda))
    atomic_write_text(lib_dir / BUILD_INFO, json.dumps({"last_build": record, "libraries_info": merged}, indent=2)
                      + "\n")
