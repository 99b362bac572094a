"""``tensorrt`` backend: a serialized TensorRT engine (``.plan`` / ``.engine``), TensorRT 10/11 Python API.

Before deserializing, the dsr plugin library is loaded so the engine finds the DSRIFSpike / DSRLIFSpike
creators: ``libdsr_trt_plugin_dynamic.so`` through TensorRT's registry (``get_plugin_registry().load_library``), else
``libdsr_trt_plugin.so`` (static registration: a dlopen registers it), found by
:func:`dsr_deploy.ops.find_library`, or the path in the ``plugin_library`` option. Device buffers are torch
CUDA tensors; inference is enqueued with ``execute_async_v3`` on a torch CUDA stream.

Options: ``device`` ("cuda" / "cuda:N"; a bare "cuda" is the current device, resolved once at load),
``plugin_library``.

NOT YET RUN ON A GPU: TensorRT cannot be installed on this project's CI machines (no GPU); this module is
written against the documented TensorRT 10 Python API and only its error paths are tested. Without the
``tensorrt`` package the runner raises a one-line error naming the pip extra ``tensorrt``.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..contract import TRT_DYNAMIC_PLUGIN_LIBRARY, TRT_PLUGIN_LIBRARY
from ..errors import UserError, first_line, require
from .base import Backend, Runner, RunnerOptions, TensorSpec, is_file_with, to_torch

SUFFIXES = (".plan", ".engine", ".trt")

_loaded_plugins: dict[str, tuple] = {}  # path -> (how, handle), kept alive for the process
_plugin_lock = threading.Lock()


def accepts(artifact: Any) -> bool:
    return is_file_with(artifact, SUFFIXES)


def probe() -> Optional[str]:
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        return "tensorrt is not installed (pip install 'dsr-deploy[tensorrt]')"
    try:
        import torch

        if not torch.cuda.is_available():
            return "no CUDA GPU visible to torch"
    except ImportError:  # pragma: no cover
        return "torch is not installed"
    return None


def find_plugin_library(explicit: Optional[str] = None) -> Optional[Path]:
    """The TensorRT plugin library to load: ``explicit`` (must exist) or a built one, or None.

    Built ones, in order: ``libdsr_trt_plugin_dynamic.so`` (exports ``getCreators``; loaded through TensorRT's own
    registry, needs no libnvinfer link), then ``libdsr_trt_plugin.so`` (static registration).
    """
    if explicit:
        p = Path(explicit)
        if not p.is_file():
            raise UserError(f"TensorRT plugin library {p} not found")
        return p
    from ..ops import find_library

    return find_library(TRT_DYNAMIC_PLUGIN_LIBRARY) or find_library(TRT_PLUGIN_LIBRARY)


def plugin_loading(path: Path) -> str:
    """How ``path`` is loaded: ``"registry"`` (it exports ``getCreators``: ``get_plugin_registry().load_library``,
    as trtexec --dynamicPlugins and Polygraphy --plugins do) or ``"dlopen"`` (static registration on load)."""
    from ..plugins import elf_exports

    return "registry" if elf_exports(path, "getCreators") else "dlopen"


def load_plugin_library(path: Path, trt: Any = None) -> str:
    """Load the plugin library once per process; returns how (:func:`plugin_loading`).

    A ``getCreators`` library goes through TensorRT's registry (``trt`` or ``import tensorrt``); a
    static-registration one is dlopened with RTLD_GLOBAL, its constructor registering the creators with the
    libnvinfer it links. The two kinds hold the same creators, so only one dsr library is loaded per process.
    """
    key = str(Path(path).resolve())
    how = plugin_loading(Path(key))
    with _plugin_lock:
        if key in _loaded_plugins:
            return _loaded_plugins[key][0]
        if _loaded_plugins:
            other = next(iter(_loaded_plugins))
            raise UserError(f"cannot load TensorRT plugin library {path}: {other} is already loaded in this process "
                            "and registers the same dsr creators (use one dsr plugin library per process)")
        try:
            if how == "registry":
                trt = trt or require_tensorrt("loading a TensorRT plugin library")
                handle = trt.get_plugin_registry().load_library(key)
                if handle is None:
                    raise OSError("IPluginRegistry::loadLibrary returned no handle (see the TensorRT log above)")
            else:
                handle = ctypes.CDLL(key, mode=ctypes.RTLD_GLOBAL)
        except Exception as exc:  # TensorRT raises its own types
            raise UserError(f"cannot load TensorRT plugin library {path} ({how}): {first_line(exc)}") from None
        _loaded_plugins[key] = (how, handle)
    return how


def cuda_device(device: Any) -> str:
    """``"cuda"`` -> ``"cuda:<current device>"``; ``"cuda:N"`` checked against the visible devices.

    A bare ``cuda`` has no index, and ``torch.cuda.set_device`` / per-device streams need one; it is resolved once,
    at load, so every later call uses the same device even if the current device changes.
    """
    import torch

    text = str(device or "cuda").strip()
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise UserError(f"tensorrt: {text!r} is not a device (use cuda or cuda:N)") from None
    if dev.type != "cuda":
        raise UserError(f"tensorrt: engines run on cuda devices, not {text!r}")
    index = torch.cuda.current_device() if dev.index is None else dev.index
    count = torch.cuda.device_count()
    if not 0 <= index < count:
        raise UserError(f"tensorrt: {text!r}: no such device ({count} CUDA device(s) visible)")
    return f"cuda:{index}"


def require_tensorrt(what: str = "TensorRT engines"):
    return require("tensorrt", "tensorrt", what)


def torch_dtype(trt, dtype):
    import torch

    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
             trt.int8: torch.int8, trt.bool: torch.bool}
    for name, tdt in (("bfloat16", torch.bfloat16), ("int64", torch.int64), ("uint8", torch.uint8)):
        if hasattr(trt, name):
            table[getattr(trt, name)] = tdt
    if dtype not in table:
        raise UserError(f"tensorrt: unsupported tensor type {dtype}")
    return table[dtype]


@dataclass
class TensorRTOptions(RunnerOptions):
    """The ``tensorrt`` backend's options: ``device`` (default "cuda"), ``plugin_library`` (an explicit dsr plugin
    library; default: :func:`find_plugin_library`). ``threads`` does not apply (the engine runs on the GPU)."""

    plugin_library: Optional[str] = None


class TensorRTRunner(Runner):
    Options = TensorRTOptions
    options: TensorRTOptions
    backend = "tensorrt"

    def __init__(self, artifact: Any, **options: Any):
        super().__init__(artifact, **options)
        self.device = str(self.options.device or "cuda")
        self.engine = None
        self.plugin: Optional[str] = None
        self._local = threading.local()  # one execution context (and stream) per thread
        self._specs_in: list[TensorSpec] = []
        self._specs_out: list[TensorSpec] = []

    def _load(self) -> None:
        trt = require_tensorrt("the tensorrt backend")
        import torch

        if not torch.cuda.is_available():
            raise UserError("tensorrt: no CUDA GPU visible (TensorRT engines run on NVIDIA GPUs only)")
        self.device = cuda_device(self.device)
        path = Path(self.artifact)
        if not path.is_file():
            raise UserError(f"tensorrt: {path}: no such file")
        lib = find_plugin_library(self.options.plugin_library)
        if lib is not None:
            load_plugin_library(lib, trt)
            self.plugin = str(lib)
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(self._logger, "")
        torch.cuda.set_device(torch.device(self.device))  # an indexed device: torch rejects a bare "cuda" here
        runtime = trt.Runtime(self._logger)
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            hint = "" if lib else f" ({TRT_PLUGIN_LIBRARY} not found: an engine with dsr plugins needs it)"
            raise UserError(f"tensorrt: cannot deserialize {path} (corrupt, built by another TensorRT version, "
                            f"or a plugin is missing){hint}")
        self._runtime = runtime
        self.engine = engine
        self._specs_in, self._specs_out = [], []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            shape = tuple(int(d) if d >= 0 else None for d in engine.get_tensor_shape(name))
            dtype = str(torch_dtype(trt, engine.get_tensor_dtype(name))).replace("torch.", "")
            spec = TensorSpec(name, shape, dtype)
            (self._specs_in if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else self._specs_out).append(spec)

    def release(self) -> None:
        self._local = threading.local()
        self.engine = None
        super().release()

    def inputs(self) -> list[TensorSpec]:
        self.ensure_loaded()
        return list(self._specs_in)

    def outputs(self) -> list[TensorSpec]:
        self.ensure_loaded()
        return list(self._specs_out)

    def describe(self) -> dict:
        return {**super().describe(), "device": self.device, "plugin_library": self.plugin}

    def _context(self):
        import torch

        ctx = getattr(self._local, "context", None)
        if ctx is None:
            ctx = self.engine.create_execution_context()
            if ctx is None:
                raise UserError("tensorrt: cannot create an execution context (out of GPU memory?)")
            self._local.context = ctx
            self._local.stream = torch.cuda.Stream(device=self.device)
        return ctx, self._local.stream

    def _infer(self, feeds: dict[str, Any], copy_outputs: bool) -> dict[str, Any]:
        import torch

        ctx, stream = self._context()
        keep = []
        for spec in self._specs_in:
            x = to_torch(feeds[spec.name], self.device).contiguous()
            keep.append(x)
            if not ctx.set_input_shape(spec.name, tuple(x.shape)):
                raise UserError(f"tensorrt: input {spec.name!r} shape {list(x.shape)} is outside the engine's "
                                "optimisation profile (rebuild with wider --batch / --timesteps)")
            ctx.set_tensor_address(spec.name, x.data_ptr())
        outs = {}
        for spec in self._specs_out:
            shape = tuple(ctx.get_tensor_shape(spec.name))
            y = torch.empty(shape, dtype=getattr(torch, spec.dtype), device=self.device)
            ctx.set_tensor_address(spec.name, y.data_ptr())
            outs[spec.name] = y
        # Inputs were written on the current stream; the engine's stream waits for them.
        stream.wait_stream(torch.cuda.current_stream(self.device))
        if not ctx.execute_async_v3(stream.cuda_stream):
            raise UserError("tensorrt: execute_async_v3 failed (see the TensorRT log above)")
        torch.cuda.current_stream(self.device).wait_stream(stream)
        for t in keep + list(outs.values()):
            t.record_stream(stream)
        if copy_outputs:
            return {k: v.cpu().numpy() for k, v in outs.items()}
        return outs

    def synchronize(self) -> None:
        import torch

        torch.cuda.synchronize(self.device)


#: The backend's description (collected by :mod:`.registry`).
BACKEND = Backend("tensorrt", TensorRTRunner, accepts, formats=("tensorrt", "engine", "plan", "trt"),
                  extra="tensorrt", probe=probe, priority=5)
