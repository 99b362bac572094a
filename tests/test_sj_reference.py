"""SpikingJelly's IF / LIF / ParametricLIF: dsr_deploy.functional.sj_forward bit for bit against SJ 2.0's torch
reference (spikingjelly/_ops/{if_,lif,plif}/reference.py), every family x reset x decay_input x dtype, with random
parameters and inputs that land exactly on the threshold."""

from __future__ import annotations

import itertools

import pytest
import torch

from dsr_deploy import functional as F
from dsr_deploy.neuron_spec import NeuronSpec

ref_if = pytest.importorskip("spikingjelly._ops.if_.reference", reason="SpikingJelly 2.0 (the test oracle)")
ref_lif = pytest.importorskip("spikingjelly._ops.lif.reference")
ref_plif = pytest.importorskip("spikingjelly._ops.plif.reference")


def heaviside(x):
    return (x >= 0).to(x.dtype)


def sj_reference(family, x, v_threshold, v_reset, tau, w, decay_input):
    """SJ's own reference multi_step: spikes and final membrane (membrane initialised as SJ does: v_reset or 0)."""
    v0 = torch.full(x.shape[1:], 0.0 if v_reset is None else v_reset, dtype=x.dtype)
    if family == "if":
        s, v, _ = ref_if.multi_step(x, v0, v_threshold, v_reset, heaviside, True)
    elif family == "lif":
        s, v, _ = ref_lif.multi_step(x, v0, tau, decay_input, v_threshold, v_reset, heaviside, True)
    else:
        s, v, _ = ref_plif.multi_step(x, v0, w, decay_input, v_threshold, v_reset, heaviside, True)
    return s, v


def inputs(gen, dtype, v_threshold, scale=1.0, T=12, shape=(3, 17)):
    x = (torch.randn((T, *shape), generator=gen, dtype=torch.float64) * v_threshold * scale).to(dtype)
    # IF with a zero start: the first step's h is x itself, so inputs equal to the threshold fire exactly there
    x[0, 0, :5] = v_threshold
    x[:, 1, :4] = v_threshold / 2
    return x


CASES = list(itertools.product(("if", "lif", "plif"), ("soft", "hard"), (True, False),
                               (torch.float32, torch.float64)))


@pytest.mark.parametrize("family,reset,decay_input,dtype", [c for c in CASES if not (c[0] == "if" and not c[2])])
def test_sj_forward_matches_spikingjelly_reference(family, reset, decay_input, dtype):
    gen = torch.Generator().manual_seed(hash((family, reset, decay_input, str(dtype))) % 2**31)
    for trial in range(6):
        vth = float(torch.empty(()).uniform_(0.2, 2.0, generator=gen))
        v_reset = None if reset == "soft" else float(torch.empty(()).uniform_(-0.5, 0.3, generator=gen))
        tau = float(torch.empty(()).uniform_(1.1, 8.0, generator=gen))
        w = torch.nn.Parameter(torch.empty(()).uniform_(-3.0, 3.0, generator=gen))  # float32, as SJ's parameter
        k = float(w.detach().float().sigmoid())
        # a decayed input is divided by tau (multiplied by k): scale it so that neurons fire
        x = inputs(gen, dtype, vth, {"if": 1.0, "lif": tau, "plif": 1 / k}[family] if decay_input else 1.0)
        s_ref, v_ref = sj_reference(family, x, vth, v_reset, tau, w.detach(), decay_input)
        leak = tau if family == "lif" else k
        s, v = F.sj_forward(x, family, vth, v_reset, leak, decay_input, None, True)
        assert s.dtype == dtype
        assert torch.equal(s, s_ref), f"trial {trial}: spikes differ"
        assert torch.equal(v, v_ref.to(v.dtype)), f"trial {trial}: membranes differ"
        assert s.sum() > 0 and (s == 0).any()  # the case exercises both outcomes


def test_sj_forward_fires_exactly_at_threshold():
    x = torch.tensor([[1.0], [0.0]])
    s, v = F.sj_forward(x, "if", 1.0, None, 0.0, True, None, True)
    assert s[:, 0].tolist() == [1.0, 0.0] and v.item() == 0.0
    s, v = F.sj_forward(x, "if", 1.0, 0.25, 0.0, True, None, True)  # hard: starts at v_reset, 0.25 + 1 fires
    assert s[:, 0].tolist() == [1.0, 0.0] and v.item() == 0.25


def test_sj_step_equals_forward():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(7, 2, 5, generator=gen)
    s_all, v_all = F.sj_forward(x, "lif", 0.7, -0.1, 2.5, False, None, True)
    v = torch.full((2, 5), -0.1)
    for t in range(7):
        s_t, v = F.sj_step(x[t], v, "lif", 0.7, -0.1, 2.5, False)
        assert torch.equal(s_t, s_all[t])
    assert torch.equal(v, v_all)


def test_sj_forward_rejects_unknown_charge():
    with pytest.raises(ValueError, match="unknown SpikingJelly charge"):
        F.sj_forward(torch.zeros(2, 3), "qif", 1.0, None, 2.0, True)


def test_sj_forward_scripts():
    scripted = torch.jit.script(F.sj_forward)
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    for args in (("if", 0.5, None, 0.0, True), ("lif", 0.5, 0.0, 2.0, True), ("plif", 0.5, None, 0.3, False)):
        assert torch.equal(scripted(x, *args, None, False)[0], F.sj_forward(x, *args)[0])


def test_neuron_spec_members():
    dsr = NeuronSpec("dsr-lif", "dsr-leak", 1.0, 0.3, spike_value="threshold/dt", decay=0.9, gain=0.1,
                     lif_rule="double", delta_t=0.05)
    assert dsr.to_dict()["threshold_scale"] == 0.3
    sj = NeuronSpec("sj-plif", "leak-to-reset", 1.0, reset="hard", v_reset=0.0, tau_rule="multiply", leak=0.5,
                    decay_input=True)
    assert sj.to_dict()["v_reset"] == 0.0
    with pytest.raises(ValueError, match="hard reset needs v_reset"):
        NeuronSpec("sj-if", "integrate", 1.0, reset="hard")
    with pytest.raises(ValueError, match="unknown family"):
        NeuronSpec("qif", "integrate", 1.0)


def test_native_cpu_kernel_matches_reference():
    """The native CPU kernel of dsr::sj_spike (plugins/core/dsr_sj_cpu.cpp) against sj_forward, every family x reset
    x decay_input x dtype, with and without an initial membrane, more neurons than one block (1024)."""
    from dsr_deploy import ops

    if not ops.has_native_kernel("cpu"):
        pytest.skip("the native kernels are not built (dsr-deploy plugins build)")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("dsr::sj_spike", "CPU")  # the native kernel, not Python
    gen = torch.Generator().manual_seed(11)
    for family, reset, decay_input, dtype in itertools.product(
            ("if", "lif", "plif"), ("soft", "hard"), (True, False),
            (torch.float32, torch.float64, torch.float16, torch.bfloat16)):
        vth = float(torch.empty(()).uniform_(0.2, 2.0, generator=gen))
        v_reset = None if reset == "soft" else float(torch.empty(()).uniform_(-0.5, 0.3, generator=gen))
        leak = float(torch.empty(()).uniform_(1.1, 8.0, generator=gen)) if family == "lif" else \
            float(torch.empty(()).uniform_(0.05, 0.95, generator=gen).float())
        x = (torch.randn(6, 1500, generator=gen) * vth * 2).to(dtype)
        x[0, :7] = vth
        v0 = torch.randn(1500, generator=gen, dtype=torch.float64).to(F.compute_dtype(dtype))
        for v_init in (None, v0):
            want = F.sj_forward(x, family, vth, v_reset, leak, decay_input, v_init, True)
            got = torch.ops.dsr.sj_spike(x, family, vth, v_reset, leak, decay_input, v_init, True)
            case = (family, reset, decay_input, dtype, v_init is None)
            assert torch.equal(got[0], want[0]), case
            assert torch.equal(got[1], want[1]), case
