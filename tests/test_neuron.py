"""DSRIFNode / DSRLIFNode against SpikingJelly's DSR nodes (the oracle) and against the seed's formulas."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dsr_deploy import DSRIFNode, DSRLIFNode
from dsr_deploy import functional as F

sj_neuron = pytest.importorskip("spikingjelly.activation_based.neuron",
                                reason="spikingjelly (test oracle) not installed")
from spikingjelly.activation_based import functional as sj_functional  # noqa: E402
from spikingjelly.activation_based import layer as sj_layer  # noqa: E402

SHAPES = [(), (5,), (2, 3, 3)]  # trailing dims after [T, B]: [T,B], [T,B,F], [T,B,C,H,W]


def _pair(kind: str, T: int, **kw):
    ours = (DSRIFNode if kind == "if" else DSRLIFNode)(T=T, **kw)
    theirs = (sj_neuron.DSRIFNode if kind == "if" else sj_neuron.DSRLIFNode)(T=T, **kw)
    return ours, theirs


IF_PARAMS = st.fixed_dictionaries(
    {
        "v_threshold": st.sampled_from([6.0, 1.0, 0.37, 2.5]),
        "alpha": st.sampled_from([0.5, 0.3, 1.0, 0.77]),
        "v_threshold_lower_bound": st.sampled_from([0.01, 0.1]),
    }
)
LIF_PARAMS = st.fixed_dictionaries(
    {
        "v_threshold": st.sampled_from([1.0, 0.3, 0.61]),
        "tau": st.sampled_from([2.0, 1.0, 0.7]),
        "delta_t": st.sampled_from([0.05, 0.1, 0.03]),
        "alpha": st.sampled_from([0.3, 0.5, 0.9]),
        "v_threshold_lower_bound": st.sampled_from([0.1, 5e-4]),
    }
)


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(["if", "lif"]),
    T=st.integers(1, 50),
    B=st.integers(1, 3),
    trailing=st.sampled_from(SHAPES),
    scale=st.sampled_from([0.5, 2.0, 8.0, 30.0]),
    seed=st.integers(0, 2**16),
    if_params=IF_PARAMS,
    lif_params=LIF_PARAMS,
)
def test_forward_bit_exact_vs_spikingjelly(kind, T, B, trailing, scale, seed, if_params, lif_params):
    params = if_params if kind == "if" else lif_params
    ours, theirs = _pair(kind, T, **params)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((T, B) + trailing, generator=g) * scale
    y_ours, y_theirs = ours(x), theirs(x)
    assert y_ours.dtype == y_theirs.dtype == torch.float32
    assert torch.equal(y_ours, y_theirs)


@pytest.mark.parametrize("kind", ["if", "lif"])
@pytest.mark.parametrize("trailing", SHAPES)
def test_forward_fires_and_is_exact(kind, trailing):
    # A fixed case that surely spikes (hypothesis may draw silent ones): guards against a trivially-zero forward.
    ours, theirs = _pair(kind, 8)
    x = torch.randn((8, 4) + trailing, generator=torch.Generator().manual_seed(1)) * (12.0 if kind == "if" else 30.0)
    y = ours(x)
    assert (y != 0).any() and (y == 0).any()
    assert torch.equal(y, theirs(x))


# ---------------------------------------------------------------------------------------------------------
# Gradients


def _restated_if_grads(x, gy, vth, scaling):
    """The seed's IF gradient, restated element by element from the paper's rate formulation."""
    T = x.shape[0]
    xf, gf = x.reshape(T, -1).double(), gy.reshape(T, -1).double()
    gx = torch.zeros_like(xf)
    gv = 0.0
    for n in range(xf.shape[1]):
        r = xf[:, n].sum() / T
        g = gf[:, n].sum()  # mean over T, times T
        if 0 <= r <= vth:
            gx[:, n] = g / T
        if r > vth:
            gv += float(g)
    return gx.reshape(x.shape), gv * scaling


def _restated_lif_grads(x, gy, vth, tau, dt, scaling):
    T = x.shape[0]
    w = torch.tensor([math.exp(-(T * dt - i * dt) / tau) for i in range(1, T + 1)], dtype=torch.float64)
    w = w / w.sum()
    xf, gf = x.reshape(T, -1).double(), gy.reshape(T, -1).double()
    gx = torch.zeros_like(xf)
    gv = 0.0
    bound = vth / dt * tau
    for n in range(xf.shape[1]):
        r = float((w * xf[:, n]).sum())
        g = float((w * gf[:, n]).sum()) * T
        if 0 < r < bound:
            gx[:, n] = g / tau / T
        if r > bound:
            gv += g
    return gx.reshape(x.shape), gv * dt * scaling


def _grads(node, x, gy):
    x = x.clone().requires_grad_()
    node(x).backward(gy)
    return x.grad, node.v_threshold.grad


def _assert_close(a, b, rtol=1e-6):
    # Relative to the gradient's scale: float32 sums that cancel leave ~1e-8 absolute noise on tiny entries.
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    scale = float(b.abs().max()) if b.numel() else 0.0
    assert torch.allclose(a, b, rtol=rtol, atol=rtol * max(scale, 1e-12)), (a, b)


@settings(max_examples=25, deadline=None)
@given(
    kind=st.sampled_from(["if", "lif"]),
    T=st.integers(1, 20),
    trailing=st.sampled_from(SHAPES),
    seed=st.integers(0, 2**16),
    scaling=st.sampled_from([1.0, 0.5, 3.0]),
)
def test_gradients_match_spikingjelly_and_restated_formulas(kind, T, trailing, seed, scaling):
    g = torch.Generator().manual_seed(seed)
    if kind == "if":
        params = dict(v_threshold=1.0, alpha=0.5, v_threshold_grad_scaling=scaling)
        x = torch.randn((T, 3) + trailing, generator=g) * 1.2 + 0.4  # rates on both sides of 0 and of vth
    else:
        params = dict(v_threshold=0.3, tau=1.0, delta_t=0.05, alpha=0.3, v_threshold_grad_scaling=scaling)
        x = torch.randn((T, 3) + trailing, generator=g) * 6.0 + 3.0  # bound vth/dt*tau = 6
    gy = torch.randn(x.shape, generator=g)
    ours, theirs = _pair(kind, T, **params)
    gx_o, gv_o = _grads(ours, x, gy)
    gx_t, gv_t = _grads(theirs, x, gy)
    _assert_close(gx_o, gx_t)
    _assert_close(gv_o, gv_t)
    if kind == "if":
        gx_r, gv_r = _restated_if_grads(x, gy, 1.0, scaling)
    else:
        gx_r, gv_r = _restated_lif_grads(x, gy, 0.3, 1.0, 0.05, scaling)
    _assert_close(gx_o, gx_r)
    _assert_close(gv_o, gv_r, rtol=1e-5)  # the sum over elements is float32 in the seed


def test_gradient_fixed_case_is_nontrivial():
    x = torch.randn(6, 4, 10, generator=torch.Generator().manual_seed(3)) * 1.5 + 0.6
    gy = torch.randn(6, 4, 10, generator=torch.Generator().manual_seed(4))
    gx, gv = _grads(DSRIFNode(T=6, v_threshold=1.0), x, gy)
    assert (gx != 0).any() and (gx == 0).any() and gv != 0


# ---------------------------------------------------------------------------------------------------------
# The seed's defects, fixed


@pytest.mark.parametrize("cls", [DSRIFNode, DSRLIFNode])
def test_T_argument_disagreeing_with_input_raises(cls):
    with pytest.raises(ValueError, match="T=5 but the input has 4 time steps"):
        cls(T=5)(torch.randn(4, 2, 3))
    assert cls(T=None)(torch.randn(4, 2, 3)).shape == (4, 2, 3)


@pytest.mark.parametrize("cls", [DSRIFNode, DSRLIFNode])
def test_untrained_threshold_is_a_buffer(cls):
    node = cls(T=4, v_threshold_training=False)
    assert "v_threshold" in dict(node.named_buffers())
    assert "v_threshold" in node.state_dict()
    assert not list(node.parameters())
    node = node.to(torch.float64)
    assert node.v_threshold.dtype == torch.float64  # moved by .to()
    node2 = cls(T=4, v_threshold=2.0, v_threshold_training=False)
    node2.load_state_dict(cls(T=4, v_threshold=3.0, v_threshold_training=False).state_dict())
    assert float(node2.v_threshold) == 3.0


@pytest.mark.parametrize("cls", [DSRIFNode, DSRLIFNode])
def test_no_all_reduce_without_process_group(cls, monkeypatch):
    # The seed all-reduces whenever torch.cuda.device_count() != 1, and raises without a process group.
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    called = []
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda *a, **k: called.append(1))
    x = (torch.randn(4, 2, 3) * 8).requires_grad_()
    node = cls(T=4)
    node(x).sum().backward()
    assert not called
    assert node.v_threshold.grad is not None


def _ddp_worker(rank, world, port, kind, sync, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(100 + rank)
        node = (DSRIFNode(T=5, v_threshold=1.0) if kind == "if" else DSRLIFNode(T=5, v_threshold=0.3, tau=1.0))
        node.v_threshold_grad_sync = sync
        x = torch.randn(5, 3, 7) * (2.0 if kind == "if" else 8.0) + 1.0
        gy = torch.randn(5, 3, 7)
        node(x.requires_grad_()).backward(gy)
        local = F.if_backward(x.detach(), gy, node.v_threshold.detach(), 1.0)[1] if kind == "if" else \
            F.lif_backward(x.detach(), gy, node.v_threshold.detach(), 1.0, 0.05, 1.0)[1]
        out[rank] = (float(node.v_threshold.grad), float(local))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("kind", ["if", "lif"])
def test_threshold_grad_summed_over_ranks_with_process_group(kind):
    import socket

    import torch.multiprocessing as mp

    for sync in (True, False):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        out = mp.Manager().dict()
        mp.spawn(_ddp_worker, args=(2, port, kind, sync, out), nprocs=2, join=True)
        (g0, l0), (g1, l1) = out[0], out[1]
        assert l0 != 0 and l1 != 0
        if sync:
            assert g0 == pytest.approx(l0 + l1, rel=1e-6) and g1 == pytest.approx(l0 + l1, rel=1e-6)
        else:
            assert (g0, g1) == (pytest.approx(l0), pytest.approx(l1))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(T=0), "T must be a positive int"),
        (dict(T=2.5), "T must be a positive int"),
        (dict(v_threshold="1"), "v_threshold must be a real number"),
        (dict(v_threshold=0.001), "must be >= v_threshold_lower_bound"),
        (dict(alpha=0.0), r"alpha must be in \(0, 1\]"),
        (dict(alpha=1.5), r"alpha must be in \(0, 1\]"),
        (dict(v_threshold_lower_bound=0.0), "v_threshold_lower_bound must be > 0"),
        (dict(step_mode="s"), "step_mode='m'"),
        (dict(backend="cupy"), "backend must be one of"),
    ],
)
@pytest.mark.parametrize("cls", [DSRIFNode, DSRLIFNode])
def test_argument_validation_raises_value_error(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


def test_lif_specific_validation():
    with pytest.raises(ValueError, match="tau must be > 0"):
        DSRLIFNode(tau=0.0)
    with pytest.raises(ValueError, match="delta_t must be > 0"):
        DSRLIFNode(delta_t=-1.0)


@pytest.mark.parametrize("cls", [DSRIFNode, DSRLIFNode])
def test_threshold_clamped_to_bound(cls):
    node = cls(T=6, v_threshold=1.0, v_threshold_lower_bound=0.5)
    with torch.no_grad():
        node.v_threshold.fill_(0.2)  # below the bound, as SpikingJelly 2.0 can store it
    ref = cls(T=6, v_threshold=0.5, v_threshold_lower_bound=0.5)
    x = torch.randn(6, 4, 5, generator=torch.Generator().manual_seed(0)) * 3
    node.eval()
    assert torch.equal(node(x), ref(x))
    assert float(node.v_threshold) == pytest.approx(0.2)  # eval/inference never writes the parameter
    assert float(node.effective_threshold()) == 0.5
    node.train()
    node(x.requires_grad_()).sum().backward()
    assert float(node.v_threshold) == 0.5  # training clamps in place, as the seed does
    assert node.v_threshold.grad is not None


def test_training_clamp_leaves_thresholds_above_bound_untouched():
    # The seed's relu(v - lb) + lb rewrote every threshold with a rounding error; clamp_ must not.
    node = DSRIFNode(T=3, v_threshold=0.1 + 0.2, v_threshold_lower_bound=0.07)
    before = node.v_threshold.detach().clone()
    node(torch.randn(3, 2, 4).requires_grad_())
    assert torch.equal(node.v_threshold.detach(), before)


@pytest.mark.parametrize("cls", [DSRIFNode, DSRLIFNode])
def test_step_mode_set_later_raises(cls):
    net = torch.nn.Sequential(sj_layer.Linear(4, 4, step_mode="m"), cls(T=3))
    x = torch.randn(3, 2, 4)
    assert net(x).shape == (3, 2, 4)
    sj_functional.reset_net(net)  # reset() exists, so SpikingJelly's helpers work around the neuron
    sj_functional.set_step_mode(net, "s")
    with pytest.raises(ValueError, match="step_mode='m' only"):
        net(x)


def test_works_inside_spikingjelly_containers():
    net = torch.nn.Sequential(
        sj_layer.SeqToANNContainer(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.BatchNorm2d(4)),
        DSRIFNode(T=4, v_threshold=1.0),
        sj_layer.Flatten(step_mode="m"),
        sj_layer.Linear(4 * 5 * 5, 3, step_mode="m"),
        DSRLIFNode(T=4),
    )
    y = net(torch.randn(4, 2, 2, 5, 5))
    assert y.shape == (4, 2, 3)
    sj_functional.reset_net(net)


@pytest.mark.parametrize("kind", ["if", "lif"])
@pytest.mark.parametrize("training", [True, False])
def test_state_dict_roundtrip_with_spikingjelly(kind, training):
    ours, theirs = _pair(kind, 4, v_threshold_training=training)
    with torch.no_grad():
        if training:
            theirs.v_threshold.fill_(1.75)
    # theirs -> ours (strict): a non-trained SpikingJelly threshold is no state and keeps our constructor value
    ours.load_state_dict(theirs.state_dict())
    if training:
        assert float(ours.v_threshold) == 1.75
        with torch.no_grad():
            ours.v_threshold.fill_(2.25)
        # ours -> theirs (strict)
        theirs.load_state_dict(ours.state_dict())
        assert float(theirs.v_threshold) == 2.25
    else:
        # SpikingJelly keeps a non-trained threshold out of its state: it accepts ours non-strictly.
        result = theirs.load_state_dict(ours.state_dict(), strict=False)
        assert result.unexpected_keys == ["v_threshold"]
    x = torch.randn(4, 2, 6) * 4
    assert torch.equal(ours(x), theirs(x))


def test_float64_exact_vs_spikingjelly():
    for kind in ("if", "lif"):
        ours, theirs = _pair(kind, 7)
        ours, theirs = ours.double(), theirs.double()
        x = torch.randn(7, 3, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) * 6
        y = ours(x)
        assert y.dtype == torch.float64
        assert torch.equal(y, theirs(x))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cls", [DSRIFNode, DSRLIFNode])
def test_half_precision_runs_output_dtype_and_grad(cls, dtype):
    node = cls(T=4)
    x32 = torch.randn(4, 3, 8, generator=torch.Generator().manual_seed(2)) * 6
    x = x32.to(dtype).requires_grad_()
    y = node(x)
    assert y.dtype == dtype  # documented: output in the input's dtype, float32 membrane inside
    # Exactly the float32 computation on the (exactly upcast) input, rounded to the input dtype:
    assert torch.equal(y, node(x.detach().float()).to(dtype))
    y.float().sum().backward()
    assert x.grad.dtype == dtype and node.v_threshold.grad.dtype == torch.float32


def test_autocast_runs():
    net = torch.nn.Sequential(sj_layer.Linear(8, 8, step_mode="m"), DSRIFNode(T=3, v_threshold=1.0))
    x = torch.randn(3, 2, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert net[1].v_threshold.grad is not None


@pytest.mark.parametrize(
    "cls, kw, gain, bias, out_scale",
    [
        (DSRIFNode, dict(v_threshold=1.0), 4.0, 1.0, 1.0),
        (DSRLIFNode, dict(v_threshold=0.3), 40.0, 12.0, 0.05),  # LIF's rate bound is vth/dt*tau = 12
    ],
)
def test_sgd_lowers_loss_and_moves_threshold(cls, kw, gain, bias, out_scale):
    torch.manual_seed(0)
    T = 6
    lin = torch.nn.Linear(4, 3)
    node = cls(T=T, **kw)
    x = torch.rand(64, 4)
    target = torch.randint(0, 3, (64,))
    opt = torch.optim.SGD(list(lin.parameters()) + [node.v_threshold], lr=0.05)

    def loss_fn():
        h = lin(x).unsqueeze(0).repeat(T, 1, 1) * gain + bias
        return torch.nn.functional.cross_entropy(node(h).mean(0) * out_scale, target)

    first = float(loss_fn())
    vth0 = float(node.v_threshold)
    for _ in range(60):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    assert float(loss_fn()) < first
    assert float(node.v_threshold) != vth0


def test_extra_repr_matches_seed_format():
    r = DSRLIFNode(T=5).extra_repr()
    assert r.startswith(", T=5, init_vth=") and "tau=2.0, dt=0.05, alpha=0.3, vth_bound=0.1, vth_g_scale=1.0" in r
    r = DSRIFNode().extra_repr()
    assert r.startswith(", T=20, init_vth=") and r.endswith("alpha=0.5, vth_bound=0.01, vth_g_scale=1.0")


def test_defaults_match_spikingjelly():
    for ours, theirs in ((DSRIFNode(), sj_neuron.DSRIFNode()), (DSRLIFNode(), sj_neuron.DSRLIFNode())):
        for attr in ("T", "alpha", "v_threshold_lower_bound", "v_threshold_grad_scaling", "step_mode"):
            assert getattr(ours, attr) == getattr(theirs, attr), attr
        assert float(ours.v_threshold) == float(theirs.v_threshold)
    assert (DSRLIFNode().tau, DSRLIFNode().delta_t) == (2.0, 0.05)
