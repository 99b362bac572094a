"""The TensorRT plugins, host side: built against the TensorRT headers and a stub libnvinfer, self-tested and loaded
without a TensorRT runtime.

Needs the TensorRT headers ($TENSORRT_ROOT/include/NvInferRuntime.h; no pip package ships them) and nvcc; skips
otherwise (so it skips in CI, which has no TENSORRT_ROOT; tests/test_tensorrt_runner.py covers the CMake search
and refusal and the Python loading without headers). The stub libnvinfer (plugins/tensorrt/tests/stub_nvinfer.cpp,
built here as libnvinfer.so.<major>) defines getPluginRegistry, the one libnvinfer symbol the plugin uses, with a
recording registry. Engines and enqueue need TensorRT and a GPU and are not exercised here (see plugins/README.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from _native_util import repo_root

from dsr_deploy import plugin_build, plugins

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


def test_plugin_selftest(built):
    build = built["build"]
    rc, out = _run([str(build / "dsr_trt_plugin_selftest"), str(build / plugins.TRT_LIBRARY),
                    str(build / plugins.TRT_DYNAMIC_LIBRARY)], )
    assert rc == 0 and "self-test: passed (0 failures)" in out, out


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
    assert count == "6" and sorted(names.strip(";").split(";")) == [
        "DSRIFSpike@dsr", "DSRIFSpikeQ@dsr", "DSRIFStep@dsr", "DSRLIFSpike@dsr", "DSRLIFSpikeQ@dsr", "DSRLIFStep@dsr"]


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
