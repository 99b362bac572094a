"""The reference recurrences: state in/out, single steps, scriptability, the dsr ops' reference kernels."""

from __future__ import annotations

import math

import pytest
import torch
import torch.utils._python_dispatch

from dsr_deploy import functional as F
from dsr_deploy import ops

LIF = dict(tau=1.0, delta_t=0.05)


def _run(kind, x, v_init=None, return_state=False):
    if kind == "if":
        return F.if_forward(x, 1.0, 0.5, v_init, return_state)
    return F.lif_forward(x, 0.3, 0.3, LIF["tau"], LIF["delta_t"], v_init, return_state)


@pytest.mark.parametrize("kind", ["if", "lif"])
@pytest.mark.parametrize("split", [1, 3, 7])
def test_state_path_equals_concatenated_sequence(kind, split):
    x = torch.randn(8, 3, 5, generator=torch.Generator().manual_seed(0)) * (2.0 if kind == "if" else 20.0)
    y_full, v_full = _run(kind, x, return_state=True)
    y1, v1 = _run(kind, x[:split], return_state=True)
    y2, v2 = _run(kind, x[split:], v_init=v1, return_state=True)
    assert (y_full != 0).any()
    assert torch.equal(torch.cat([y1, y2]), y_full)
    assert torch.equal(v2, v_full)


@pytest.mark.parametrize("kind", ["if", "lif"])
def test_single_steps_equal_multi_step(kind):
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(1)) * (2.0 if kind == "if" else 20.0)
    y_full, _ = _run(kind, x)
    v = torch.zeros(4)
    ys = []
    for t in range(6):
        if kind == "if":
            y, v = F.if_step(x[t], v, 1.0, 0.5)
        else:
            y, v = F.lif_step(x[t], v, 0.3, 0.3, LIF["tau"], LIF["delta_t"])
        ys.append(y)
    assert torch.equal(torch.stack(ys), y_full)


def test_wrong_state_shape_is_a_value_error():
    with pytest.raises(ValueError, match="v_init must have the shape"):
        F.if_forward(torch.zeros(3, 2, 4), 1.0, 0.5, torch.zeros(2, 5))


def test_lif_coefficients_are_the_seeds():
    beta, gain = F.lif_coefficients(2.0, 0.05)
    assert beta == math.exp(-0.05 / 2.0) and gain == 1.0 - math.exp(-0.05 / 2.0)


def test_threshold_rounds_alpha_first_like_the_seed():
    # fl32(fl32(alpha) * vth) differs from fl32(alpha * vth in double) for some values: the reference must
    # take the seed's path, which multiplies a float32 tensor by a Python float.
    vth = torch.tensor(0.61)
    thr_seed = 0.3 * vth
    x = torch.full((1, 1), float(thr_seed))
    y, _ = F.if_forward(x, float(vth), 0.3)
    assert y.item() == float(vth)  # exactly at the threshold: fires
    below = torch.nextafter(thr_seed, torch.tensor(0.0)).reshape(1, 1)
    assert F.if_forward(below, float(vth), 0.3)[0].item() == 0.0


@pytest.mark.parametrize("kind", ["if", "lif"])
def test_scripted_reference_is_identical(kind):
    scripted = torch.jit.script(F.if_forward if kind == "if" else F.lif_forward)
    x = torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(2)) * 8
    args = (1.0, 0.5) if kind == "if" else (0.3, 0.3, 1.0, 0.05)
    y_ref, v_ref = (F.if_forward if kind == "if" else F.lif_forward)(x, *args, None, True)
    y_s, v_s = scripted(x, *args, None, True)
    assert torch.equal(y_ref, y_s) and torch.equal(v_ref, v_s)


@pytest.mark.parametrize("kind", ["if", "lif"])
def test_ops_reference_kernel_matches_functional(kind):
    x = torch.randn(4, 3, 2, generator=torch.Generator().manual_seed(3)) * 8
    if kind == "if":
        y, v = ops.if_spike(x, 1.0, 0.5, return_state=True, native=False)
        y_ref, v_ref = F.if_forward(x, 1.0, 0.5, None, True)
        y0, v0 = ops.if_spike(x, 1.0, 0.5)
    else:
        y, v = ops.lif_spike(x, 0.3, 0.3, 1.0, 0.05, return_state=True, native=False)
        y_ref, v_ref = F.lif_forward(x, 0.3, 0.3, 1.0, 0.05, None, True)
        y0, v0 = ops.lif_spike(x, 0.3, 0.3, 1.0, 0.05)
    assert torch.equal(y, y_ref) and torch.equal(v, v_ref)
    assert torch.equal(y0, y_ref) and v0.numel() == 0  # no state asked for: an empty tensor


def test_fake_kernel_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(7, 2, 3, dtype=torch.float16)
        y, v = torch.ops.dsr.lif_spike(x, 0.3, 0.3, 1.0, 0.05, None, True)
        assert y.shape == (7, 2, 3) and y.dtype == torch.float16
        assert v.shape == (2, 3) and v.dtype == torch.float32


def test_nan_and_inf_follow_the_reference_rules():
    x = torch.tensor([[float("nan"), float("inf"), -float("inf"), 1.0]] * 3)
    y, v = F.if_forward(x, 1.0, 0.5, None, True)
    assert y[:, 0].eq(0).all() and y[:, 1].eq(1.0).all() and y[:, 2].eq(0).all()
    assert math.isnan(v[0]) and v[1] == float("inf") and v[2] == -float("inf")


class _RecordOps(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append((func, args))
        return func(*args, **(kwargs or {}))


def test_lif_output_divides_by_a_tensor_on_the_input_device():
    # PyTorch CUDA eager computes `tensor / python_scalar` as tensor * fl(1/scalar), which can differ from the
    # division in the last bit (vth=1.3, dt=0.05: 25.999998 vs 26.0). The reference divides by delta_t held in a
    # tensor on the input's device, so its spikes (and every kernel's) are the same on CPU and GPU. Checked on the
    # meta device, where a Python-scalar divisor shows up as a float argument.
    x = torch.empty(3, 5, device="meta")
    with _RecordOps() as rec:
        F.lif_forward(x, 1.3, 0.3, 2.0, 0.05)
    divs = [args for func, args in rec.calls if func.overloadpacket in (torch.ops.aten.div, torch.ops.aten.div_)]
    assert divs, "lif_forward should divide the spikes by delta_t"
    for args in divs:
        assert isinstance(args[1], torch.Tensor) and args[1].device.type == "meta", args


def test_lif_spike_value_is_the_float32_division():
    vth, dt = 1.3, 0.05
    x = torch.full((1, 4), 100.0)
    y, _ = F.lif_forward(x, vth, 0.3, 2.0, dt)
    division = torch.tensor(vth, dtype=torch.float32) / torch.tensor(dt, dtype=torch.float32)
    reciprocal = torch.tensor(vth, dtype=torch.float32) * (1 / torch.tensor(dt, dtype=torch.float32))
    assert division.item() != reciprocal.item()  # the case distinguishes the two roundings
    assert torch.equal(y, torch.full((1, 4), division.item()))
