"""Build and inspect the native plugins of ``plugins/`` (``dsr-deploy plugins build`` / ``plugins status``).

One CMake project (``plugins/CMakeLists.txt``) builds the spike-loop core and whichever adapters their SDKs allow:

* ``libdsr_torch_ops.so``: CPU (and, with a CUDA torch and ``--cuda``, CUDA) kernels of ``torch.ops.dsr.*``;
* ``libdsr_ort_ops.so``: ONNX Runtime custom ops, domain ``dsr``; always built (the C ABI it uses is declared in
  ``plugins/onnxruntime/dsr_ort_abi.h``); with ONNX Runtime's own header (``--ort-root``) the build also checks that
  declaration against it;
* ``libdsr_trt_plugin.so`` / ``libdsr_trt_plugin_dynamic.so``: TensorRT IPluginV3 plugins (needs the TensorRT
  headers and CUDA).

The sources ship inside the package (``dsr_deploy/_plugin_src``), so this works from a wheel as from a checkout. The
libraries are installed into the first folder of :func:`dsr_deploy.ops.library_dirs`: ``$DSR_DEPLOY_LIB_DIR``, else
the per-user cache ``~/.cache/dsr-deploy/plugins/torch-<version>-<sources digest>/`` (never site-packages), each
replaced atomically, with ``build_info.json`` saying what each was built against. ``import dsr_deploy`` finds them
there.

This module finds compilers, SDKs and the per-user cache and says what is built and why not
(:func:`detect`, :func:`status`); :mod:`dsr_deploy.plugin_build` runs the build.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

from . import contract, ops
from .errors import UserError, first_line

BUILD_INFO = "build_info.json"

# key: (file name, what it is, the CMake option that builds it)
LIBRARIES = {
    "torch": (contract.TORCH_OPS_LIBRARY, "PyTorch kernels of torch.ops.dsr.if_spike / lif_spike", "DSR_BUILD_TORCH"),
    "ort": (contract.ORT_OPS_LIBRARY, "ONNX Runtime custom ops, domain dsr (OrtApi 18+)", "DSR_BUILD_ORT"),
    "trt": (contract.TRT_PLUGIN_LIBRARY, "TensorRT IPluginV3 plugins, static registration", "DSR_BUILD_TRT"),
    "trt_dynamic": (contract.TRT_DYNAMIC_PLUGIN_LIBRARY, "TensorRT IPluginV3 plugins, exports getCreators",
                    "DSR_BUILD_TRT"),
    "kernels": (contract.KERNELS_LIBRARY, "the core behind C functions (ctypes: benchmarks, scripts/gpu_check.py)",
                "always"),
}
ORT_LIBRARY = LIBRARIES["ort"][0]
ORT_API_VERSION_TARGETED = 18  # DSR_ORT_API_VERSION of plugins/onnxruntime/dsr_ort_abi.h
TRT_LIBRARY = LIBRARIES["trt"][0]
TRT_DYNAMIC_LIBRARY = LIBRARIES["trt_dynamic"][0]
KERNELS_LIBRARY = LIBRARIES["kernels"][0]
#: The line plugins/CMakeLists.txt prints when it refuses libdsr_trt_plugin.so (no libnvinfer to link).
TRT_NOT_BUILT = "libdsr_trt_plugin.so NOT BUILT"


def source_dir() -> Path:
    """The ``plugins/`` CMake project (see :func:`dsr_deploy.ops.plugin_source_dir`)."""
    src = ops.plugin_source_dir()
    if src is None:
        where = os.environ.get("DSR_DEPLOY_PLUGINS_SRC")
        raise UserError(
            f"plugin sources not found in DSR_DEPLOY_PLUGINS_SRC={where} (it must hold CMakeLists.txt and core/)"
            if where
            else "plugin sources not found: this dsr_deploy install has no _plugin_src folder (reinstall dsr-deploy) "
                 "and runs from no source checkout; set DSR_DEPLOY_PLUGINS_SRC to a plugins/ folder"
        )
    return src


def install_dir() -> Path:
    dirs = ops.library_dirs()
    if dirs:
        return dirs[0]
    source_dir()  # raises: with no sources there is no build key
    raise AssertionError("unreachable")


def default_build_dir(src: Path) -> Path:
    """The CMake build tree for sources at ``src``: in the per-user cache, one per source folder (a CMake tree is tied
    to its source folder), reused by later builds."""
    tag = hashlib.sha256(str(src.resolve()).encode()).hexdigest()[:12]
    return ops.cache_root() / "build" / tag


def ort_library() -> Optional[Path]:
    """``libdsr_ort_ops.so`` if built (see :func:`dsr_deploy.ops.library_dirs`), else None."""
    return ops.find_library(ORT_LIBRARY)


def _cxx() -> tuple[Optional[str], Optional[str]]:
    """(the C++ compiler the build will use, None) or (None, why there is none): ``$CXX`` when it names a program
    here, else ``c++`` / ``g++`` on PATH."""
    env = os.environ.get("CXX")
    if env:
        found = shutil.which(env)
        return (found, None) if found else (None, f"CXX={env} is not a program on this machine")
    found = shutil.which("c++") or shutil.which("g++")
    return (found, None) if found else (None, "no C++ compiler (set CXX or install g++)")


def _cmake() -> Optional[str]:
    # scripts/setup.sh may have pip-installed cmake into the venv's bin, which need not be on PATH
    return shutil.which("cmake") or shutil.which("cmake", path=str(Path(sys.executable).parent))


def missing_reason(key: str) -> Optional[str]:
    """None when library ``key`` (of :data:`LIBRARIES`) is built, else one line: not built, and why (no compiler, no
    CMake, or simply not built yet)."""
    name = LIBRARIES[key][0]
    if ops.find_library(name) is not None:
        return None
    cxx, no_cxx = _cxx()
    if cxx is None:
        why = f"{no_cxx}, so `dsr-deploy plugins build` cannot build it"
    elif _cmake() is None:
        why = "cmake not found (pip install cmake), so `dsr-deploy plugins build` cannot build it"
    else:
        why = "run `dsr-deploy plugins build` (a few seconds; `make quickstart` and `make test` run it)"
    return f"{name} not built: {why}"


def register_ort_custom_ops(session_options) -> bool:
    """Register the dsr ONNX Runtime custom ops in ``session_options`` when the library is built.

    With it, a model's ``dsr::DSR*Spike`` nodes run the fused kernel; without it, ONNX Runtime runs the model-local
    function body the exporter attached. Returns whether the library was registered.
    """
    path = ort_library()
    if path is None:
        return False
    session_options.register_custom_ops_library(str(path))
    return True


# ---------------------------------------------------------------------------------------------------------
# Detection


def _ort_include(root: Optional[str]) -> Optional[Path]:
    if not root:
        return None
    base = Path(root)
    for sub in ("include", "include/onnxruntime", "include/onnxruntime/core/session", "."):
        if (base / sub / "onnxruntime_c_api.h").is_file():
            return (base / sub).resolve()
    return None


def _trt_include(root: Optional[str]) -> Optional[Path]:
    if not root:
        return None
    base = Path(root)
    for sub in ("include", "."):
        if (base / sub / "NvInferRuntime.h").is_file():
            return (base / sub).resolve()
    return None


def _header_define(path: Path, names: list[str]) -> dict:
    out = {}
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return out
    for name in names:
        m = re.search(rf"#define\s+{name}\s+(\S+)", text)
        if m:
            out[name] = m.group(1)
    return out


def _nvcc() -> Optional[str]:
    for env in ("CUDACXX",):
        if os.environ.get(env) and Path(os.environ[env]).is_file():
            return os.environ[env]
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def _cuda_root(nvcc: Optional[str]) -> Optional[str]:
    """The CUDA toolkit folder of ``nvcc``: the one with ``bin/nvcc`` and the runtime headers, or None.

    A CUDA build of torch configures CUDA through the legacy FindCUDA, which finds the toolkit from nvcc's folder;
    an ``nvcc`` that is a wrapper script (``/usr/local/bin/nvcc`` calling the real one) leaves it with no headers
    or libcudart. nvcc itself says where its toolkit is (``--dryrun`` prints ``TOP=``).
    """
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return str(Path(home).resolve())
    if not nvcc:
        return None
    try:
        out = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True, timeout=30)
        text = out.stdout + out.stderr
    except (OSError, subprocess.SubprocessError):
        text = ""
    m = re.search(r"^#\$ TOP=(.+)$", text, re.MULTILINE)
    candidates = [Path(m.group(1).strip())] if m else []
    candidates.append(Path(nvcc).resolve().parent.parent)
    for c in candidates:
        c = c.resolve()
        if (c / "bin" / "nvcc").is_file() and any((c / sub / "cuda_runtime.h").is_file()
                                                 for sub in ("include", "targets/x86_64-linux/include",
                                                             "targets/sbsa-linux/include")):
            return str(c)
    return None


def torch_arch(cuda_arch: str) -> Optional[str]:
    """CMake's ``90;100a`` / ``90`` as torch's ``9.0;10.0a`` (None for what has no such spelling, e.g. ``native``)."""
    out = []
    for a in re.split(r"[;, ]+", str(cuda_arch).strip()):
        m = re.fullmatch(r"(\d+)(\d)([af]?)(?:-(?:real|virtual))?", a)
        if m:
            out.append(f"{m.group(1)}.{m.group(2)}{m.group(3)}")
    return ";".join(out) or None


def tool_version(cmd: list[str]) -> Optional[str]:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [ln for ln in out.splitlines() if ln.strip()]
    return lines[-1].strip() if "nvcc" in cmd[0] else (lines[0].strip() if lines else None)


def detect(ort_root: Optional[str] = None, trt_root: Optional[str] = None) -> dict:
    """What each adapter can be built against here: ``{component: {"available": bool, "reason"/details}}``."""
    import torch

    ort_root = ort_root or os.environ.get("ONNXRUNTIME_ROOT")
    trt_root = trt_root or os.environ.get("TENSORRT_ROOT")
    venv_bin = str(Path(sys.executable).parent)  # scripts/setup.sh may have pip-installed cmake/ninja there
    cmake = _cmake()
    ninja = shutil.which("ninja") or shutil.which("ninja", path=venv_bin)
    nvcc = _nvcc()
    cxx, no_cxx = _cxx()
    found: dict = {
        "cmake": {"available": cmake is not None, "path": cmake,
                  "reason": None if cmake else "cmake not on PATH (pip install cmake, or apt-get install cmake)"},
        "ninja": {"available": ninja is not None, "path": ninja},
        "cxx": {"available": cxx is not None, "path": cxx, "reason": no_cxx},
        "torch": {"available": True, "version": torch.__version__, "cmake_prefix": torch.utils.cmake_prefix_path,
                  "cuda": torch.version.cuda},
        "cuda": {"available": nvcc is not None, "nvcc": nvcc, "root": _cuda_root(nvcc),
                 "gpu_visible": torch.cuda.is_available(),
                 "reason": None if nvcc else "nvcc not found (set CUDA_HOME or put nvcc on PATH)"},
    }
    # The ORT library needs only the compiler (dsr_ort_abi.h declares the ABI); ONNX Runtime's own header, when
    # given, adds the compile-time check of that declaration against it.
    inc = _ort_include(ort_root)
    found["ort"] = {"available": True, "api_version": ORT_API_VERSION_TARGETED, "root": ort_root,
                    "include": str(inc) if inc else None}
    if inc:
        found["ort"].update(_header_define(inc / "onnxruntime_c_api.h", ["ORT_API_VERSION"]))
    elif ort_root:
        found["ort"]["reason"] = f"onnxruntime_c_api.h not found under ONNXRUNTIME_ROOT={ort_root}"
    inc = _trt_include(trt_root)
    found["trt"] = {"available": inc is not None, "root": trt_root, "include": str(inc) if inc else None}
    if inc:
        found["trt"].update(_header_define(inc / "NvInferVersion.h", [
            "TRT_MAJOR_ENTERPRISE", "TRT_MINOR_ENTERPRISE", "TRT_PATCH_ENTERPRISE", "NV_TENSORRT_MAJOR",
            "NV_TENSORRT_MINOR", "NV_TENSORRT_PATCH"]))
    else:
        found["trt"]["reason"] = (
            f"NvInferRuntime.h not found under TENSORRT_ROOT={trt_root}" if trt_root else
            "TensorRT headers not given: pass --trt-root or set TENSORRT_ROOT to a folder with include/NvInfer.h"
        )
    return found


def read_build_info(lib_dir: Path) -> dict:
    try:
        return json.loads((lib_dir / BUILD_INFO).read_text())
    except (OSError, ValueError):
        return {}


# ---------------------------------------------------------------------------------------------------------
# Status


def _ort_check(path: Path) -> tuple[bool, str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return False, "onnxruntime is not installed"
    try:
        so = ort.SessionOptions()
        so.register_custom_ops_library(str(path))
    except Exception as exc:  # ORT raises its own exception types
        return False, f"onnxruntime {ort.__version__} could not register it: {first_line(exc)}"
    return True, f"registers in onnxruntime {ort.__version__}"


def elf_exports(path: Path | str, name: str) -> bool:
    """Whether the ELF shared library ``path`` defines the dynamic symbol ``name``, read from its ``.dynsym``
    without loading it (loading a static-registration library registers its plugins). False when unreadable."""
    import struct

    try:
        data = Path(path).read_bytes()
    except OSError:
        return False
    if data[:4] != b"\x7fELF" or data[4] != 2:  # 64-bit ELF only
        return False
    end = "<" if data[5] == 1 else ">"
    try:
        shoff, = struct.unpack_from(end + "Q", data, 0x28)
        shentsize, shnum = struct.unpack_from(end + "HH", data, 0x3A)
        sections = [struct.unpack_from(end + "IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
        want = name.encode()
        for sh in sections:
            if sh[1] != 11:  # SHT_DYNSYM
                continue
            str_off = sections[sh[6]][4]
            for off in range(sh[4], sh[4] + sh[5], sh[9] or 24):
                st_name, _info, _other, st_shndx = struct.unpack_from(end + "IBBH", data, off)
                if st_shndx == 0:  # undefined here
                    continue
                stop = data.index(b"\0", str_off + st_name)
                if data[str_off + st_name:stop] == want:
                    return True
    except (struct.error, IndexError, ValueError):
        return False
    return False


def _has_symbol(path: Path, name: str) -> bool:
    import ctypes

    try:
        return hasattr(ctypes.CDLL(str(path)), name)
    except OSError:
        return False


def status(ort_root: Optional[str] = None, trt_root: Optional[str] = None) -> dict:
    """What is built, where, whether it loads here, and what is missing and why."""
    import torch

    found = detect(ort_root, trt_root)
    infos = {}
    for d in ops.library_dirs():
        infos.update({k: v for k, v in read_build_info(d).get("libraries_info", {}).items() if k not in infos})
    libs = {}
    for key, (name, what, _option) in LIBRARIES.items():
        path = ops.find_library(name)
        entry = {"library": name, "what": what, "built": path is not None, "path": str(path) if path else None,
                 "build": infos.get(key)}
        if key == "torch":
            native = ops.native_status()
            entry["loaded"] = native["loaded"]
            entry["cpu_kernel"] = ops.has_native_kernel("cpu")
            entry["cuda_kernel"] = ops.has_native_kernel("cuda")
            entry["reason"] = native["reason"]
        elif key == "ort":
            if path is not None:
                entry["loaded"], entry["reason"] = _ort_check(path)
            else:
                entry["reason"] = missing_reason("ort")
        elif key == "kernels":
            entry["reason"] = "built" if path is not None else "not built: run `dsr-deploy plugins build`"
            if path is not None:
                entry["cuda_entry"] = _has_symbol(path, "dsr_cuda_forward")
        else:
            if path is not None:
                entry["reason"] = ("built; loads only into a process with TensorRT (libnvinfer) and CUDA"
                                   if not torch.cuda.is_available() else "built")
            elif not found["cuda"]["available"]:
                entry["reason"] = "not built: " + found["cuda"]["reason"] + " (the plugins need CUDA)"
            else:
                entry["reason"] = "not built: " + (found["trt"].get("reason") or "rerun `dsr-deploy plugins build`")
        libs[key] = entry
    return {
        "lib_dirs": [str(d) for d in ops.library_dirs()],
        "libraries": libs,
        "toolchain": {k: {kk: vv for kk, vv in v.items()} for k, v in found.items()},
    }
