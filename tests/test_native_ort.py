"""libdsr_ort_ops.so in the pip onnxruntime: hand-built ONNX models with dsr custom nodes vs the Python reference.

The library needs no ONNX Runtime SDK (plugins/onnxruntime/dsr_ort_abi.h declares the ABI it uses): `make test`
builds it, and these tests build it themselves when it is missing. Also here: the clear refusal of an ONNX Runtime
older than the API version targeted (through a fake OrtApiBase), and the compile-time check of the ABI declaration
(plugins/onnxruntime/dsr_ort_abi_check.cpp) exercised on declarations with one deliberate difference.
"""

from __future__ import annotations

import ctypes
import math
import subprocess

import numpy as np
import pytest
import torch
from _native_util import dsr_node_model, ensure_ort_library, f32, repo_root
from hypothesis import given, settings
from hypothesis import strategies as st

from dsr_deploy import ops, plugins

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def ort_lib():
    return ensure_ort_library()


def lif_attrs(vth, alpha, tau, dt, with_coefficients=True):
    attrs = dict(v_threshold=vth, alpha=alpha, tau=tau, delta_t=dt)
    if with_coefficients:
        beta = math.exp(-dt / tau)
        attrs.update(decay=float(np.float32(beta)), gain=float(np.float32(1.0 - beta)))
    return attrs


def session(model, threads=0):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    assert plugins.register_ort_custom_ops(so)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def reference(kind, x, attrs, v_init=None):
    xt = torch.from_numpy(x)
    vi = None if v_init is None else torch.from_numpy(v_init)
    if kind == "if":
        y, v = ops.if_spike(xt, attrs["v_threshold"], attrs["alpha"], vi, True, native=False)
    else:
        y, v = ops.lif_spike(xt, attrs["v_threshold"], attrs["alpha"], attrs["tau"], attrs["delta_t"], vi, True,
                             native=False)
    return y.numpy(), v.numpy()


def assert_bits(a, b, what):
    assert a.dtype == b.dtype and a.dtype in (np.float32, np.float16) and a.shape == b.shape, what
    ints = np.int32 if a.dtype == np.float32 else np.int16
    diff = a.view(ints) != b.view(ints)
    assert not diff.any(), f"{what}: {int(diff.sum())} of {a.size} differ"


@settings(max_examples=12, deadline=None)
@given(
    kind=st.sampled_from(["if", "lif"]),
    T=st.integers(1, 25),
    step_shape=st.lists(st.integers(1, 30), min_size=0, max_size=3),
    vth=st.floats(0.05, 8.0).map(f32),
    alpha=st.floats(0.05, 1.0).map(f32),
    tau=st.floats(0.2, 5.0).map(f32),
    dt=st.floats(0.01, 1.0).map(f32),
    seed=st.integers(0, 2**31 - 1),
)
def test_spike_ops_bit_exact(kind, T, step_shape, vth, alpha, tau, dt, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal([T, *step_shape]) * vth * 1.5).astype(np.float32)
    if kind == "if":
        attrs = dict(v_threshold=vth, alpha=alpha)
        model = dsr_node_model("DSRIFSpike", attrs)
    else:
        attrs = lif_attrs(vth, alpha, tau, dt)
        model = dsr_node_model("DSRLIFSpike", attrs)
    (y,) = session(model).run(None, {"x": x})
    assert_bits(y, reference(kind, x, attrs)[0], f"{kind} {x.shape}")


def test_lif_without_coefficients_computes_them_in_double():
    attrs = lif_attrs(f32(0.3), f32(0.3), f32(1.0), f32(0.05), with_coefficients=False)
    x = (np.random.default_rng(0).standard_normal((20, 3, 77)) * 0.5).astype(np.float32)
    (y,) = session(dsr_node_model("DSRLIFSpike", attrs)).run(None, {"x": x})
    ref = reference("lif", x, attrs)[0]
    assert_bits(y, ref, "lif without decay/gain")
    assert (y != 0).any()


@pytest.mark.parametrize("kind", ["if", "lif"])
def test_threads_and_large_inputs(kind):
    # Large enough to go through ORT's thread pool; one thread and two give the same bits.
    attrs = dict(v_threshold=6.0, alpha=0.5) if kind == "if" else lif_attrs(f32(0.3), f32(0.3), 1.0, f32(0.05))
    op = "DSRIFSpike" if kind == "if" else "DSRLIFSpike"
    x = (np.random.default_rng(1).standard_normal((20, 8, 4097)) * (4 if kind == "if" else 1)).astype(np.float32)
    ref = reference(kind, x, attrs)[0]
    for threads in (1, 2):
        (y,) = session(dsr_node_model(op, attrs), threads).run(None, {"x": x})
        assert_bits(y, ref, f"{kind} threads={threads}")


@pytest.mark.parametrize("kind", ["if", "lif"])
def test_step_ops_chain_equals_sequence(kind):
    attrs = dict(v_threshold=1.0, alpha=0.5) if kind == "if" else lif_attrs(f32(0.3), f32(0.3), 1.0, f32(0.05))
    op = "DSRIFStep" if kind == "if" else "DSRLIFStep"
    x = (np.random.default_rng(2).standard_normal((9, 2, 5, 3)) * 2).astype(np.float32)
    v0 = np.random.default_rng(3).standard_normal((2, 5, 3)).astype(np.float32)
    sess = session(dsr_node_model(op, attrs, step=True))
    v, ys = v0, []
    for t in range(x.shape[0]):
        y_t, v = sess.run(None, {"x": x[t], "v": v})
        ys.append(y_t)
    ref_y, ref_v = reference(kind, x, attrs, v0)
    assert_bits(np.stack(ys), ref_y, f"{op} outputs")
    assert_bits(v, ref_v, f"{op} final membrane")


def test_nan_inf_and_empty_time():
    attrs = dict(v_threshold=1.0, alpha=0.5)
    sess = session(dsr_node_model("DSRIFSpike", attrs))
    x = np.random.default_rng(4).standard_normal((6, 40)).astype(np.float32)
    x[0, :3] = np.nan
    x[1, 3:6] = np.inf
    x[2, 6:9] = -np.inf
    (y,) = sess.run(None, {"x": x})
    assert_bits(y, reference("if", x, attrs)[0], "NaN/inf")
    (y,) = sess.run(None, {"x": np.zeros((0, 4, 5), np.float32)})
    assert y.shape == (0, 4, 5)


def test_missing_attribute_is_a_clear_error():
    with pytest.raises(Exception, match="v_threshold and alpha are required"):
        session(dsr_node_model("DSRIFSpike", dict(alpha=0.5))).run(None, {"x": np.zeros((2, 3), np.float32)})


def test_step_shape_mismatch_is_a_clear_error():
    sess = session(dsr_node_model("DSRIFStep", dict(v_threshold=1.0, alpha=0.5), step=True))
    with pytest.raises(Exception, match="v has shape"):
        sess.run(None, {"x": np.zeros((2, 3), np.float32), "v": np.zeros((3, 2), np.float32)})


@pytest.mark.parametrize("kind", ["if", "lif"])
def test_float16_inputs(kind):
    # float16 x / y with a float32 membrane, as the reference computes float16 inputs.
    attrs = dict(v_threshold=1.0, alpha=0.5) if kind == "if" else lif_attrs(f32(0.3), f32(0.3), 1.0, f32(0.05))
    x = (np.random.default_rng(5).standard_normal((11, 3, 129)) * 2).astype(np.float16)
    name = "DSRIFSpike" if kind == "if" else "DSRLIFSpike"
    (y,) = session(dsr_node_model(name, attrs, elem=TensorProto.FLOAT16)).run(None, {"x": x})
    ref_y, ref_v = reference(kind, x, attrs)
    assert_bits(y, ref_y, f"{name} float16")
    step = session(dsr_node_model(name.replace("Spike", "Step"), attrs, step=True, elem=TensorProto.FLOAT16))
    v = np.zeros(x.shape[1:], np.float32)
    ys = []
    for t in range(x.shape[0]):
        y_t, v = step.run(None, {"x": x[t], "v": v})
        ys.append(y_t)
    assert_bits(np.stack(ys), ref_y, "float16 steps")
    assert_bits(v, ref_v, "float16 steps final membrane")


# ---- registration into an ONNX Runtime that is too old -----------------------------------------------------------

GET_API = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_uint32)
GET_VERSION = ctypes.CFUNCTYPE(ctypes.c_void_p)  # a const char* the callee owns
CREATE_STATUS = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p)


class FakeOrtApiBase(ctypes.Structure):
    _fields_ = [("GetApi", GET_API), ("GetVersionString", GET_VERSION)]


def fake_api_base(served_versions, version_string=b"1.17.3"):
    """An OrtApiBase whose GetApi serves only ``served_versions`` (with a table whose entry 0, CreateStatus, records
    what it is given) and returns null for every other version, as an older ONNX Runtime does."""
    record = {"asked": [], "statuses": []}
    sentinel = 0x5D5

    def create_status(code, msg):
        record["statuses"].append((code, msg.decode()))
        return sentinel

    keep = [CREATE_STATUS(create_status)]
    table = (ctypes.c_void_p * 8)(ctypes.cast(keep[0], ctypes.c_void_p).value)

    def get_api(version):
        record["asked"].append(version)
        return ctypes.addressof(table) if version in served_versions else None

    version = ctypes.create_string_buffer(version_string)
    keep += [GET_API(get_api), GET_VERSION(lambda: ctypes.addressof(version)), table, version]
    base = FakeOrtApiBase(keep[1], keep[2])
    record["keep"] = keep
    return base, record, sentinel


def register_custom_ops(lib_path, base):
    fn = ctypes.CDLL(str(lib_path)).RegisterCustomOps
    fn.restype = ctypes.c_void_p
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    return fn(None, ctypes.addressof(base))


def test_an_onnxruntime_older_than_api_18_gets_one_clear_error(ort_lib):
    # GetApi(18) is null (ONNX Runtime 1.17 serves up to 17); the library says so through API 1's CreateStatus.
    base, record, sentinel = fake_api_base(served_versions={1})
    assert register_custom_ops(ort_lib, base) == sentinel
    assert record["asked"] == [18, 1]
    assert record["statuses"] == [(1, "libdsr_ort_ops needs ONNX Runtime >= 1.18 (OrtApi 18), but this ONNX Runtime "
                                      "(1.17.3) does not provide it")]  # 1 = ORT_FAIL


def test_an_api_base_that_serves_nothing_does_not_crash(ort_lib, capfd):
    # A GetApi that returns null for every version: no status can be made; the library registers nothing, says why
    # on stderr and returns (null) instead of calling through a null table.
    base, record, _ = fake_api_base(served_versions=set(), version_string=b"0.0.1")
    assert register_custom_ops(ort_lib, base) is None
    assert record["asked"] == [18, 1] and record["statuses"] == []
    err = capfd.readouterr().err
    assert "libdsr_ort_ops needs ONNX Runtime >= 1.18 (OrtApi 18), but this ONNX Runtime (0.0.1)" in err


def test_the_installed_onnxruntime_serves_the_targeted_api(ort_lib):
    # The real OrtGetApiBase of the installed onnxruntime: registration succeeds (ORT's own status, null = OK).
    so = ort.SessionOptions()
    so.register_custom_ops_library(str(ort_lib))
    sess = ort.InferenceSession(dsr_node_model("DSRIFSpike", dict(v_threshold=1.0, alpha=0.5)).SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"x": np.full((3, 2), 0.6, np.float32)})
    assert y.tolist() == [[1.0, 1.0], [0.0, 0.0], [1.0, 1.0]]  # v: 0.6 fires (>= 0.5), -0.4, 0.2, 0.8 fires


# ---- the compile-time check of the ABI declaration ---------------------------------------------------------------
# plugins/onnxruntime/dsr_ort_abi_check.cpp compares dsr_ort_abi.h with an official onnxruntime_c_api.h when the build
# is given one (`plugins build --ort-root`; see plugins/onnxruntime/README.md). No official header is in the
# repository, so here the check runs against dsr's own declaration standing in for it (must pass) and against
# copies of it with one ABI difference each (must fail, naming it): the check can fail, and says where.

ORT_DIR = repo_root() / "plugins" / "onnxruntime"


def abi_check(tmp_path, edit=None):
    text = (ORT_DIR / "dsr_ort_abi.h").read_text()
    stand_in = text.replace("DSR_ORT_ABI_H", "STAND_IN_OFFICIAL_H")
    if edit:
        old, new = edit
        assert old in stand_in, old
        stand_in = stand_in.replace(old, new)
    inc = tmp_path / "include"
    inc.mkdir(exist_ok=True)
    (inc / "onnxruntime_c_api.h").write_text("#define ORT_API_VERSION 18\n" + stand_in)
    cxx = plugins.detect()["cxx"]["path"]
    if cxx is None:
        pytest.skip("no C++ compiler")
    return subprocess.run([cxx, "-std=c++17", "-fsyntax-only", f"-I{inc}", f"-I{ORT_DIR}",
                           str(ORT_DIR / "dsr_ort_abi_check.cpp")], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("edit, message", [
    (None, None),
    (("(*GetDimensionsCount)(const OrtTensorTypeAndShapeInfo* info, size_t* out)",
      "(*GetDimensionsCount)(const OrtTensorTypeAndShapeInfo* info, int64_t* out)"),
     "OrtApi::GetDimensionsCount: signature differs"),
    (("void (*ReleaseStatus)(OrtStatus* input);", "void (*ReleaseStatus)(OrtStatus* input) noexcept;"),
     "OrtApi::ReleaseStatus: signature differs"),
    (("ORT_EP_FAIL = 11", "ORT_EP_FAIL = 12"), "ORT_EP_FAIL value"),
    (("int (*GetStartVersion)(const OrtCustomOp* op);", "long (*GetStartVersion)(const OrtCustomOp* op);"),
     "OrtCustomOp::GetStartVersion: type differs"),
    (("const char* (*GetVersionString)(void) noexcept;", "const char* (*GetVersionString)(int) noexcept;"),
     "OrtApiBase::GetVersionString: type differs"),
], ids=["identical", "entry-signature", "noexcept", "enum-value", "custom-op-field", "api-base"])
def test_abi_check_passes_on_the_same_abi_and_names_a_difference(tmp_path, edit, message):
    proc = abi_check(tmp_path, edit)
    if message is None:
        assert proc.returncode == 0, proc.stderr[-2000:]
    else:
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]
