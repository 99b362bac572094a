"""Early exit on a SpikingJelly streaming export with hard-reset layers: every membrane starts at its layer's
v_reset (the manifest's ``states[i].initial_value``), in each of the three paths that step a stream (the runner's
``infer(..., early_exit=rule)``, ``StreamSession.run_early_exit`` and ``readouts_of``, which ``exit-calibrate``
calibrates on), so the exits are those SpikingJelly's own multi-step forward gives. The same run with membranes
started at 0 exits differently, so these tests fail if any path starts a hard-reset layer at 0.

Exact arithmetic as in tests/test_early_exit.py: weights and inputs are multiples of 1/4, v_reset and thresholds
too, LIF's tau is 2: every value is a short dyadic fraction and every backend computes it exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dsr_deploy.contract import EXIT_PREDICTION, EXIT_READOUT, EXIT_STEPS
from dsr_deploy.early_exit import ExitRule, Readout, calibrate, candidate_rules, run_streaming, simulate
from dsr_deploy.export import export_model
from dsr_deploy.runtime import load_runner
from dsr_deploy.runtime.early_exit import readouts_of
from dsr_deploy.runtime.stream import StreamSession

sj_neuron = pytest.importorskip("spikingjelly.activation_based.neuron", reason="SpikingJelly 2.0 (the test oracle)")
from spikingjelly.activation_based import functional as sjf  # noqa: E402
from spikingjelly.activation_based import layer  # noqa: E402

T, B, F, C = 6, 8, 8, 4
V_RESET = (0.5, 0.25)  # hard resets away from 0: a membrane started at 0 fires later


def sj_net() -> torch.nn.Module:
    g = torch.Generator().manual_seed(4)
    l1, l2 = layer.Linear(F, 12, bias=False), layer.Linear(12, C, bias=False)
    with torch.no_grad():
        l1.weight.copy_(torch.randint(-3, 6, l1.weight.shape, generator=g).float() / 4)
        l2.weight.copy_(torch.randint(-2, 5, l2.weight.shape, generator=g).float() / 4)
    net = torch.nn.Sequential(l1, sj_neuron.IFNode(v_threshold=1.0, v_reset=V_RESET[0]), l2,
                              sj_neuron.LIFNode(tau=2.0, v_threshold=1.0, v_reset=V_RESET[1], decay_input=True))
    sjf.set_step_mode(net, "m")
    return net.eval()


def sj_input(seed: int = 4) -> np.ndarray:
    return (np.random.default_rng(seed).integers(0, 5, (T, B, F)) / 4).astype(np.float32)


def sj_readouts(net: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """SpikingJelly's own multi-step forward, read as the export reads it (mean rate) after every step."""
    with torch.no_grad():
        sjf.reset_net(net)
        spikes = net(torch.from_numpy(x)).numpy()
    return Readout("mean").prefixes(spikes)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    net = sj_net()
    d = tmp_path_factory.mktemp("sj_ee") / "stream"
    export_model(net, (T, 1, F), d, mode="streaming", formats=("torchscript", "onnx"))
    return net, d


def _spread_rule(readouts: np.ndarray) -> ExitRule:
    rule = max(candidate_rules(readouts, T), key=lambda r: len(set(simulate(readouts, r)[1].tolist())))
    assert len(set(simulate(readouts, rule)[1].tolist())) >= 2, "no rule spreads the exit steps of this batch"
    return rule


def _zero_start(runner, d, x: np.ndarray, rule: ExitRule) -> dict:
    """The same stream with every membrane started at 0 (what a path ignoring the manifest would do)."""
    states = json.loads((d / "manifest.json").read_text())["states"]
    return run_streaming(runner.infer, x, rule, Readout("mean"), [s["shape"] for s in states])


def test_manifest_starts_hard_reset_membranes_at_v_reset(exported):
    _net, d = exported
    states = json.loads((d / "manifest.json").read_text())["states"]
    assert [(s["initial"], s["initial_value"]) for s in states] == [("fill", v) for v in V_RESET]


@pytest.mark.parametrize("backend", ["torchscript", "onnxruntime"])
def test_early_exit_on_sj_hard_reset_stream_is_sj_own_forward(exported, backend):
    net, d = exported
    x = sj_input()
    want_readouts = sj_readouts(net, x)
    rule = _spread_rule(want_readouts)
    pred, steps, final = simulate(want_readouts, rule)
    with load_runner(d, backend) as r:
        # the stream run without exit is SpikingJelly's multi-step forward, step by step (the calibration input)
        np.testing.assert_array_equal(readouts_of(r, x), want_readouts)
        got = {"runner": r.infer({"x_t": x}, early_exit=rule),
               "session": StreamSession.from_manifest(r, d).run_early_exit(x, rule)}
        zero = _zero_start(r, d, x, rule)
    for path, res in got.items():
        np.testing.assert_array_equal(res[EXIT_STEPS], steps, err_msg=path)
        np.testing.assert_array_equal(res[EXIT_PREDICTION], pred, err_msg=path)
        np.testing.assert_array_equal(res[EXIT_READOUT], final, err_msg=path)
    # started at 0 the same stream exits elsewhere: the checks above tell the two apart
    assert not (np.array_equal(zero[EXIT_STEPS], steps) and np.array_equal(zero[EXIT_READOUT], final))


def test_calibration_on_sj_stream_uses_the_v_reset_start(exported):
    """exit-calibrate's readouts (readouts_of) and so its chosen rule are those of SpikingJelly's forward."""
    net, d = exported
    x = sj_input(seed=9)
    labels = np.argmax(sj_readouts(net, x)[-1], axis=1)
    with load_runner(d, "onnxruntime") as r:
        got = readouts_of(r, x)
        zero = StreamSession(r, [s["shape"] for s in json.loads((d / "manifest.json").read_text())["states"]])
        zero_readouts = Readout("mean").prefixes(zero.run(x).reshape(T, B, -1))
    np.testing.assert_array_equal(got, sj_readouts(net, x))
    assert not np.array_equal(zero_readouts, got)
    assert calibrate(got, labels, 0.5) == calibrate(sj_readouts(net, x), labels, 0.5)


def test_triton_repository_refuses_a_stream_starting_at_nonzero_v_reset(exported, tmp_path):
    """Triton's sequence batcher starts every membrane at zeros: a repository of this stream would run it from the
    wrong state, so triton-repo refuses it in one line and writes nothing."""
    from dsr_deploy.errors import UserError
    from dsr_deploy.serving.triton_repo import write_repository

    _net, d = exported
    with pytest.raises(UserError, match=r"SJIFStep\) starts its membrane at v_reset=0.5.*from zeros"):
        write_repository([d], tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_serving_refuses_a_stream_starting_at_nonzero_v_reset(exported):
    """serve's sequence store starts streams at zeros too: the folder is refused in one line naming the layer."""
    from dsr_deploy.errors import UserError
    from dsr_deploy.serving.served_model import prepare_model

    _net, d = exported
    with pytest.raises(UserError, match=r"layer 1 starts its stream at a nonzero membrane"):
        prepare_model(d, "onnxruntime")
