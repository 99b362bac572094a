"""An artifact's own neurons, run alone: what ``verify``'s teacher-forced check feeds.

``Runner.neurons()`` returns one :class:`ArtifactNeuron` per neuron the loaded artifact holds, with the parameters
as the artifact holds them and a ``run(x)`` that executes that neuron *in the same backend, with the same
options* as the artifact (ONNX Runtime with or without the dsr custom-op library, TensorRT, the TorchScript
interpreter, the exported program's op call). Nothing is re-derived from the PyTorch model, so a neuron whose
parameters or arithmetic differ from the reference shows up even when the network's output hides it.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np


@dataclass
class ArtifactNeuron:
    layer: Optional[int]  # the layer index the artifact records (None: unknown, matched by call order)
    call: Optional[int]  # for a call site (an ONNX node, an op call of a program): its position among the calls of
    #                      its layer; None for a module that serves every call of its layer
    where: str  # where it sits in the artifact (node name, module path)
    params: Dict[str, Any] = field(default_factory=dict)
    # x -> spikes; or x -> (spikes, the input the neuron really integrated) for a neuron that quantises its input
    # (an int8 quantised op): the reference neuron is then fed that input
    run: Callable[[np.ndarray], Any] = None  # type: ignore[assignment]
    time_major: bool = True  # takes [T, B, ...], as the dsr ops and nodes do (False: a module that takes what the
    #                          training neuron took, e.g. the authors' [T*B, ...])


class OnnxNeuronSet:
    """Every neuron call of an ONNX file, each cut out (:mod:`dsr_deploy.export.onnx_neurons`) and run by a fresh
    runner of ``factory`` (the same backend class and options as the artifact's runner)."""

    def __init__(self, path: Path, factory: Callable[[Path], Any]):
        import onnx

        from ..export.onnx_neurons import neuron_sites

        self.model = onnx.load(str(path))
        self.sites = neuron_sites(self.model)
        self.factory = factory
        self.tmp = Path(tempfile.mkdtemp(prefix="dsr-neurons-"))
        self.runners: List[Any] = []
        g = self.model.graph
        self.elem_type = g.input[0].type.tensor_type.elem_type if g.input else onnx.TensorProto.FLOAT

    def neurons(self) -> List[ArtifactNeuron]:
        seen: Dict[int, int] = {}
        out = []
        for site in self.sites:
            j = seen.get(site.layer, 0)
            seen[site.layer] = j + 1
            out.append(ArtifactNeuron(site.layer, j, site.node or f"tensors {site.input} -> {site.output}",
                                      dict(site.attributes), self._runner_for(site)))
        return out

    def _runner_for(self, site):
        cache: Dict[int, Any] = {}

        def run(x: np.ndarray):
            import onnx

            from ..export import onnx_neurons as N

            if x.ndim not in cache:
                sub = (N.quantized_neuron_submodel(self.model, site, rank=x.ndim) if site.quantized
                       else N.neuron_submodel(self.model, site, self.elem_type, rank=x.ndim))
                path = self.tmp / f"neuron_{site.call}_r{x.ndim}.onnx"
                onnx.save(sub, str(path))
                runner = self.factory(path)
                runner.load()
                self.runners.append(runner)
                cache[x.ndim] = runner
            if site.quantized:  # (spikes, the current the op integrated): the reference is fed that current
                out = cache[x.ndim].infer({N.QUANTIZED_INPUT: x})
                return np.asarray(out[N.QUANTIZED_OUTPUT]), np.asarray(out[N.QUANTIZED_SEEN])
            return np.asarray(cache[x.ndim].infer({site.input: x})[site.output])

        return run

    def close(self) -> None:
        for r in self.runners:
            try:
                r.release()
            except Exception:
                pass
        self.runners = []
        shutil.rmtree(self.tmp, ignore_errors=True)


INFERENCE_NEURON_CLASSES = ("IFSpike", "LIFSpike", "IFSpikeScript", "LIFSpikeScript", "SJSpike", "SJSpikeScript")


def torch_module_neurons(named_modules, kinds=INFERENCE_NEURON_CLASSES, device: str = "cpu",
                         layers: Optional[Dict[str, int]] = None) -> List[ArtifactNeuron]:
    """The neuron modules among ``named_modules`` (``(name, module)`` pairs of an eager or TorchScript module
    tree) whose class name is in ``kinds`` (None: every one), each run on its own. A module serves every call of
    its layer; its layer is its ``index`` attribute, else ``layers[name]``."""
    import torch

    out = []
    for name, m in named_modules:
        cls = getattr(m, "original_name", None) or type(m).__name__
        if kinds is not None and cls not in kinds:
            continue
        layer = getattr(m, "index", None)
        if not isinstance(layer, int):
            layer = (layers or {}).get(name)
        params = {k: getattr(m, k) for k in ("v_threshold", "alpha", "tau", "delta_t", "decay", "gain", "lif_rule")
                  if hasattr(m, k) and isinstance(getattr(m, k), (int, float, str))}

        def run(x: np.ndarray, m=m) -> np.ndarray:
            with torch.inference_mode():
                y = m(torch.from_numpy(np.ascontiguousarray(x)).to(device))
            y = y[0] if isinstance(y, (tuple, list)) else y
            return y.detach().cpu().numpy()

        # A module takes what the training neuron took ([T*B, ...] for the authors' flat layers).
        out.append(ArtifactNeuron(int(layer) if layer is not None else None, None, name or "<root>", params, run,
                                  time_major=False))
    return out


def program_neurons(graph, device: str = "cpu") -> List[ArtifactNeuron]:
    """The ``dsr::*`` op calls of a torch.fx graph (an exported program), in program order, each called with the
    arguments the program holds and the given input. The layer is read from the call's module stack."""
    import torch

    out = []
    seen: Dict[Any, int] = {}
    for node in graph.nodes:
        if node.op != "call_function" or not str(node.target).startswith("dsr."):
            continue
        stack = node.meta.get("nn_module_stack") or {}
        path = list(stack.values())[-1][0] if stack else ""
        consts = list(node.args[1:])
        kwargs = dict(node.kwargs)
        key = path or len(out)
        j = seen.get(key, 0)
        seen[key] = j + 1

        def run(x: np.ndarray, target=node.target, consts=consts, kwargs=kwargs) -> np.ndarray:
            with torch.inference_mode():
                y = target(torch.from_numpy(np.ascontiguousarray(x)).to(device), *consts, **kwargs)
            y = y[0] if isinstance(y, (tuple, list)) else y
            return y.detach().cpu().numpy()

        names = ("v_threshold", "alpha", "tau", "delta_t")
        params = {n: v for n, v in zip(names, consts) if isinstance(v, (int, float, str))}
        params["op"] = str(node.target)
        out.append(ArtifactNeuron(None, j, path or node.name, params, run))
        out[-1].params["module_path"] = path
    return out


def aoti_neurons(path: Path, device: str = "cpu") -> List[ArtifactNeuron]:
    """The ``dsr::*`` calls an AOTInductor package makes: its compiled code calls custom ops through the proxy
    executor, which reads each call's constant arguments from the package's extern-kernel record
    (``*.wrapper.json``). Each call is made alone with those arguments, in program order."""
    import json
    import zipfile

    import torch

    calls = []
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            if not name.endswith(".json") or z.getinfo(name).file_size > 16 << 20:
                continue
            try:
                doc = json.loads(z.read(name))
            except ValueError:
                continue
            if isinstance(doc, dict) and isinstance(doc.get("nodes"), list):
                calls += [n.get("node") or {} for n in doc["nodes"]]
    out = []
    for k, node in enumerate(c for c in calls if str(c.get("target", "")).startswith("dsr::")):
        op = str(node["target"]).split("::", 1)[1]
        kwargs: Dict[str, Any] = {}
        for inp in (node.get("inputs") or [])[1:]:
            arg = inp.get("arg") or {}
            kind, value = next(iter(arg.items())) if arg else ("as_none", None)
            if kind not in ("as_float", "as_int", "as_bool", "as_none", "as_string"):
                raise ValueError(f"AOTInductor package: dsr::{op} argument {inp.get('name')} is a {kind}")
            kwargs[str(inp["name"])] = None if kind == "as_none" else value
        fn = getattr(torch.ops.dsr, op)

        def run(x: np.ndarray, fn=fn, kwargs=kwargs) -> np.ndarray:
            with torch.inference_mode():
                y = fn(torch.from_numpy(np.ascontiguousarray(x)).to(device), **kwargs)
            y = y[0] if isinstance(y, (tuple, list)) else y
            return y.detach().cpu().numpy()

        params = {n: v for n, v in kwargs.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
        out.append(ArtifactNeuron(None, None, f"dsr::{op} call {k}", {**params, "op": f"dsr::{op}"}, run))
    return out
