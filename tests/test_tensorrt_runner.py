"""The TensorRT runner's load path and the plugin-library loading, against stand-ins for ``tensorrt`` and for
torch's CUDA device calls (no GPU or TensorRT here). torch's own ``set_device`` argument check is the real one;
only the driver call under it is replaced. Loading a real engine needs a GPU: scripts/gpu_check.py does that.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import sys
import types

import pytest
import torch

from dsr_deploy.errors import UserError
from dsr_deploy.runtime import tensorrt as R


class _Engine:
    num_io_tensors = 2
    names = ("input", "output")

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_shape(self, name):
        return (-1, -1, 4)

    def get_tensor_dtype(self, name):
        return "f32"

    def get_tensor_mode(self, name):
        return "IN" if name == "input" else "OUT"


def _fake_trt(loaded=None):
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.8.0.43"
    trt.float32, trt.float16, trt.int32, trt.int8, trt.bool = "f32", "f16", "i32", "i8", "b"
    trt.TensorIOMode = types.SimpleNamespace(INPUT="IN", OUTPUT="OUT")

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, blob):
            return _Engine() if blob == b"ENGINE" else None

    class Registry:
        def load_library(self, path):
            (loaded if loaded is not None else []).append(path)
            return object()

    trt.Logger, trt.Runtime = Logger, Runtime
    trt.init_libnvinfer_plugins = lambda logger, ns: True
    trt.get_plugin_registry = lambda: Registry()
    return trt


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch sees two CUDA devices, the current one being 1; the driver's setDevice is recorded."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch._C, "_cuda_setDevice", calls.append, raising=False)
    monkeypatch.setattr(torch.cuda, "_lazy_init", lambda: None)
    return calls


@pytest.fixture
def engine_file(tmp_path, monkeypatch):
    monkeypatch.setenv("DSR_DEPLOY_LIB_DIR", str(tmp_path / "nolib"))  # no plugin library found
    monkeypatch.setattr(R, "find_plugin_library", lambda explicit=None: None)
    p = tmp_path / "m.plan"
    p.write_bytes(b"ENGINE")
    return p


def test_bare_cuda_becomes_the_current_device_once(fake_cuda, engine_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_trt())
    runner = R.TensorRTRunner(engine_file).load()  # default device "cuda"
    assert runner.device == "cuda:1" and fake_cuda == [1]
    assert [s.name for s in runner.inputs()] == ["input"] and runner.describe()["device"] == "cuda:1"
    runner = R.TensorRTRunner(engine_file, device="cuda:0").load()
    assert runner.device == "cuda:0" and fake_cuda[-1] == 0


@pytest.mark.parametrize("device, message", [("cpu", "engines run on cuda devices"), ("cuda:5", "no such device"),
                                             ("gpu0", "is not a device")])
def test_bad_devices_are_one_line_errors(fake_cuda, engine_file, monkeypatch, device, message):
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_trt())
    with pytest.raises(UserError, match=message):
        R.TensorRTRunner(engine_file, device=device).load()
    assert fake_cuda == []


# -- plugin libraries: which is loaded how ----------------------------------------------------------------

def _cc():
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    return cc


def _shared_lib(tmp_path, name, source):
    src = tmp_path / (name + ".c")
    src.write_text(source)
    out = tmp_path / name
    subprocess.run([_cc(), "-shared", "-fPIC", str(src), "-o", str(out)], check=True, capture_output=True)
    return out


def test_getcreators_library_goes_through_the_registry(tmp_path, monkeypatch):
    dyn = _shared_lib(tmp_path, "libdsr_trt_plugin_dynamic.so",
                      "int* getCreators(int* n) { *n = 0; return 0; }\nvoid setLoggerFinder(void* f) {}\n")
    static = _shared_lib(tmp_path, "libstatic.so", "int registered = 0;\n"
                         "__attribute__((constructor)) static void reg(void) { registered = 4; }\n")
    assert R.plugin_loading(dyn) == "registry" and R.plugin_loading(static) == "dlopen"
    monkeypatch.setattr(R, "_loaded_plugins", {})
    loaded = []
    assert R.load_plugin_library(dyn, _fake_trt(loaded)) == "registry"
    assert loaded == [str(dyn.resolve())]
    assert R.load_plugin_library(dyn, _fake_trt(loaded)) == "registry" and len(loaded) == 1  # once per process
    with pytest.raises(UserError, match="already loaded .* one dsr plugin library per process"):
        R.load_plugin_library(static)
    monkeypatch.setattr(R, "_loaded_plugins", {})
    assert R.load_plugin_library(static) == "dlopen"
    assert ctypes.c_int.in_dll(ctypes.CDLL(str(static)), "registered").value == 4


def test_the_dynamic_library_is_preferred(tmp_path, monkeypatch):
    monkeypatch.setenv("DSR_DEPLOY_LIB_DIR", str(tmp_path))
    (tmp_path / R.TRT_PLUGIN_LIBRARY).write_bytes(b"")
    assert R.find_plugin_library() == tmp_path / R.TRT_PLUGIN_LIBRARY
    (tmp_path / R.TRT_DYNAMIC_PLUGIN_LIBRARY).write_bytes(b"")
    assert R.find_plugin_library() == tmp_path / R.TRT_DYNAMIC_PLUGIN_LIBRARY


def test_unloadable_library_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(R, "_loaded_plugins", {})
    bad = tmp_path / "libbroken.so"
    bad.write_bytes(b"not an ELF file")
    with pytest.raises(UserError, match=r"cannot load TensorRT plugin library .*libbroken.so \(dlopen\)"):
        R.load_plugin_library(bad)


# -- plugins/CMakeLists.txt: where libnvinfer is found, and the refusal without it (no TensorRT, CUDA needed) --

def _fake_trt_root(tmp_path, major=10):
    root = tmp_path / "trt"
    (root / "include").mkdir(parents=True)
    (root / "include" / "NvInferRuntime.h").write_text("// headers-only stand-in\n")
    (root / "include" / "NvInferVersion.h").write_text(f"#define NV_TENSORRT_MAJOR {major}\n")
    return root


def _configure(tmp_path, root, *extra):
    from dsr_deploy import plugins

    cmake = shutil.which("cmake")
    if cmake is None or not (shutil.which("c++") or shutil.which("g++")):
        pytest.skip("cmake or a C++ compiler not installed")
    cmd = [cmake, "-S", str(plugins.source_dir()), "-B", str(tmp_path / "build"), "-DDSR_BUILD_TORCH=OFF",
           "-DDSR_BUILD_CUDA=OFF", "-DDSR_BUILD_TRT=ON", f"-DTENSORRT_ROOT={root}",
           *(["-G", "Ninja"] if shutil.which("ninja") else []), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize("layout", ["lib/libnvinfer.so", "libnvinfer.so.10", "lib/x86_64-linux-gnu/libnvinfer.so.10",
                                    "targets/x86_64-linux-gnu/lib/libnvinfer.so"])
def test_cmake_finds_libnvinfer_in_every_layout(tmp_path, layout):
    """A tarball (lib/), a pip wheel's tensorrt_libs/ (only libnvinfer.so.N, in the root), Debian multiarch, the
    CUDA-style targets/ folder."""
    root = _fake_trt_root(tmp_path)
    lib = root / layout
    lib.parent.mkdir(parents=True, exist_ok=True)
    lib.write_bytes(b"")
    _rc, out = _configure(tmp_path, root)
    assert f"dsr: libnvinfer for TensorRT 10: {lib}" in out
    assert "NOT BUILT" not in out


def test_cmake_refuses_the_static_library_without_libnvinfer(tmp_path):
    # Headers of a major no real TensorRT has: a system libnvinfer (of a real major) is ignored, as is this one.
    root = _fake_trt_root(tmp_path, major=99)
    (root / "lib").mkdir()
    (root / "lib" / "libnvinfer.so.98").write_bytes(b"")
    (root / "lib" / "libnvinfer.so").symlink_to("libnvinfer.so.98")  # found by name, refused by its major
    rc, out = _configure(tmp_path, root, "-DDSR_TRT_REQUIRE_STATIC=ON")
    assert rc != 0 and "TensorRT 98; the headers are TensorRT 99" in " ".join(out.split())
    lines = [ln for ln in out.splitlines() if "NOT BUILT" in ln]
    assert len(lines) == 1 and lines[0].startswith("dsr: libdsr_trt_plugin.so NOT BUILT: libnvinfer")
    from dsr_deploy.plugins import TRT_NOT_BUILT

    assert TRT_NOT_BUILT in lines[0]  # the line `plugins build` reports
    # Without DSR_TRT_REQUIRE_STATIC the same line is printed and the configure goes on (to the CUDA check here).
    rc, out = _configure(tmp_path / "b", root)
    assert sum("NOT BUILT" in ln for ln in out.splitlines()) == 1 and "needs DSR_BUILD_CUDA=ON" in out
