"""The TensorRT plugins, host side: built against the TensorRT headers and a stub libnvinfer, self-tested and loaded
without a TensorRT runtime.

Needs the TensorRT headers ($TENSORRT_ROOT/include/NvInferRuntime.h; no pip package ships them) and nvcc; skips
otherwise (so it skips in CI, which has no TENSORRT_ROOT; tests/test_tensorrt_runner.py covers the CMake search
and refusal and the Python loading without headers). The stub libnvinfer (plugins/tensorrt/tests/stub_nvinfer.cpp,
built here as libnvinfer.so.<major>) defines getPluginRegistry, the one libnvinfer symbol the plugin uses, with a
recording registry. Engines need TensorRT and a GPU and are not built here (see plugins/README.md); the plugins'
enqueue runs on host memory over the host-emulated CUDA core (DSR's in tests/test_cuda_emulation.py, SpikingJelly's
here), bit-exact with the reference.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from _native_util import repo_root

from dsr_deploy import contract, plugin_build, plugins

FOUND = plugins.detect(trt_root=os.environ.get("TENSORRT_ROOT"))
pytestmark = [
    pytest.mark.skipif(not FOUND["trt"]["available"], reason=str(FOUND["trt"].get("reason"))),
    pytest.mark.skipif(not FOUND["cuda"]["available"], reason="nvcc not found: the plugins need the CUDA kernels"),
]


def _major() -> str:
    t = FOUND["trt"]
    return next(v for v in (t.get("TRT_MAJOR_ENTERPRISE"), t.get("NV_TENSORRT_MAJOR")) if v and v.isdigit())


def _configure(build: Path, *extra: str) -> list:
    cmd = [FOUND["cmake"]["path"], "-S", str(repo_root() / "plugins"), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
           "-DDSR_BUILD_TORCH=OFF", "-DDSR_BUILD_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=90",
           f"-DCMAKE_CUDA_COMPILER={FOUND['cuda']['nvcc']}", "-DDSR_BUILD_TRT=ON",
           f"-DTENSORRT_ROOT={FOUND['trt']['root']}", *extra]
    if shutil.which("ninja"):
        cmd += ["-G", "Ninja"]
    return cmd


def _run(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, **kw)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The stub libnvinfer.so.<major> in stub/, and both plugin libraries linked against it in build/."""
    tmp = tmp_path_factory.mktemp("trt")
    stub_dir = tmp / "stub"
    stub_dir.mkdir()
    soname = f"libnvinfer.so.{_major()}"
    cuda_inc = Path(FOUND["cuda"]["root"] or "/usr/local/cuda") / "include"
    src = repo_root() / "plugins" / "tensorrt" / "tests"
    rc, out = _run([FOUND["cxx"]["path"], "-std=c++17", "-shared", "-fPIC", "-Wno-deprecated-declarations",
                    f"-I{FOUND['trt']['include']}", f"-I{cuda_inc}", f"-I{src}", f"-Wl,-soname,{soname}",
                    str(src / "stub_nvinfer.cpp"), "-o", str(stub_dir / soname)])
    assert rc == 0, out[-3000:]
    build = tmp / "build"
    for cmd in (_configure(build, f"-DTENSORRT_LIB_DIR={stub_dir}"),
                [FOUND["cmake"]["path"], "--build", str(build), "--parallel", "2"]):
        rc, out = _run(cmd)
        assert rc == 0, out[-3000:]
    return {"stub": stub_dir / soname, "build": build, "tmp": tmp}


def _selftest(built) -> str:
    build = built["build"]
    rc, out = _run([str(build / "dsr_trt_plugin_selftest"), str(build / plugins.TRT_LIBRARY),
                    str(build / plugins.TRT_DYNAMIC_LIBRARY)], )
    assert rc == 0 and "self-test: passed (0 failures)" in out, out
    return out


def test_plugin_selftest(built):
    _selftest(built)


#: How the ONNX parser hands an attribute of the op table to a creator field (an int attribute as the creator's
#: declared kINT32).
FIELD_TYPE = {"float32": "float32", "int64": "int32"}


def _table_fields(spec: dict) -> dict[str, list[tuple[str, str]]]:
    """{plugin name: [(field, type)]} as plugins/ops.json says (the string lookup attributes are no fields)."""
    out = {}
    for form in spec["forms"]:
        if not form["tensorrt_plugin"]:
            continue
        for key, op in form["ops"].items():
            attrs = spec[form.get("attributes", "attributes")]
            out[op] = [(a["name"], FIELD_TYPE[a["type"]]) for a in attrs if a["type"] != "string"
                       and (a["ops"] == "all" or a["ops"] == key or (isinstance(a["ops"], list) and key in a["ops"]))]
    return out


def test_registered_fields_are_the_op_table(built):
    """Every creator's fields (name and type, in order) are its op's attributes in plugins/ops.json, and every op
    the table marks for TensorRT has a creator: SpikingJelly's six with v_threshold, v_reset, hard_reset (+ leak,
    decay_input)."""
    spec = json.loads((repo_root() / "plugins" / "ops.json").read_text())
    got = {}
    for line in _selftest(built).splitlines():
        if line.startswith("fields "):
            name, _, rest = line[len("fields "):].partition(":")
            got[name] = [tuple(f.rsplit(":", 1)) for f in rest.split()]
    want = _table_fields(spec)
    assert got == want
    assert got["SJLIFStep"] == [("v_threshold", "float32"), ("v_reset", "float32"), ("hard_reset", "int32"),
                                ("leak", "float32"), ("decay_input", "int32")]
    assert sorted(got) == sorted(contract.TENSORRT_PLUGIN_OPS)


def test_the_field_check_can_fail():
    spec = json.loads((repo_root() / "plugins" / "ops.json").read_text())
    spec["sj_attributes"][1]["name"] = "v_rest"
    assert _table_fields(spec)["SJIFSpike"][1] == ("v_rest", "float32")


def test_static_library_needs_libnvinfer_and_leaves_nothing_undefined(built):
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("readelf not installed")
    lib = built["build"] / plugins.TRT_LIBRARY
    _rc, dyn = _run([readelf, "-d", str(lib)])
    assert f"[{built['stub'].name}]" in dyn  # NEEDED libnvinfer.so.<major>
    _rc, syms = _run([readelf, "--dyn-syms", "-W", str(lib)])
    undefined = [ln.split()[-1] for ln in syms.splitlines() if " UND " in ln and ln.split()[-1] != "UND"]
    assert "getPluginRegistry" in " ".join(undefined)  # resolved from libnvinfer, which is NEEDED
    assert plugins.elf_exports(built["build"] / plugins.TRT_DYNAMIC_LIBRARY, "getCreators")
    assert not plugins.elf_exports(lib, "getCreators")


def test_plugin_libraries_need_no_shared_cuda_runtime(built):
    """The static CUDA runtime (cudart_static): no library needs libcudart.so.<major>, so one built on CUDA 13 loads
    in a Triton image of CUDA 12.x (only a driver is required); the ONNX Runtime and ctypes libraries of the same
    build too. Before: every CUDA library had NEEDED libcudart.so.13."""
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("readelf not installed")
    build = built["build"]
    libs = [build / n for n in (plugins.TRT_LIBRARY, plugins.TRT_DYNAMIC_LIBRARY, plugins.KERNELS_LIBRARY,
                                plugins.ORT_LIBRARY)]
    for lib in libs:
        assert lib.is_file(), lib
        _rc, dyn = _run([readelf, "-d", str(lib)])
        needed = [ln.split("[")[-1].rstrip("]") for ln in dyn.splitlines() if "(NEEDED)" in ln]
        assert not [n for n in needed if n.startswith("libcudart")], (lib.name, needed)
    assert plugins.elf_exports(build / plugins.KERNELS_LIBRARY, "dsr_cuda_forward")  # the CUDA entry is there


def test_static_library_loads_in_a_fresh_process_with_only_the_stub(built):
    """As TensorRT's Python package, Triton's plugins= (RTLD_LOCAL) and LD_PRELOAD load it: nothing but the library
    and a libnvinfer of the right major in the process. Before the fix: "undefined symbol: getPluginRegistry"."""
    iso = built["tmp"] / "isolated"
    iso.mkdir(exist_ok=True)
    lib = iso / plugins.TRT_LIBRARY
    shutil.copy2(built["build"] / plugins.TRT_LIBRARY, lib)  # away from the build tree
    code = textwrap.dedent(f"""
        import ctypes, sys
        for mode in (ctypes.RTLD_LOCAL, ctypes.RTLD_GLOBAL):
            ctypes.CDLL({str(lib)!r}, mode=mode)
        stub = ctypes.CDLL({built['stub'].name!r})
        buf = ctypes.create_string_buffer(512)
        print(stub.dsr_stub_registered(buf, 512), buf.value.decode())
    """)
    env = {**os.environ, "LD_LIBRARY_PATH": f"{built['stub'].parent}:{os.environ.get('LD_LIBRARY_PATH', '')}"}
    rc, out = _run([sys.executable, "-c", code], env=env)
    assert rc == 0, out
    count, names = out.split()[:2]
    assert count == str(len(contract.TENSORRT_PLUGIN_OPS)) == "12"
    assert sorted(names.strip(";").split(";")) == sorted(f"{op}@dsr" for op in contract.TENSORRT_PLUGIN_OPS)
    assert {"SJIFSpike@dsr", "SJLIFStep@dsr", "SJPLIFSpike@dsr"} <= set(names.split(";"))


def test_without_libnvinfer_only_the_dynamic_library_is_built(built):
    build = built["tmp"] / "no-nvinfer"
    # Headers-only: TENSORRT_ROOT holds no libnvinfer (the TensorRT headers checkout), and no TENSORRT_LIB_DIR.
    rc, out = _run(_configure(build, "-DTENSORRT_LIB_DIR=", "-DDSR_TRT_REQUIRE_STATIC=ON"))
    if "libnvinfer for TensorRT" in out and "NOT BUILT" not in out:
        pytest.skip("this machine has a libnvinfer of the headers' major in its system library folders")
    assert rc != 0 and sum(plugins.TRT_NOT_BUILT in ln for ln in out.splitlines()) == 1
    # `plugins build` (the CLI's path): the static library is skipped with that one line, the dynamic one installed.
    os.environ.pop("TENSORRT_LIB_DIR", None)
    lib_dir = built["tmp"] / "lib"
    record = plugin_build.build(torch=False, cuda=True, ort=False, trt=True, trt_root=FOUND["trt"]["root"],
                           cuda_arch="90", build_dir=built["tmp"] / "cli-build", lib_dir=lib_dir)
    assert record["skipped"]["trt"].startswith("dsr: " + plugins.TRT_NOT_BUILT)
    assert set(record["libraries"]) == {"trt_dynamic", "kernels"}
    assert (lib_dir / plugins.TRT_DYNAMIC_LIBRARY).is_file() and not (lib_dir / plugins.TRT_LIBRARY).exists()


# ---- SpikingJelly plugins: enqueue over the host-emulated SJ CUDA kernel ---------------------------------------

CORE = repo_root() / "plugins" / "core"
SHIM = repo_root() / "tests" / "cuda_emulation" / "cuda_host_emulation.h"


@pytest.fixture(scope="module")
def sj_emu(tmp_path_factory):
    """tests/cuda_emulation/trt_sj_enqueue_emu.cpp with the plugin sources and both CUDA kernels compiled as host C++
    (the emulation header runs the grid as loops and the _rn intrinsics as IEEE operations)."""
    d = tmp_path_factory.mktemp("trt_sj_emu")
    cxx, src = FOUND["cxx"]["path"], repo_root() / "plugins"
    cuda_inc = Path(FOUND["cuda"]["root"] or "/usr/local/cuda") / "include"
    flags = ["-std=c++17", "-O2", "-ffp-contract=off", "-fno-trapping-math", "-DDSR_WITH_CUDA=1", f"-I{CORE}"]
    objects = []
    for kernel in ("dsr_spike_cuda.cu", "dsr_sj_cuda.cu"):
        objects.append(d / (kernel + ".o"))
        rc, out = _run([cxx, *flags, "-DDSR_CUDA_HOST_EMULATION", "-include", str(SHIM), "-x", "c++", "-c",
                        str(CORE / kernel), "-o", str(objects[-1])])
        assert rc == 0, out[-3000:]
    exe = d / "trt_sj_enqueue_emu"
    rc, out = _run([cxx, *flags, "-Wno-deprecated-declarations", f"-I{src / 'tensorrt'}",
                    f"-I{FOUND['trt']['include']}", f"-I{cuda_inc}",
                    str(repo_root() / "tests" / "cuda_emulation" / "trt_sj_enqueue_emu.cpp"),
                    str(src / "tensorrt" / "dsr_trt_plugin.cpp"), str(src / "tensorrt" / "dsr_trt_sj_plugin.cpp"),
                    str(CORE / "dsr_spike_cpu.cpp"), str(CORE / "dsr_spike_cpu_baseline.cpp"),
                    *map(str, objects), "-o", str(exe), "-pthread"])
    assert rc == 0, out[-3000:]
    return exe


def _run_sj(exe, tmp_path, op, x, vth, v_reset, leak, decay_input, v=None):
    import numpy as np
    import torch

    (tmp_path / "x.bin").write_bytes(x.contiguous().numpy().tobytes())
    if v is not None:
        (tmp_path / "v.bin").write_bytes(v.contiguous().numpy().tobytes())
    T, N = (1, x.numel()) if v is not None else (x.shape[0], x[0].numel())
    rc, out = _run([str(exe), op, str(T), str(N), repr(vth), "-" if v_reset is None else repr(v_reset),
                    str(int(v_reset is not None)), repr(leak), str(int(decay_input)), str(tmp_path)])
    assert rc == 0, (rc, out)
    read = lambda name: torch.from_numpy(np.frombuffer((tmp_path / name).read_bytes(), np.float32).copy())  # noqa: E731
    return read("y.bin").view(x.shape), (read("v_new.bin").view(v.shape) if v is not None else None)


def _f32(value: float) -> float:
    import torch

    return float(torch.tensor(value, dtype=torch.float32))


@pytest.mark.parametrize("family", ["if", "lif", "plif"])
def test_sj_plugins_enqueue_bit_exact_with_the_reference(sj_emu, tmp_path, family):
    """SJ{IF,LIF,PLIF}Spike over a whole sequence and SJ*Step chained over a stream (its v_new fed back, starting
    at v_reset as the manifest's initial state), soft and hard reset, decay_input on and off, random thresholds,
    reset values and leaks (float32 as the ONNX attributes carry them), inputs exactly at the threshold: the spikes
    and the membrane are those of dsr_deploy.functional.sj_forward (SpikingJelly 2.0's torch reference), bit for
    bit."""
    import torch

    from dsr_deploy import functional as F

    gen = torch.Generator().manual_seed(7)
    name = {"if": "IF", "lif": "LIF", "plif": "PLIF"}[family]
    decay_inputs = (True,) if family == "if" else (True, False)
    for hard, decay_input in itertools.product((False, True), decay_inputs):
        vth = _f32(float(torch.empty(()).uniform_(0.2, 2.0, generator=gen)))
        v_reset = _f32(float(torch.empty(()).uniform_(-0.5, 0.3, generator=gen))) if hard else None
        leak = _f32(float(torch.empty(()).uniform_(1.1, 6.0, generator=gen)) if family == "lif"
                    else float(torch.empty(()).uniform_(0.05, 0.95, generator=gen)))
        gain = {"if": 1.0, "lif": 1.0 / leak, "plif": leak}[family] if decay_input else 1.0  # of x into h
        x = (torch.randn(6, 3, 301, generator=gen) * vth * 2 / gain).float()
        x[0, 0, :9] = vth  # inputs at the threshold (an IF layer's first h is exactly vth: it fires)
        want_y, want_v = F.sj_forward(x, family, vth, v_reset, leak, decay_input, None, True)
        assert want_y.any() and not want_y.all()
        y, _ = _run_sj(sj_emu, tmp_path, f"SJ{name}Spike", x, vth, v_reset, leak, decay_input)
        assert torch.equal(y, want_y), (family, hard, decay_input)
        v = torch.full(x.shape[1:], 0.0 if v_reset is None else v_reset)
        ys = []
        for t in range(x.shape[0]):
            y_t, v = _run_sj(sj_emu, tmp_path, f"SJ{name}Step", x[t], vth, v_reset, leak, decay_input, v)
            ys.append(y_t)
        assert torch.equal(torch.stack(ys), want_y) and torch.equal(v, want_v), (family, hard, decay_input)


def test_sj_plugin_refuses_bad_fields(sj_emu, tmp_path):
    """A hard reset without its v_reset field cannot be created (the run stops before enqueue)."""
    import torch

    (tmp_path / "x.bin").write_bytes(torch.zeros(2, 4).numpy().tobytes())
    rc, out = _run([str(sj_emu), "SJLIFSpike", "2", "4", "1.0", "-", "1", "2.0", "1", str(tmp_path)])
    assert rc == 3 and "v_reset" in out, (rc, out)
