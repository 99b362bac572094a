"""Function bodies never share a name with the graph that calls them (onnx-tensorrt before 10.8 resolved a
function's inner names against the outer graph: a step function's formal ``x_t`` beside the graph input ``x_t``
made every step node read the graph input). Checked for every export mode and lowering."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from export_nets import NEURON_SHAPE, exported

from dsr_deploy.export import onnx_functions as OF


def _assert_scoped(model: onnx.ModelProto) -> None:
    outer = OF.graph_value_names(model.graph)
    assert model.functions, "expected function fallbacks"
    for fn in model.functions:
        inner = OF.function_formals(fn)
        assert not inner & outer, f"{fn.name}: {sorted(inner & outer)} are also graph names"
        assert set(fn.input) | set(fn.output) <= inner


@pytest.mark.parametrize("options", [{}, {"function_body": "unrolled"}], ids=["scan", "unrolled"])
def test_multistep_function_names_are_scoped(options):
    model = onnx.load(str(exported("ours_neuron_net", NEURON_SHAPE, formats=("onnx",), **options) / "model.onnx"))
    _assert_scoped(model)


def test_portable_lowering_has_no_function_and_unique_names():
    model = onnx.load(str(exported("ours_neuron_net", NEURON_SHAPE, formats=("onnx",), lowering="portable")
                          / "model.onnx"))
    assert not model.functions
    produced = [o for n in model.graph.node for o in n.output if o]
    assert len(produced) == len(set(produced))


def test_streaming_step_functions_are_scoped_and_still_run(tmp_path):
    import onnxruntime as ort

    from dsr_deploy.export import streaming as S
    from dsr_deploy.neuron import DSRIFNode, DSRLIFNode

    # Neurons only (no conv whose last bits depend on the library): the step must match bit for bit.
    net = torch.nn.Sequential(DSRIFNode(T=None, v_threshold=1.0, alpha=0.5),
                              DSRLIFNode(T=None, v_threshold=0.3, tau=1.0, delta_t=0.05, alpha=0.3)).eval()
    x = torch.randn(3, 2, 6) * 2
    sm = S.build_streaming_module(net, x[0], lowering="ops")
    path = S.export_onnx(sm, x[0], tmp_path / "step.onnx")
    model = onnx.load(str(path))
    assert {"x_t", "v_in_0"} <= {i.name for i in model.graph.input}
    _assert_scoped(model)
    # The stock runtime inlines the renamed bodies: one step still matches the eager module.
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    states = sm.zero_states(2)
    feeds = {"x_t": x[0].numpy(), **{f"v_in_{i}": s.numpy() for i, s in enumerate(states)}}
    got = sess.run(None, feeds)
    with torch.no_grad():
        want = sm(x[0], *states)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w.numpy())


def test_prefix_grows_past_any_graph_name():
    g = onnx.helper.make_graph([onnx.helper.make_node("Relu", [OF.SCOPE_PREFIX + "x"], ["_" + OF.SCOPE_PREFIX])],
                               "g", [], [])
    prefix = OF.scope_prefix(g)
    assert prefix.endswith(OF.SCOPE_PREFIX) and not any(
        n.startswith(prefix) for n in OF.graph_value_names(g))
