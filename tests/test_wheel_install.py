"""The ordinary install: a wheel built from this repository, installed into a fresh venv (no system site-packages,
nothing from this checkout on its path), then `dsr-deploy plugins build` and the custom-op backends.

Checks what a pip user gets: the plugin sources ship inside the package; the build lands in the per-user cache (here
$DSR_DEPLOY_CACHE_DIR), not in site-packages; `import dsr_deploy` registers the native torch kernels so
`torch.ops.dsr.if_spike` is native from the first call (and not with DSR_DEPLOY_NATIVE=0); the ONNX Runtime library
(built with no ONNX Runtime SDK) runs a dsr node in the installed onnxruntime; both bit-exact with the reference.
Slow (installs torch into the venv from the local wheel cache, compiles the torch op): about two minutes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from _native_util import repo_root

pytestmark = pytest.mark.slow

CHECK = textwrap.dedent('''
    import json, os, sys, sysconfig
    import numpy as np
    import torch
    import dsr_deploy
    from dsr_deploy import ops, plugins

    site = sysconfig.get_paths()["purelib"]
    out = {"package": dsr_deploy.__file__, "site": site, "native": ops.native_status(),
           "cpu_kernel": torch._C._dispatch_has_kernel_for_dispatch_key("dsr::if_spike", "CPU")}
    if os.environ.get("DSR_DEPLOY_NATIVE") == "0":
        print(json.dumps(out)); sys.exit(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 3, 257, generator=g) * 2
    y, _ = torch.ops.dsr.if_spike(x, 1.0, 0.5, None, False)        # straight after import: no wrapper first
    ref, _ = ops.if_spike(x, 1.0, 0.5, native=False)
    out["torch_op_bit_exact"] = bool(torch.equal(y.view(torch.int32), ref.view(torch.int32)))
    out["spikes"] = int((y != 0).sum())

    import onnxruntime as ort
    from onnx import TensorProto, helper
    node = helper.make_node("DSRLIFSpike", ["x"], ["y"], domain="dsr", v_threshold=0.3, alpha=0.3, tau=1.0,
                            delta_t=0.05)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("dsr", 1)])
    so = ort.SessionOptions()
    out["ort_registered"] = plugins.register_ort_custom_ops(so)
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    xl = (np.random.default_rng(1).standard_normal((12, 2, 300)) * 0.5).astype(np.float32)
    (yl,) = sess.run(None, {"x": xl})
    refl, _ = ops.lif_spike(torch.from_numpy(xl), 0.3, 0.3, 1.0, 0.05, native=False)
    out["ort_bit_exact"] = bool(np.array_equal(yl.view(np.int32), refl.numpy().view(np.int32)))
    out["ort_spikes"] = int((yl != 0).sum())
    out["ort_library"] = str(plugins.ort_library())
    print(json.dumps(out))
''')


def run(cmd, **kw):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=900, **kw)
    assert proc.returncode == 0, f"{cmd}: {proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_wheel_in_a_fresh_venv_builds_and_runs_the_native_kernels(tmp_path):
    if shutil.which("cmake") is None or shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no cmake or C++ compiler")
    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", wheels, repo_root()])
    (wheel,) = wheels.glob("dsr_deploy-*.whl")
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv])
    py = venv / "bin" / "python"
    # The torch this suite runs with (from the local wheel cache; an unpinned torch would pull a CUDA build).
    run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", f"torch=={torch.__version__.split('+')[0]}",
         wheel])

    work = tmp_path / "elsewhere"  # no checkout anywhere near
    work.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "DSR_DEPLOY_LIB_DIR", "DSR_DEPLOY_PLUGINS_SRC", "DSR_DEPLOY_NATIVE",
                        "ONNXRUNTIME_ROOT", "VIRTUAL_ENV")}
    env["DSR_DEPLOY_CACHE_DIR"] = str(tmp_path / "cache")
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    build = run([venv / "bin" / "dsr-deploy", "plugins", "build", "--no-cuda", "--json"], cwd=work, env=env)
    record = json.loads(build.stdout)
    assert set(record["libraries"]) == {"torch", "ort", "kernels"}, record["libraries"]
    cache = (tmp_path / "cache").resolve()
    for path in record["libraries"].values():
        assert Path(path).resolve().is_relative_to(cache / "plugins"), path
    assert Path(record["build_dir"]).resolve().is_relative_to(cache), record["build_dir"]
    assert record["ort_abi"]["api_version"] == 18 and record["ort_abi"]["checked_against"] is None

    out = json.loads(run([py, "-c", CHECK], cwd=work, env=env).stdout)
    assert Path(out["package"]).resolve().is_relative_to(Path(out["site"]).resolve()), out  # the installed copy
    assert out["native"]["loaded"] and out["cpu_kernel"], out
    assert Path(out["native"]["path"]).resolve().is_relative_to(cache), out
    assert out["torch_op_bit_exact"] and out["spikes"] > 0, out
    assert out["ort_registered"] and out["ort_bit_exact"] and out["ort_spikes"] > 0, out
    assert not list((Path(out["site"]) / "dsr_deploy").rglob("*.so"))  # nothing built into site-packages

    off = json.loads(run([py, "-c", CHECK], cwd=work, env={**env, "DSR_DEPLOY_NATIVE": "0"}).stdout)
    assert not off["native"]["loaded"] and not off["cpu_kernel"], off
