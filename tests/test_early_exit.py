"""Early exit over time steps (issue 27): the per-step readout equals the readout of the prefix of the full run
bit for bit in every backend; per-sample exit with batch compaction gives each sample what it gets alone; the
exit rules, their manifest record (untrusted input) and the calibration on the shipped digits model.

The networks here compute exactly: weights, inputs and spike amplitudes are small multiples of 1/4, so every
product and sum is exact in float32 whatever order or kernel a backend uses; "equal to the full run" then
depends on no kernel choice (tests may not depend on the kernels a library picks)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _streaming_nets import SeqToANN
from torch import nn

from dsr_deploy import plugins
from dsr_deploy.contract import EXIT_PREDICTION, EXIT_READOUT, EXIT_STEPS, READOUT_STEPS
from dsr_deploy.early_exit import ExitRule, ExitTracker, Readout, calibrate, candidate_rules, simulate
from dsr_deploy.errors import UserError
from dsr_deploy.export import IOOptions, export_model
from dsr_deploy.io_adapter import IOAdapter, io_record
from dsr_deploy.neuron import DSRIFNode, DSRLIFNode
from dsr_deploy.runtime import load_runner

T, B, F, C = 6, 5, 8, 4


def exact_net(out: str = "if") -> nn.Module:
    """Linear -> IF -> Linear -> IF|LIF with weights in quarters (exact arithmetic)."""
    g = torch.Generator().manual_seed(4)
    l1, l2 = nn.Linear(F, 12, bias=False), nn.Linear(12, C, bias=False)
    with torch.no_grad():
        l1.weight.copy_(torch.randint(-4, 6, l1.weight.shape, generator=g).float() / 4)
        l2.weight.copy_(torch.randint(-3, 5, l2.weight.shape, generator=g).float() / 4)
    last = DSRIFNode(T=None, v_threshold=1.0, alpha=0.5) if out == "if" else \
        DSRLIFNode(T=None, v_threshold=0.5, tau=1.0, delta_t=0.05, alpha=0.5)
    return nn.Sequential(SeqToANN(l1), DSRIFNode(T=None, v_threshold=1.0, alpha=0.5), SeqToANN(l2), last).eval()


def exact_input(batch: int = B, seed: int = 0) -> np.ndarray:
    g = np.random.default_rng(seed)
    return (g.integers(0, 5, (T, batch, F)) / 4).astype(np.float32)


def readout_kind(out: str) -> str:
    return "mean" if out == "if" else "lif-rate"


def reference_prefixes(net: nn.Module, x: np.ndarray, kind: str) -> np.ndarray:
    """The full model's readout on the first t steps, for every t: the eager model exported with T=t."""
    rows = []
    for t in range(1, x.shape[0] + 1):
        with torch.no_grad():
            rows.append(IOAdapter(net, io_record(t, readout=kind))(torch.from_numpy(x[:t])).numpy())
    return np.stack(rows)


def ort_variants():
    out = [("onnxruntime", {"custom_ops": "off"})]
    why = plugins.missing_reason("ort")
    out.append(pytest.param("onnxruntime", {"custom_ops": "require"}, marks=pytest.mark.skipif(
        why is not None, reason=f"dsr ORT custom-op library not built here: {why}")))
    return out


BACKENDS = [("torchscript", {}), ("pt2", {})] + ort_variants()


@pytest.fixture(scope="module", params=["if", "lif"])
def exported(request, tmp_path_factory):
    """The exact net per output neuron: multi-step with --per-step-readout, spikes out, and streaming."""
    out = request.param
    net = exact_net(out)
    d = tmp_path_factory.mktemp(f"ee_{out}")
    io = IOOptions(readout=readout_kind(out), per_step_readout=True)
    export_model(net, (T, 2, F), d / "per_step", formats=("torchscript", "onnx", "pt2"), io=io)
    export_model(net, (T, 2, F), d / "spikes", formats=("onnx",))
    export_model(net, (T, 1, F), d / "stream", mode="streaming", formats=("torchscript", "onnx"))
    return out, net, d


def own_prefixes(d, net, out: str, x: np.ndarray, backend: str, opts: dict) -> np.ndarray:
    """The same backend's full model on the first t steps, for every t: ONNX Runtime runs an ONNX export with
    T=t (the LIF weighted rate is a float sum whose last bit is the backend's summation order); the torch
    backends run torch's ops, as the eager model does."""
    if backend != "onnxruntime":
        return reference_prefixes(net, x, readout_kind(out))
    rows = []
    for t in range(1, x.shape[0] + 1):
        folder = d / f"T{t}"
        if not folder.exists():
            export_model(net, (t, 2, F), folder, formats=("onnx",), io=IOOptions(readout=readout_kind(out)))
        with load_runner(folder, backend, **opts) as r:
            rows.append(r.infer({"input": x[:t]})["output"])
    return np.stack(rows)


@pytest.mark.parametrize("backend,opts", BACKENDS)
def test_per_step_readout_is_the_prefix_readout_bit_for_bit(exported, backend, opts):
    out, net, d = exported
    x = exact_input()
    want = own_prefixes(d, net, out, x, backend, opts)
    if out == "if":  # the IF rate is a count: exact, so every backend gives the eager model's bits
        np.testing.assert_array_equal(want, reference_prefixes(net, x, "mean"))
    assert len({tuple(np.round(w.ravel(), 6)) for w in want}) > 2  # the readout really changes over the steps
    manifest = json.loads((d / "per_step" / "manifest.json").read_text())
    assert manifest["io"]["per_step_readout"] is True and manifest["outputs"] == ["output", READOUT_STEPS]
    with load_runner(d / "per_step", backend, **opts) as r:
        got = r.infer({"input": x})
    assert got[READOUT_STEPS].shape == (T, B, C)
    np.testing.assert_array_equal(got[READOUT_STEPS], want)
    np.testing.assert_array_equal(got["output"], want[-1])  # the artifact's own logits: the last entry


@pytest.mark.parametrize("variant", ["streaming torchscript", "streaming onnx", "spikes-out onnx"])
def test_streaming_and_spike_outputs_give_the_prefix_readout_bit_for_bit(exported, variant):
    from dsr_deploy.runtime.early_exit import readouts_of

    out, net, d = exported
    x = exact_input()
    folder, backend = {"streaming torchscript": ("stream", "torchscript"), "streaming onnx": ("stream", "onnxruntime"),
                       "spikes-out onnx": ("spikes", "onnxruntime")}[variant]
    with load_runner(d / folder, backend) as r:
        got = readouts_of(r, x)
    np.testing.assert_array_equal(got, reference_prefixes(net, x, readout_kind(out)))


def test_stream_session_running_readout(exported):
    from dsr_deploy.runtime.stream import StreamSession

    out, net, d = exported
    x = exact_input()
    want = reference_prefixes(net, x, readout_kind(out))
    with load_runner(d / "stream", "onnxruntime") as r:
        s = StreamSession.from_manifest(r, d / "stream")
        for t in range(T):
            s.step(x[t])
            np.testing.assert_array_equal(s.readout(), want[t])


def _rule_with_spread(readouts: np.ndarray) -> ExitRule:
    """The rule under which the samples of this batch stop at the most different steps."""
    rule = max(candidate_rules(readouts, T), key=lambda r: len(set(simulate(readouts, r)[1].tolist())))
    assert len(set(simulate(readouts, rule)[1].tolist())) >= 3, "no rule spreads the exit steps of this batch"
    return rule


@pytest.mark.parametrize("backend", ["torchscript", "onnxruntime"])
def test_batch_exiting_at_different_steps_gives_each_sample_its_result_alone(exported, backend):
    out, net, d = exported
    x = exact_input(8, seed=4)
    want_readouts = reference_prefixes(net, x, readout_kind(out))
    rule = _rule_with_spread(want_readouts)
    with load_runner(d / "stream", backend) as r:
        batch = r.infer({"x_t": x}, early_exit=rule)
        alone = [r.infer({"x_t": x[:, i:i + 1]}, early_exit=rule) for i in range(x.shape[1])]
    assert len(set(batch[EXIT_STEPS].tolist())) >= 3
    for i, a in enumerate(alone):
        assert a[EXIT_STEPS][0] == batch[EXIT_STEPS][i] and a[EXIT_PREDICTION][0] == batch[EXIT_PREDICTION][i]
        np.testing.assert_array_equal(a[EXIT_READOUT][0], batch[EXIT_READOUT][i])
    # the streaming run that stops is what the per-step readouts of the full run say
    pred, steps, final = simulate(want_readouts, rule)
    np.testing.assert_array_equal(batch[EXIT_STEPS], steps)
    np.testing.assert_array_equal(batch[EXIT_PREDICTION], pred)
    np.testing.assert_array_equal(batch[EXIT_READOUT], final)
    # and a multi-step artifact reports the same steps (it ran all T, but says where each sample settles)
    with load_runner(d / "per_step", "onnxruntime", custom_ops="off") as r:
        multi = r.infer({"input": x}, early_exit=rule)
    np.testing.assert_array_equal(multi[EXIT_STEPS], steps)


# -- rules --------------------------------------------------------------------------------------------------

def test_rules_parse_and_decide():
    assert ExitRule.parse("max-prob>=0.9") == ExitRule("max-prob", 0.9)
    assert ExitRule.parse(" margin >= 0.25 ") == ExitRule("margin", 0.25)
    assert ExitRule.parse("stable=3") == ExitRule("stable", 3)
    assert ExitRule.parse("full").kind == "full"
    for bad in ("prob>0.9", "max-prob>=2", "margin>=-1", "stable=0", "margin>=nan", "", "stable=1.5"):
        with pytest.raises(UserError):
            ExitRule.parse(bad)
    r = np.array([[0.9, 0.1, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    assert ExitTracker(ExitRule("margin", 0.5), 3, 4).done(r, 1).tolist() == [True, False, False]
    assert ExitTracker(ExitRule("margin", 0.5), 3, 4).done(r, 4).tolist() == [True, True, True]  # at most T
    assert ExitTracker(ExitRule("max-prob", 0.4), 3, 4).done(r, 1).tolist() == [True, False, False]
    tr = ExitTracker(ExitRule("stable", 2), 3, 8)
    assert tr.done(r, 1).tolist() == [False, False, False]
    assert tr.done(r, 2).tolist() == [True, False, False]  # ties and empty readouts never count as settled
    assert ExitTracker(ExitRule("full", 0, max_steps=2), 3, 8).done(r, 2).all()


def test_simulate_and_calibrate_pick_the_cheapest_rule_within_the_bound():
    # sample 0 settles at step 1, sample 1 flips at step 3, sample 2 is never right
    ro = np.zeros((4, 3, 2), dtype=np.float32)
    ro[:, 0] = [1, 0]
    ro[:2, 1], ro[2:, 1] = [1, 0], [0, 1]
    ro[:, 2] = [0.5, 0.25]
    labels = np.array([0, 1, 1])
    pred, steps, _ = simulate(ro, ExitRule("stable", 2))
    assert steps.tolist() == [2, 2, 2] and pred.tolist() == [0, 0, 0]
    res = calibrate(ro, labels, max_drop=0.0)
    best = res["chosen"]
    assert res["full_accuracy"] == pytest.approx(2 / 3) and best.accuracy == pytest.approx(2 / 3)
    assert best.mean_steps < 4
    assert all(p.mean_steps >= best.mean_steps for p in res["points"] if p.accuracy >= best.accuracy)
    loose = calibrate(ro, labels, max_drop=40.0)["chosen"]
    assert loose.mean_steps == 1.0  # 33 points may go: every sample stops at once


def test_manifest_early_exit_record_is_validated(tmp_path):
    from dsr_deploy.manifest import parse_manifest

    base = {"schema": 1, "artifacts": [{"format": "onnx", "path": "m.onnx"}]}
    ok = parse_manifest({**base, "early_exit": {"rule": "margin", "threshold": 0.25, "max_steps": 8,
                                                "readout": {"kind": "mean"}}})
    assert ExitRule.from_record(ok["early_exit"]) == ExitRule("margin", 0.25, 8)
    for bad in ({"rule": "guess", "threshold": 1}, {"rule": "margin", "threshold": -1},
                {"rule": "margin", "threshold": float("inf")}, {"rule": "margin", "threshold": 0.1, "max_steps": 0},
                {"rule": "margin"}, {"rule": "margin", "threshold": 0.1, "readout": {"kind": "softmax"}},
                {"rule": "max-prob", "threshold": 0.5, "calibration": {"accuracy": 7}}):
        with pytest.raises(UserError, match="early_exit"):
            parse_manifest({**base, "early_exit": bad})
    with pytest.raises(UserError):  # the schema lets max-prob 3 through; the rule does not
        ExitRule.from_record({"rule": "max-prob", "threshold": 3})


def test_per_step_readout_needs_a_readout():
    with pytest.raises(UserError, match="--readout"):
        io_record(T, per_step_readout=True)
    assert Readout("mean").prefixes(np.ones((3, 1, 2), np.float32)).shape == (3, 1, 2)


def test_served_stream_early_exit_matches_the_local_run_and_ends_the_sequence(exported):
    """The client helper (dsr-deploy serve / the Triton repository) against a server stand-in that keeps the
    membranes per sequence as Triton does: the same prediction, steps and readout as the local run, and the
    sequence is ended at the exit step."""
    from dsr_deploy.runtime.stream import StreamSession
    from dsr_deploy.serving.early_exit import stream_early_exit

    out, net, d = exported
    x = exact_input(8, seed=4)
    with load_runner(d / "stream", "onnxruntime") as r:
        readout = Readout(readout_kind(out))
        rule = _rule_with_spread(reference_prefixes(net, x, readout_kind(out)))
        local = StreamSession.from_manifest(r, d / "stream").run_early_exit(x, rule)
        for i in range(x.shape[1]):
            server = StreamSession.from_manifest(r, d / "stream")
            calls = []

            def step(x_t, end, server=server, calls=calls):
                calls.append(end)
                y = server.step(x_t)
                if end:
                    server.reset()
                return y
            got = stream_early_exit(step, x[:, i:i + 1], rule, readout)
            assert got[EXIT_STEPS][0] == local[EXIT_STEPS][i] and got[EXIT_PREDICTION][0] == local[EXIT_PREDICTION][i]
            np.testing.assert_array_equal(got[EXIT_READOUT][0], local[EXIT_READOUT][i])
            assert calls[-1] is True and calls.count(True) == 1  # ended exactly once, at the end
            assert len(calls) == got[EXIT_STEPS][0] + (got[EXIT_STEPS][0] < T)  # + the release request


def test_early_exit_record_is_validated_without_the_early_exit_code():
    """A reader that never imports the early-exit code (triton-repo, inspect, serve) still refuses a bad record."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from dsr_deploy.errors import UserError\n"
            "from dsr_deploy.manifest import parse_manifest\n"
            "base = {'schema': 1, 'artifacts': [{'format': 'onnx', 'path': 'm.onnx'}]}\n"
            "assert 'dsr_deploy.early_exit' not in sys.modules\n"
            "try:\n"
            "    parse_manifest({**base, 'early_exit': {'rule': 'margin', 'threshold': float('nan')}})\n"
            "except UserError as e:\n"
            "    print('refused:', e)\n"
            "assert 'dsr_deploy.early_exit' not in sys.modules\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("refused:") and "early_exit" in out.stdout
