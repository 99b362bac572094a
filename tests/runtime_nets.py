"""Small networks and artifacts for the runtime / bench tests, made here so the tests do not depend on the
exporter: TorchScript (scripting :mod:`dsr_deploy.functional` itself), torch.export (``dsr::`` ops), ONNX
(the recurrence traced and unrolled, or a hand-built model with ``dsr`` custom nodes plus model-local function
fallbacks written with Scan, the layout the exporter uses).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dsr_deploy import functional as F
from dsr_deploy import ops  # noqa: F401  (registers torch.ops.dsr)

IF_PARAMS = dict(v_threshold=1.0, alpha=0.5)
LIF_PARAMS = dict(v_threshold=0.3, alpha=0.3, tau=1.0, delta_t=0.05)


class _Lowering(nn.Module):
    """``lowering``: "functional" (the Python recurrence; scripted or traced) or "op" (torch.ops.dsr)."""

    def if_(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting() or self.lowering == "functional":
            return F.if_forward(x, 1.0, 0.5)[0]
        return torch.ops.dsr.if_spike(x, 1.0, 0.5)[0]

    def lif(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting() or self.lowering == "functional":
            return F.lif_forward(x, 0.3, 0.3, 1.0, 0.05)[0]
        return torch.ops.dsr.lif_spike(x, 0.3, 0.3, 1.0, 0.05)[0]


class NeuronNet(_Lowering):
    """Neurons and elementwise ops only: every backend must be bit-exact with eager torch."""

    def __init__(self, lowering: str = "op"):
        super().__init__()
        self.lowering = lowering

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        s1 = self.if_(input * 1.5 + 0.25)
        s2 = self.lif(s1 + input)
        return s2 - s1 * 0.5


class ConvNet(_Lowering):
    """Conv -> BN -> IF -> conv -> LIF -> pool -> linear -> IF: last spikes ``[T, B, 10]``."""

    def __init__(self, lowering: str = "op"):
        super().__init__()
        self.lowering = lowering
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 10)
        with torch.no_grad():
            self.bn1.running_mean.uniform_(-0.1, 0.1)
            self.bn1.running_var.uniform_(0.5, 1.5)
        self.eval()

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        t, b = input.shape[0], input.shape[1]
        h = self.bn1(self.conv1(input.flatten(0, 1))) * 4.0
        s = self.if_(h.reshape([t, b] + list(h.shape[1:])))
        h = self.conv2(s.flatten(0, 1)) * 0.1
        s = self.lif(h.reshape([t, b] + list(h.shape[1:])))
        h = nn.functional.avg_pool2d(s.flatten(0, 1), 2).flatten(1)
        h = self.fc(h) * 8.0
        return self.if_(h.reshape([t, b, 10]))


def quiet():
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*TorchScript.*")


def save_torchscript(model: nn.Module, path: Path) -> Path:
    quiet()
    torch.jit.script(model).save(str(path))
    return path


def save_pt2(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    T, B = torch.export.Dim("T", min=2), torch.export.Dim("B", min=1)
    ep = torch.export.export(model, (example,), dynamic_shapes={"input": {0: T, 1: B}})
    torch.export.save(ep, str(path))
    return path


def save_onnx_unrolled(model: nn.Module, example: torch.Tensor, path: Path, dynamic_batch: bool = True) -> Path:
    """The Python recurrence traced by the TorchScript-based ONNX exporter: T is fixed, the batch dynamic."""
    model.lowering = "functional"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarning on the threshold constants: they are constants
            torch.onnx.export(model, (example,), str(path), input_names=["input"], output_names=["output"],
                              dynamo=False, opset_version=17,
                              dynamic_axes={"input": {1: "B"}, "output": {1: "B"}} if dynamic_batch else None)
    finally:
        model.lowering = "op"
    return path


def save_onnx_dsr_nodes(path: Path, shape_tail=(3,)) -> Path:
    """x -> DSRIFSpike -> Add(x) -> DSRLIFSpike -> output, custom ``dsr`` nodes + Scan function fallbacks.

    Equivalent to :func:`neuron_chain_reference`. T and B are dynamic.
    """
    import onnx
    from onnx import TensorProto, helper

    beta, gain = F.lif_coefficients(LIF_PARAMS["tau"], LIF_PARAMS["delta_t"])
    dims = ["T", "B", *shape_tail]
    graph = helper.make_graph(
        [
            helper.make_node("DSRIFSpike", ["input"], ["s1"], domain="dsr", plugin_namespace="dsr",
                             plugin_version="1", **IF_PARAMS),
            helper.make_node("Add", ["s1", "input"], ["h"]),
            helper.make_node("DSRLIFSpike", ["h"], ["output"], domain="dsr", plugin_namespace="dsr",
                             plugin_version="1", decay=float(np.float32(beta)), gain=float(np.float32(gain)),
                             **LIF_PARAMS),
        ],
        "dsr_chain",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, dims)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("dsr", 1)],
                              functions=[_if_function(), _lif_function()])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _attr_const(out: str, attr: str):
    from onnx import AttributeProto, helper

    node = helper.make_node("Constant", [], [out])
    a = helper.make_attribute("value_float", 0.0)
    a.ref_attr_name = attr
    a.type = AttributeProto.FLOAT
    node.attribute.append(a)
    return node


def _scan_function(name: str, attrs: list[str], pre: list, step: list, outputs_div_dt: bool):
    from onnx import TensorProto, helper

    body = helper.make_graph(
        step,
        f"{name}_step",
        [helper.make_tensor_value_info("v", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("x_t", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("y_t", TensorProto.FLOAT, None)],
    )
    nodes = pre + [
        helper.make_node("Shape", ["x"], ["step_shape"], start=1),
        helper.make_node("ConstantOfShape", ["step_shape"], ["v0"],
                         value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])),
        helper.make_node("Scan", ["v0", "x"], ["v_final", "y"], num_scan_inputs=1, body=body),
    ]
    return helper.make_function("dsr", name, ["x"], ["y"], nodes,
                                [helper.make_opsetid("", 17)], attributes=attrs)


def _if_function():
    from onnx import helper

    pre = [_attr_const("vth", "v_threshold"), _attr_const("alpha", "alpha"),
           helper.make_node("Mul", ["alpha", "vth"], ["thr"]), _zero("zero")]
    step = [helper.make_node("Add", ["v", "x_t"], ["v1"]),
            helper.make_node("GreaterOrEqual", ["v1", "thr"], ["fire"]),
            helper.make_node("Where", ["fire", "vth", "zero"], ["y_t"]),
            helper.make_node("Sub", ["v1", "y_t"], ["v_out"])]
    return _scan_function("DSRIFSpike", ["v_threshold", "alpha"], pre, step, False)


def _lif_function():
    from onnx import helper

    pre = [_attr_const("vth", "v_threshold"), _attr_const("alpha", "alpha"), _attr_const("dt", "delta_t"),
           _attr_const("decay", "decay"), _attr_const("gain", "gain"),
           helper.make_node("Mul", ["alpha", "vth"], ["thr"]), _zero("zero")]
    step = [helper.make_node("Mul", ["decay", "v"], ["dv"]),
            helper.make_node("Mul", ["gain", "x_t"], ["gx"]),
            helper.make_node("Add", ["dv", "gx"], ["v1"]),
            helper.make_node("GreaterOrEqual", ["v1", "thr"], ["fire"]),
            helper.make_node("Where", ["fire", "vth", "zero"], ["s"]),
            helper.make_node("Sub", ["v1", "s"], ["v_out"]),
            helper.make_node("Div", ["s", "dt"], ["y_t"])]
    return _scan_function("DSRLIFSpike", ["v_threshold", "alpha", "tau", "delta_t", "decay", "gain"], pre, step,
                          True)


def _zero(name: str):
    from onnx import TensorProto, helper

    return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, TensorProto.FLOAT, [], [0.0]))


class NeuronChain(nn.Module):
    """Eager twin of :func:`save_onnx_dsr_nodes`."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        s1 = F.if_forward(input, **IF_PARAMS)[0]
        return F.lif_forward(s1 + input, **LIF_PARAMS)[0]


def spiky_input(shape, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    """Inputs that make neurons fire often, with values on a coarse grid and near-threshold values."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.3, 1.0, size=shape).astype(np.float32) * np.float32(scale)
    x.flat[::7] = np.float32(0.5)  # exactly alpha*vth for the IF layer: tests the >= comparison
    return x
