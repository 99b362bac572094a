"""The native CPU kernels of torch.ops.dsr.* against the Python reference (dsr_deploy.functional), bit for bit."""

from __future__ import annotations

import math
import os

import pytest
import torch
from _native_util import assert_bit_equal, ensure_torch_native
from hypothesis import given, settings
from hypothesis import strategies as st

from dsr_deploy import DSRIFNode, DSRLIFNode, ops
from dsr_deploy import functional as F

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.fixture(scope="module", autouse=True)
def native():
    ensure_torch_native()
    assert ops.has_native_kernel("cpu"), "libdsr_torch_ops.so loaded but registered no CPU kernel"


def run_both(kind, x, params, v_init=None, return_state=True):
    fn = ops.if_spike if kind == "if" else ops.lif_spike
    nat = fn(x, *params, v_init=v_init, return_state=return_state, native=True)
    ref = fn(x, *params, v_init=v_init, return_state=return_state, native=False)
    return nat, ref


def check_same(nat, ref, what):
    assert_bit_equal(nat[0], ref[0], what + " spikes")
    assert_bit_equal(nat[1], ref[1], what + " final membrane")


IF_PARAMS = st.tuples(st.floats(0.01, 10.0), st.floats(0.05, 1.0))
LIF_PARAMS = st.tuples(st.floats(0.01, 5.0), st.floats(0.05, 1.0), st.floats(0.1, 10.0), st.floats(0.001, 1.0))


@settings(max_examples=25, deadline=None)
@given(
    kind=st.sampled_from(["if", "lif"]),
    dtype=st.sampled_from(DTYPES),
    T=st.integers(1, 24),
    step_shape=st.lists(st.integers(1, 40), min_size=0, max_size=3),
    if_params=IF_PARAMS,
    lif_params=LIF_PARAMS,
    scale=st.floats(0.1, 20.0),
    with_init=st.booleans(),
    return_state=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_bit_exact_random(kind, dtype, T, step_shape, if_params, lif_params, scale, with_init, return_state, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn([T, *step_shape], generator=g, dtype=torch.float64) * scale).to(dtype)
    params = if_params if kind == "if" else lif_params
    v_init = None
    if with_init:
        v_init = torch.randn(step_shape, generator=g, dtype=F.compute_dtype(dtype)) * params[0]
    nat, ref = run_both(kind, x, params, v_init, return_state)
    check_same(nat, ref, f"{kind} {dtype} {list(x.shape)}")


@pytest.mark.parametrize("kind", ["if", "lif"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_authors_defaults_many_neurons_threaded(kind, dtype):
    # Big enough to be split over threads and AVX2 blocks with a ragged tail (N not a multiple of the block).
    params = (6.0, 0.5) if kind == "if" else (0.3, 0.3, 1.0, 0.05)
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(20, 3, 5001, generator=g) * (4.0 if kind == "if" else 1.0)).to(dtype)
    nat, ref = run_both(kind, x, params)
    check_same(nat, ref, f"{kind} {dtype}")
    spikes = (nat[0] != 0).float().mean().item()
    assert 0.01 < spikes < 0.9, f"degenerate test input: spike rate {spikes}"
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = (ops.if_spike(x, *params) if kind == "if" else ops.lif_spike(x, *params))[0]
    finally:
        torch.set_num_threads(before)
    assert_bit_equal(single, nat[0], "one thread vs several")


@pytest.mark.parametrize("kind", ["if", "lif"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_outputs_recycled_overwritten(kind, dtype):
    # Outputs >= 4 MB come from 2 MB-aligned mappings that are recycled when the tensor dies (plugins/torch): a reused
    # buffer must be fully overwritten, and live outputs must never share memory.
    params = (6.0, 0.5) if kind == "if" else (0.3, 0.3, 1.0, 0.05)
    fn = ops.if_spike if kind == "if" else ops.lif_spike
    T, n = 4, 300_001 if dtype == torch.float32 else 150_001  # > 4 MB, N not a multiple of the 1024-neuron block
    g = torch.Generator().manual_seed(2)
    xs = [(torch.randn(T, n, generator=g, dtype=dtype) * s) for s in (8.0, 3.0, 0.5)]
    refs = [fn(x, *params, native=False)[0] for x in xs]
    y0 = fn(xs[0], *params, native=True)[0]
    y1 = fn(xs[1], *params, native=True)[0]
    assert y0.data_ptr() != y1.data_ptr()
    ptr0 = y0.data_ptr()
    del y0  # its mapping goes back to the pool
    y2 = fn(xs[2], *params, native=True)[0]
    if os.environ.get("DSR_DEPLOY_OUTPUT_CACHE_MB", "") != "0":
        assert y2.data_ptr() == ptr0, "the freed output's mapping was not reused"
    assert_bit_equal(y1, refs[1], f"{kind} {dtype} live output")
    assert_bit_equal(y2, refs[2], f"{kind} {dtype} output in a recycled buffer")
    assert (refs[0] != refs[2]).any(), "degenerate test: the recycled buffer's old content equals the new"


@pytest.mark.parametrize("kind", ["if", "lif"])
def test_non_contiguous_inputs(kind):
    params = (1.0, 0.5) if kind == "if" else (0.3, 0.3, 1.0, 0.05)
    base = torch.randn(6, 10, 7, 2, dtype=torch.float32) * 2
    for x in (base.transpose(1, 2), base[:, ::2], base[..., 1], base.permute(3, 1, 2, 0)[0].permute(2, 0, 1)):
        assert not x.is_contiguous()
        v_init = torch.randn(x.shape[1:] + (2,))[..., 0]  # non-contiguous initial membrane too
        nat, ref = run_both(kind, x, params, v_init)
        check_same(nat, ref, f"{kind} non-contiguous {tuple(x.stride())}")


@pytest.mark.parametrize("kind", ["if", "lif"])
@pytest.mark.parametrize("shape", [(0, 3, 4), (5, 0), (4, 3, 0), (0,), (0, 0)])
def test_empty_time_or_neurons(kind, shape):
    # Documented: an empty output of the input's shape; with T == 0 the final membrane is the initial one.
    params = (1.0, 0.5) if kind == "if" else (0.3, 0.3, 1.0, 0.05)
    x = torch.randn(shape)
    for v_init in (None, torch.randn(shape[1:])):
        nat, ref = run_both(kind, x, params, v_init)
        check_same(nat, ref, f"{kind} empty {shape}")
        assert nat[0].shape == x.shape
        if v_init is not None and shape[0] == 0:
            assert torch.equal(nat[1], v_init)


@pytest.mark.parametrize("kind", ["if", "lif"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_and_inf_like_reference(kind, dtype):
    params = (1.0, 0.5) if kind == "if" else (0.3, 0.3, 1.0, 0.05)
    x = torch.randn(8, 64, dtype=torch.float64).to(dtype)
    x[0, :4] = float("nan")
    x[1, 4:8] = float("inf")
    x[2, 8:12] = float("-inf")
    x[3, 12:16] = float("inf")
    x[4, 12:16] = float("-inf")  # inf - inf -> NaN membrane
    nat, ref = run_both(kind, x, params)
    check_same(nat, ref, f"{kind} {dtype} with NaN/inf")
    assert torch.isnan(nat[1]).any()


@pytest.mark.parametrize("kind", ["if", "lif"])
@pytest.mark.parametrize("vth", [-1.0, 0.0, float("inf"), float("nan")])
def test_odd_thresholds_like_reference(kind, vth):
    # The modules never pass these (the bound keeps vth > 0), but the op's contract is the reference's.
    params = (vth, 0.5) if kind == "if" else (vth, 0.3, 1.0, 0.05)
    x = torch.randn(5, 33)
    nat, ref = run_both(kind, x, params)
    check_same(nat, ref, f"{kind} vth={vth}")


@pytest.mark.parametrize("kind", ["if", "lif"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_state_chaining_equals_concatenated_sequence(kind, dtype):
    params = (1.0, 0.5) if kind == "if" else (0.3, 0.3, 1.0, 0.05)
    fn = ops.if_spike if kind == "if" else ops.lif_spike
    x = (torch.randn(13, 4, 9, dtype=torch.float64) * 2).to(dtype)
    full_y, full_v = fn(x, *params, return_state=True)
    v = None
    parts = []
    for chunk in (x[:5], x[5:6], x[6:6], x[6:]):
        y, v = fn(chunk, *params, v_init=v, return_state=True)
        parts.append(y)
    assert_bit_equal(torch.cat(parts), full_y, "chained spikes")
    assert_bit_equal(v, full_v, "chained final membrane")
    ref = fn(x, *params, return_state=True, native=False)
    check_same((full_y, full_v), ref, "full sequence vs reference")


def test_v_init_shape_error_matches_reference():
    x = torch.randn(4, 3, 5)
    for native in (True, False):
        with pytest.raises(ValueError, match="shape of one time step"):
            ops.if_spike(x, 1.0, 0.5, v_init=torch.zeros(3, 4), native=native)
    with pytest.raises(ValueError, match="leading time dimension"):
        torch.ops.dsr.lif_spike(torch.tensor(1.0), 1.0, 0.3, 1.0, 0.05)


def test_integer_input_is_a_clear_error():
    with pytest.raises(ValueError, match="unsupported input dtype"):
        torch.ops.dsr.if_spike(torch.ones(3, 4, dtype=torch.int32), 1.0, 0.5)


def test_state_is_empty_unless_requested():
    y, v = torch.ops.dsr.if_spike(torch.randn(3, 4, dtype=torch.float16), 1.0, 0.5)
    assert v.numel() == 0 and v.dtype == torch.float32
    y, v = torch.ops.dsr.lif_spike(torch.randn(3, 4, dtype=torch.float64), 1.0, 0.3, 2.0, 0.05, None, True)
    assert v.shape == (4,) and v.dtype == torch.float64


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize(
    "make",
    [
        lambda: DSRIFNode(T=None, v_threshold=1.0, alpha=0.5),
        lambda: DSRLIFNode(T=None, v_threshold=0.3, tau=1.0, delta_t=0.05, alpha=0.3),
    ],
    ids=["IF", "LIF"],
)
def test_training_modules_same_outputs_and_gradients(make, dtype):
    torch.manual_seed(3)
    x = (torch.randn(10, 4, 6, 5) * 2).to(dtype)
    results = []
    for backend in ("torch", "auto"):
        torch.manual_seed(0)
        node = make().to(dtype)
        node.backend = backend
        xi = x.clone().requires_grad_(True)
        y = node(xi)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y).to(dtype)).sum().backward()
        results.append((y.detach(), xi.grad, node.v_threshold.grad))
    (y0, gx0, gv0), (y1, gx1, gv1) = results
    assert_bit_equal(y1, y0, "module output")
    assert_bit_equal(gx1, gx0, "input gradient")
    assert_bit_equal(gv1, gv0, "threshold gradient")
    assert (y0 != 0).any() and gx0.abs().sum() > 0


def test_lif_coefficients_rounded_from_double():
    # A decay/gain pair where 1 - fl32(decay) != fl32(1 - decay): the kernel must use the latter, like the reference.
    tau, dt = 3.0, 0.7
    beta, gain = F.lif_coefficients(tau, dt)
    assert torch.tensor(1.0 - float(torch.tensor(beta, dtype=torch.float32))) != torch.tensor(gain, dtype=torch.float32)
    x = torch.randn(30, 257) * 3
    nat, ref = run_both("lif", x, (0.5, 0.4, tau, dt))
    check_same(nat, ref, "lif tau=3 dt=0.7")
    assert math.isfinite(float(nat[1].abs().max()))
