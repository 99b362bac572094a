"""``onnxruntime`` backend: an ``.onnx`` model in an ONNX Runtime session.

dsr custom nodes (domain ``dsr``: DSRIFSpike, DSRLIFSpike, DSRIFStep, DSRLIFStep): when the custom-op library
``libdsr_ort_ops.so`` is built (``dsr_deploy.ops.find_library``) it is registered and its fused kernels run;
otherwise ORT inlines the model-local function of the same name (the function fallback). ``describe()["dsr_ops"]``
says which actually happened.

Options:

* ``device``: "cpu" (CPUExecutionProvider) or "cuda[:N]" (CUDAExecutionProvider; needs onnxruntime-gpu, the
  ``gpu`` extra, and a GPU);
* ``threads``: intra-op threads (default: ORT's choice);
* ``custom_ops``: "auto" (default: the library when found), "require" (a one-line error when it is missing),
  "off" (always the function fallback); ``custom_ops_library``: an explicit path;
* ``io_binding``: run through an IOBinding. On CUDA, torch CUDA feeds are bound in place and, with
  ``copy_outputs=False``, outputs stay on the GPU (``OrtValue``s), so timings exclude host copies.
  (The CUDA paths have not run on a GPU in this project's CI.)
* ``optimization``: "all" (default), "extended", "basic", "disabled".

One runner may be shared by several threads (``InferenceSession.run`` is thread-safe; every call makes its
own IOBinding).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np

from ..contract import DOMAIN as DSR_DOMAIN
from ..contract import ORT_OPS_LIBRARY
from ..errors import UserError, first_line, require
from ..onnx_graph import dsr_op_types
from .base import Backend, Runner, RunnerOptions, TensorSpec, Variant, is_file_with, to_numpy

ORT_TYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(bfloat16)": "bfloat16", "tensor(int64)": "int64", "tensor(int32)": "int32",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(bool)": "bool",
}


def accepts(artifact: Any) -> bool:
    return is_file_with(artifact, (".onnx",))


def probe() -> Optional[str]:
    import importlib.util

    return None if importlib.util.find_spec("onnxruntime") else "onnxruntime is not installed"


def dsr_ops_used(graph) -> set[str]:
    """The op types of every ``dsr``-domain node in ``graph`` and its subgraphs (Scan / Loop / If bodies)."""
    return dsr_op_types(graph)


def inspect_dsr_usage(path: Path) -> dict:
    """Which dsr custom ops the model uses and which of them have a model-local function (fallback)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise UserError(f"onnxruntime: cannot read {path} as ONNX: {first_line(exc)}") from None
    used = dsr_ops_used(model.graph)
    functions = {f.name for f in model.functions if f.domain == DSR_DOMAIN}
    return {"ops": sorted(used), "functions": sorted(functions), "missing_fallback": sorted(used - functions)}


def find_ort_library() -> Optional[Path]:
    from ..ops import find_library

    return find_library(ORT_OPS_LIBRARY)


@dataclass
class OrtOptions(RunnerOptions):
    """The ``onnxruntime`` backend's options (see the module docstring)."""

    custom_ops: Union[str, bool, None] = "auto"
    custom_ops_library: Optional[str] = None
    io_binding: bool = False
    optimization: str = "all"


_OPS_OFF = "function fallback (custom ops disabled)"


class OnnxRuntimeRunner(Runner):
    backend = "onnxruntime"
    Options = OrtOptions
    options: OrtOptions

    def __init__(self, artifact: Any, **options: Any):
        super().__init__(artifact, **options)
        self.device = str(self.options.device or "cpu")
        self.session = None
        self.dsr_ops = "not loaded"
        self.library: Optional[str] = None
        self.providers: list[str] = []

    # -- lifecycle -------------------------------------------------------------------------------------
    def _load(self) -> None:
        ort = require("onnxruntime", "core", "the onnxruntime backend")
        path = Path(self.artifact)
        if not path.is_file():
            raise UserError(f"onnxruntime: {path}: no such file")
        usage = inspect_dsr_usage(path)
        so = ort.SessionOptions()
        so.log_severity_level = 3  # errors only; we report what matters ourselves
        if self.options.threads:
            so.intra_op_num_threads = int(self.options.threads)
            so.inter_op_num_threads = 1
        level = str(self.options.optimization or "all")
        levels = {"all": "ORT_ENABLE_ALL", "extended": "ORT_ENABLE_EXTENDED", "basic": "ORT_ENABLE_BASIC",
                  "disabled": "ORT_DISABLE_ALL"}
        if level not in levels:
            raise UserError(f"onnxruntime: optimization must be one of {', '.join(levels)}, got {level!r}")
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, levels[level])
        self._register_custom_ops(so, usage)
        self.providers = self._providers(ort)
        try:
            self.session = ort.InferenceSession(str(path), sess_options=so, providers=self.providers)
        except Exception as exc:
            msg = first_line(exc)
            if usage["missing_fallback"] and self.library is None:
                raise UserError(f"onnxruntime: {path} uses dsr ops {', '.join(usage['missing_fallback'])} without a "
                                f"function fallback, and {self._no_library_reason()}") from None
            raise UserError(f"onnxruntime: cannot load {path}: {msg}") from None

    def _no_library_reason(self) -> str:
        """Why this session has no custom-op library, for a model that cannot run without it."""
        if self.dsr_ops == _OPS_OFF:  # asked for: onnxruntime:fallback, custom_ops=off
            return ("this run has the custom-op library switched off (the function-fallback variant, custom_ops=off); "
                    "run it with the library (backend onnxruntime or onnxruntime:custom)")
        if self.dsr_ops.endswith("not built)"):
            return f"{ORT_OPS_LIBRARY} is not built (run `dsr-deploy plugins build`)"
        return f"the custom-op library is not loaded: {self.dsr_ops}"

    def _register_custom_ops(self, so, usage: dict) -> None:
        mode = self.options.custom_ops
        mode = {True: "require", False: "off", None: "auto"}.get(mode, mode)
        if mode not in ("auto", "require", "off"):
            raise UserError(f"onnxruntime: custom_ops must be auto, require or off, got {mode!r}")
        if not usage["ops"]:
            self.dsr_ops = "none (the model has no dsr nodes)"
            return
        explicit = self.options.custom_ops_library
        lib = Path(explicit) if explicit else (find_ort_library() if mode != "off" else None)
        if mode == "off":
            self.dsr_ops = _OPS_OFF
            return
        if lib is None or not lib.is_file():
            if mode == "require" or explicit:
                raise UserError(f"onnxruntime: {explicit or ORT_OPS_LIBRARY} not found "
                                "(build it with `dsr-deploy plugins build`)")
            self.dsr_ops = f"function fallback ({ORT_OPS_LIBRARY} not built)"
            return
        try:
            so.register_custom_ops_library(str(lib))
        except Exception as exc:
            if mode == "require" or explicit:
                raise UserError(f"onnxruntime: cannot register {lib}: {first_line(exc)}") from None
            self.dsr_ops = f"function fallback ({lib} failed to register: {first_line(exc)})"
            return
        self.library = str(lib)
        self.dsr_ops = f"custom-op library {lib}"

    def _providers(self, ort) -> list:
        if self.device == "cpu":
            return ["CPUExecutionProvider"]
        if self.device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise UserError("onnxruntime: the CUDA execution provider is not available; install "
                                "onnxruntime-gpu with: pip install 'dsr-deploy[gpu]' (and run on a GPU machine)")
            device_id = int(self.device.split(":")[1]) if ":" in self.device else 0
            return [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
        raise UserError(f"onnxruntime: unknown device {self.device!r} (cpu or cuda[:N])")

    def release(self) -> None:
        self.session = None
        if getattr(self, "_neuron_set", None) is not None:
            self._neuron_set.close()
            self._neuron_set = None
        super().release()

    def neurons(self) -> list:
        """Each neuron call cut out of the file, in a session with this runner's options (custom ops or not)."""
        from .neurons import OnnxNeuronSet

        self.ensure_loaded()
        if getattr(self, "_neuron_set", None) is None:
            self._neuron_set = OnnxNeuronSet(Path(self.artifact), lambda p: type(self)(p, **self.options.as_dict()))
        return self._neuron_set.neurons()

    # -- description -----------------------------------------------------------------------------------
    def inputs(self) -> list[TensorSpec]:
        self.ensure_loaded()
        return [TensorSpec(i.name, tuple(i.shape), ORT_TYPES.get(i.type, i.type)) for i in self.session.get_inputs()]

    def outputs(self) -> list[TensorSpec]:
        self.ensure_loaded()
        return [TensorSpec(o.name, tuple(o.shape), ORT_TYPES.get(o.type, o.type))
                for o in self.session.get_outputs()]

    def describe(self) -> dict:
        d = {**super().describe(), "device": self.device, "dsr_ops": self.dsr_ops,
             "io_binding": bool(self.options.io_binding)}
        if self.session is not None:
            d["providers"] = self.session.get_providers()
        return d

    # -- inference -------------------------------------------------------------------------------------
    def _infer(self, feeds: dict[str, Any], copy_outputs: bool) -> dict[str, Any]:
        names = [o.name for o in self.session.get_outputs()]
        try:
            if self.options.io_binding:
                return self._infer_bound(feeds, names, copy_outputs)
            outs = self.session.run(names, {k: to_numpy(v) for k, v in feeds.items()})
        except UserError:
            raise
        except Exception as exc:  # ORT raises Fail / InvalidArgument / RuntimeException with pages of text
            shapes = ", ".join(f"{k}{list(v.shape)}" for k, v in feeds.items())
            raise UserError(f"onnxruntime: inference failed on {shapes}: {first_line(exc)}") from None
        return dict(zip(names, outs))

    def _infer_bound(self, feeds: Mapping[str, Any], names: list[str], copy_outputs: bool) -> dict[str, Any]:
        binding = self.session.io_binding()
        on_gpu = self.device.startswith("cuda")
        device_id = int(self.device.split(":")[1]) if ":" in self.device else 0
        keep = []  # host copies must outlive the run
        for name, x in feeds.items():
            if on_gpu and not isinstance(x, np.ndarray) and getattr(x, "is_cuda", False):
                x = x.contiguous()
                keep.append(x)
                binding.bind_input(name, "cuda", device_id, _np_dtype(x).type, list(x.shape), x.data_ptr())
            else:
                arr = np.ascontiguousarray(to_numpy(x))
                keep.append(arr)
                binding.bind_cpu_input(name, arr)
        for name in names:
            if on_gpu:
                binding.bind_output(name, "cuda", device_id)
            else:
                binding.bind_output(name)
        binding.synchronize_inputs()
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        if copy_outputs or not on_gpu:
            return dict(zip(names, binding.copy_outputs_to_cpu()))
        return dict(zip(names, binding.get_outputs()))  # OrtValues left on the GPU

    def synchronize(self) -> None:
        # run_with_iobinding + synchronize_outputs already waits; plain run() returns host arrays.
        pass


def _np_dtype(t) -> Any:
    return np.dtype(str(t.dtype).replace("torch.", ""))


def _has_dsr_nodes(path: Any) -> bool:
    from ..onnx_graph import has_dsr_nodes

    return has_dsr_nodes(path)


#: The two ways ONNX Runtime runs a model's dsr nodes: the model-local function bodies and the fused kernels of the
#: custom-op library ("ort" in dsr_deploy.plugins.LIBRARIES).
VARIANTS = (Variant("function fallback", {"custom_ops": "off"}),
            Variant("dsr custom-op library", {"custom_ops": "require"}, needs="ort"))

#: The backend's description (collected by :mod:`.registry`).
BACKEND = Backend("onnxruntime", OnnxRuntimeRunner, accepts, formats=("onnx",), extra="core", probe=probe, priority=5,
                  variants=VARIANTS, variants_apply=_has_dsr_nodes)
