"""The zoo: every entry builds and runs for several T and batch sizes; hyper-parameters reach the neurons; the
readout; direct encoding; the shipped checkpoint (size, weights-only load, held-out accuracy)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import dsr_deploy.models as zoo
from dsr_deploy import DSRIFNode, DSRLIFNode
from dsr_deploy.encoding import DirectEncoder, direct_encode
from dsr_deploy.errors import UserError
from dsr_deploy.models.common import RateReadout, firing_rate

torch.set_num_threads(1)

# Small inputs keep the big nets cheap: the CIFAR net needs 32x32 (AvgPool(4) after three stride-2 stages); the
# ImageNet and DVS nets end in adaptive pools, so smaller images run through the same layers.
SMALL_IMAGE = {
    "preact-resnet18-if": (3, 32, 32), "preact-resnet18-lif": (3, 32, 32),
    "preact-resnet18-imagenet-if": (3, 64, 64), "preact-resnet18-imagenet-lif": (3, 64, 64),
    "vgg11-dvs-if": (2, 48, 48), "vgg11-dvs-lif": (2, 48, 48),
    "cnn-small": (1, 28, 28), "mlp": (1, 28, 28), "digits-cnn": (1, 8, 8),
}
BIG = {n for n in SMALL_IMAGE if "resnet" in n or "vgg" in n}
NUM_CLASSES = {"preact-resnet18-imagenet-if": 1000, "preact-resnet18-imagenet-lif": 1000}


def test_registry_lists_the_zoo():
    assert set(zoo.names()) == set(SMALL_IMAGE)
    for name in zoo.names():
        d = zoo.describe(name)
        assert d["name"] == name and d["summary"] and d["neuron"] in ("if", "lif")
        shape = zoo.input_shape(name)
        assert len(shape) == 5 and shape[2:] in {(3, 32, 32), (3, 224, 224), (2, 48, 48), (1, 28, 28), (1, 8, 8)}


@pytest.mark.parametrize("name", sorted(SMALL_IMAGE))
def test_builds_and_runs_for_several_T_and_batch(name):
    cases = [(1, 1), (3, 2)] if name in BIG else [(1, 1), (2, 3), (5, 2)]
    for T, B in cases:
        model = zoo.build(name, T=T, pretrained=False).eval()
        x = torch.rand((T, B) + SMALL_IMAGE[name]) * 4
        with torch.no_grad():
            y = model(x)
        # the output layer's spike train: 0 or one amplitude per layer
        assert y.shape == (T, B, NUM_CLASSES.get(name, 10))
        assert torch.isfinite(y).all() and (y >= 0).all() and len(torch.unique(y)) <= 2
    # the authors' readout, and one training step: the DSR backward reaches the first layer and the thresholds
    model = zoo.build(name, T=T, pretrained=False, readout="rate")
    with torch.no_grad():
        assert model.eval()(x).shape == (B, NUM_CLASSES.get(name, 10))
    model.train()
    model(x).sum().backward()
    first = next(p for p in model.parameters() if p.dim() > 1)
    assert first.grad is not None
    thresholds = [m.v_threshold for m in model.modules() if isinstance(m, (DSRIFNode, DSRLIFNode))]
    assert thresholds and all(t.grad is not None for t in thresholds)


def test_neuron_kind_and_hyper_parameters_reach_every_neuron():
    m = zoo.build("cnn-small", T=4, neuron="lif", v_threshold=0.7, alpha=0.4, tau=1.5, delta_t=0.1,
                  v_threshold_lower_bound=0.02, pretrained=False)
    neurons = [n for n in m.modules() if isinstance(n, (DSRIFNode, DSRLIFNode))]
    assert len(neurons) == 3 and all(isinstance(n, DSRLIFNode) for n in neurons)
    for n in neurons:
        assert (n.T, n.alpha, n.tau, n.delta_t, n.v_threshold_lower_bound) == (4, 0.4, 1.5, 0.1, 0.02)
        assert float(n.v_threshold.detach()) == pytest.approx(0.7)
    r = zoo.build("preact-resnet18-if", T=3, pretrained=False)
    ifs = [n for n in r.modules() if isinstance(n, DSRIFNode)]
    assert len(ifs) == 2 * 8 + 3 and all(n.alpha == 0.5 and float(n.v_threshold.detach()) == 6.0 for n in ifs)


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="unknown IF neuron parameter"):
        zoo.build("mlp", tau=2.0, pretrained=False)
    with pytest.raises(ValueError, match="'if' or 'lif'"):
        zoo.build("mlp", neuron="relu", pretrained=False)
    with pytest.raises(ValueError, match="readout"):
        zoo.build("mlp", readout="softmax", pretrained=False)
    with pytest.raises(UserError, match="unknown zoo model"):
        zoo.build("resnet-9000")
    m = zoo.build("mlp", T=4, pretrained=False)
    with pytest.raises(ValueError, match="time steps"):
        m(torch.rand(3, 1, 1, 28, 28))


def test_if_readout_eval_is_the_mean_firing_rate():
    torch.manual_seed(0)
    amp = 1.1  # a value whose multiples round: a plain float sum would depend on the order
    y = (torch.rand(7, 5, 10) < 0.4).float() * amp
    r = RateReadout("if").eval()
    out = r(y)
    count = (y != 0).sum(0).double()
    assert torch.equal(out, (count.float() * torch.tensor(amp)) / 7)
    torch.testing.assert_close(out, y.mean(0), rtol=1e-6, atol=0)
    assert torch.equal(r(torch.zeros(3, 2, 4)), torch.zeros(2, 4))
    r.train()
    assert torch.equal(r(y), y.mean(0))
    assert torch.equal(firing_rate(y.numpy()), out)


def test_lif_readout_is_the_seeds_weighted_rate():
    import math

    y = (torch.rand(5, 2, 3) < 0.5).float() * 20.0
    tau, dt = 1.0, 0.05
    w = torch.tensor([math.exp(-1 / tau * (dt * 5 - i * dt)) for i in range(1, 6)])
    expected = (w * y.permute(1, 2, 0)).sum(-1) / w.sum()
    torch.testing.assert_close(RateReadout("lif", tau, dt)(y), expected, rtol=1e-6, atol=1e-6)


def test_direct_encoding():
    x = torch.rand(3, 1, 8, 8)
    e = direct_encode(x, 4)
    assert e.shape == (4, 3, 1, 8, 8) and e.is_contiguous()
    assert all(torch.equal(e[t], x) for t in range(4))
    assert torch.equal(DirectEncoder(4)(x), e)
    with pytest.raises(ValueError):
        direct_encode(x, 0)


# -------------------------------------------------------------------------------------------------------------
# The shipped checkpoint.

CHECKPOINT = Path(zoo.__file__).parent / "digits_cnn_if.pt"


def test_checkpoint_is_small_and_a_plain_weights_only_state_dict():
    assert CHECKPOINT.stat().st_size < 2 * 1024 * 1024
    state = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    model = zoo.build("digits-cnn", pretrained=False)
    assert set(state) == set(model.state_dict())


def test_checkpoint_held_out_accuracy_matches_the_card():
    pytest.importorskip("sklearn", reason="the digits data ships with scikit-learn")
    from dsr_deploy.models.digits import DIGITS_T, accuracy, load_digits_split

    data = load_digits_split()
    assert len(data.y_test) == 360 and len(data.y_train) == 1437
    model = zoo.build("digits-cnn").eval()
    with torch.no_grad():
        spikes = model(direct_encode(data.x_test, DIGITS_T))
        acc = accuracy(firing_rate(spikes), data.y_test)
        rate_model = zoo.build("digits-cnn", readout="rate").eval()
        assert torch.equal(rate_model(direct_encode(data.x_test, DIGITS_T)), firing_rate(spikes))
    assert acc >= 0.95
    assert round(acc * 360) == 357  # the number in models/digits-cnn.md
    untrained = zoo.build("digits-cnn", pretrained=False).eval()
    with torch.no_grad():
        assert accuracy(firing_rate(untrained(direct_encode(data.x_test, DIGITS_T))), data.y_test) < 0.5
