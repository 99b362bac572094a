"""build-engine logic that needs neither TensorRT nor a GPU: profiles, arguments, plugin discovery, errors.

The build sequence itself is driven here through a recording stand-in for the ``tensorrt`` module that
implements the documented calls used by dsr_deploy/engine.py; the real TensorRT path has not run in CI.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper
from runtime_nets import save_onnx_dsr_nodes

from dsr_deploy import engine as E
from dsr_deploy.cli import main
from dsr_deploy.errors import UserError


@pytest.fixture(scope="module")
def chain_onnx(tmp_path_factory):
    return save_onnx_dsr_nodes(tmp_path_factory.mktemp("engine") / "chain.onnx", shape_tail=(4,))


def _plain_onnx(path: Path, dims) -> Path:
    g = helper.make_graph([helper.make_node("Relu", ["input"], ["output"])], "g",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, dims)],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT, dims)])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


# -- pure logic ------------------------------------------------------------------------------------------

def test_parse_range():
    assert E.parse_range("1,8,32", "--batch") == E.Range(1, 8, 32)
    assert E.parse_range("20", "--timesteps") == E.Range(20, 20, 20)
    assert E.parse_range(None, "--batch") is None
    for bad, msg in [("1,2", "expected MIN,OPT,MAX"), ("1,a,3", "expected integers"), ("0,1,2", "MIN must be >= 1"),
                     ("8,4,16", "need MIN <= OPT <= MAX")]:
        with pytest.raises(UserError, match=msg):
            E.parse_range(bad, "--batch")


def test_plan_profile_multistep_and_streaming():
    inputs = [("input", ("T", "B", 3, 32, 32))]
    shapes = E.plan_profile(inputs, E.Range(1, 8, 32), E.Range(4, 20, 50))
    assert shapes == {"input": ((4, 1, 3, 32, 32), (20, 8, 3, 32, 32), (50, 32, 3, 32, 32))}
    streaming = [("x_t", ("B", 10)), ("v_in_0", ("B", 64, 8, 8))]
    shapes = E.plan_profile(streaming, E.Range(1, 4, 16), None)
    assert shapes == {"x_t": ((1, 10), (4, 10), (16, 10)), "v_in_0": ((1, 64, 8, 8), (4, 64, 8, 8), (16, 64, 8, 8))}
    # A fixed T needs no --timesteps (and accepts the same single value).
    assert E.plan_profile([("input", (20, None, 5))], E.Range(2, 2, 2), None)["input"][0] == (20, 2, 5)
    assert E.plan_profile([("input", (20, 2, 5))], None, E.Range(20, 20, 20))["input"][2] == (20, 2, 5)


@pytest.mark.parametrize("inputs,batch,ts,message", [
    ([("input", ("T", "B", 5))], E.Range(1, 1, 1), None, "dynamic time dimension (dim 0); pass --timesteps"),
    ([("input", ("T", "B", 5))], None, E.Range(1, 1, 1), "dynamic batch dimension (dim 1); pass --batch"),
    ([("input", (20, "B", 5))], E.Range(1, 1, 1), E.Range(1, 10, 20), "fixed time dimension of 20"),
    ([("input", ("T", "B", "C"))], E.Range(1, 1, 1), E.Range(1, 1, 1), "dimension 2 (C) is dynamic"),
])
def test_plan_profile_errors(inputs, batch, ts, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        E.plan_profile(inputs, batch, ts)


def test_read_onnx_finds_dsr_nodes_and_fallbacks(chain_onnx):
    info = E.read_onnx(chain_onnx)
    assert info.inputs == [("input", ("T", "B", 4))]
    assert info.dsr_ops == ["DSRIFSpike", "DSRLIFSpike"] and info.fallbacks == ["DSRIFSpike", "DSRLIFSpike"]


def test_read_onnx_errors(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        E.read_onnx(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x01\x02garbage")
    with pytest.raises(UserError, match="cannot read .* as ONNX"):
        E.read_onnx(bad)


def test_plugin_needs(chain_onnx, tmp_path):
    info = E.read_onnx(chain_onnx)
    assert "function fallback" in E.check_plugin_needs(info, None)
    assert E.check_plugin_needs(info, tmp_path / "lib.so") is None
    no_fallback = E.OnnxInfo(info.inputs, info.dsr_ops, [])
    with pytest.raises(UserError, match="without a function fallback"):
        E.check_plugin_needs(no_fallback, None)
    assert E.check_plugin_needs(E.OnnxInfo(info.inputs, [], []), None) is None


def test_find_plugin(tmp_path, monkeypatch):
    monkeypatch.setenv("DSR_DEPLOY_LIB_DIR", str(tmp_path))
    lib = tmp_path / "libdsr_trt_plugin.so"
    assert E.find_plugin() != lib
    lib.write_bytes(b"")
    assert E.find_plugin() == lib
    with pytest.raises(UserError, match="plugin library .* not found"):
        E.find_plugin(tmp_path / "nope.so")


# -- the build sequence, against a recording stand-in for the documented TensorRT API -------------------------

class FakeTRT(types.ModuleType):
    """The subset of the TensorRT 10 Python API that engine.py calls, recording what it is asked."""

    def __init__(self, version="10.8.0.43", creators=(("DSRIFSpike", "dsr"), ("DSRLIFSpike", "dsr")),
                 parse_ok=True, build_ok=True):
        super().__init__("tensorrt")
        self.__version__ = version
        self.version_tuple = tuple(int(p) for p in version.split(".")[:2])
        self.plugins_loaded = False
        self.calls = []
        self.creators = set(creators)
        self.parse_ok, self.build_ok = parse_ok, build_ok
        fake = self

        class Logger:
            WARNING = 2

            def __init__(self, level):
                fake.calls.append(("Logger", level))

        class Input:
            def __init__(self, name):
                self.name = name

        class Layer:
            def __init__(self, type_):
                self.type = type_

        class Network:
            def __init__(self):
                self.inputs = []
                self.layers = []

            @property
            def num_layers(self):
                return len(self.layers)

            def get_layer(self, i):
                return self.layers[i]

            @property
            def num_inputs(self):
                return len(self.inputs)

            def get_input(self, i):
                return self.inputs[i]

        class Error:
            def desc(self):
                return "In node 3 (parseGraph): INVALID_NODE: something"

        class Parser:
            def __init__(self, network, logger):
                self.network = network
                self.num_errors = 0

            def parse_from_file(self, path):
                fake.calls.append(("parse_from_file", path))
                if not fake.parse_ok:
                    self.num_errors = 2
                    return False
                m = onnx.load(path)
                self.network.inputs = [Input(i.name) for i in m.graph.input]
                # onnx-tensorrt's precedence: a registered plugin beats a same-named local function from 10.7 on.
                functions = {f.name for f in m.functions if f.domain == "dsr"}
                plugins_win = fake.version_tuple >= (10, 7)
                for node in m.graph.node:
                    if node.domain != "dsr":
                        self.network.layers.append(Layer("ELEMENTWISE"))
                    elif (node.op_type in {c for c, _ in fake.creators} and fake.plugins_loaded
                          and (plugins_win or node.op_type not in functions)):
                        self.network.layers.append(Layer("PLUGIN_V3"))
                    else:  # the Scan body: a loop of elementwise layers
                        self.network.layers += [Layer("TRIP_LIMIT"), Layer("RECURRENCE"), Layer("ELEMENTWISE")]
                return True

            def get_error(self, i):
                return Error()

        class Cache:
            def __init__(self, blob):
                self.blob = blob

            def serialize(self):
                return b"CACHE:" + bytes(self.blob)

        class Config:
            def set_memory_pool_limit(self, pool, size):
                fake.calls.append(("workspace", pool, size))

            def set_flag(self, flag):
                fake.calls.append(("flag", flag))

            def add_optimization_profile(self, profile):
                fake.calls.append(("profile", dict(profile.shapes)))

            def create_timing_cache(self, blob):
                return Cache(blob)

            def set_timing_cache(self, cache, ignore_mismatch):
                self.cache = cache
                fake.calls.append(("timing_cache", bytes(cache.blob)))
                return True

            def get_timing_cache(self):
                return self.cache

        class Profile:
            def __init__(self):
                self.shapes = {}

            def set_shape(self, name, lo, opt, hi):
                self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

        class Builder:
            platform_has_fast_fp16 = True

            def __init__(self, logger):
                pass

            def create_network(self, flags):
                fake.calls.append(("create_network", flags))
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                return b"ENGINE-BYTES" if fake.build_ok else None

        class Registry:
            def get_creator(self, name, version, namespace):
                return object() if (name, namespace) in fake.creators and version == "1" else None

        self.Logger, self.Builder, self.OnnxParser = Logger, Builder, Parser
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
        self.BuilderFlag = types.SimpleNamespace(FP16="FP16")
        self.LayerType = types.SimpleNamespace(PLUGIN_V2="PLUGIN_V2", PLUGIN_V3="PLUGIN_V3", TRIP_LIMIT="TRIP_LIMIT",
                                               RECURRENCE="RECURRENCE", ELEMENTWISE="ELEMENTWISE")
        self.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)
        self.init_libnvinfer_plugins = lambda logger, ns: fake.calls.append(("init_plugins", ns))
        self.get_plugin_registry = lambda: Registry()


@pytest.fixture
def fake_trt(monkeypatch, tmp_path):
    def install(**kw):
        trt = FakeTRT(**kw)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setattr(E, "_require_gpu", lambda: None)
        loaded = []

        def load(path, trt_module=None):
            loaded.append(Path(path))
            trt.plugins_loaded = True
            return "dlopen"

        monkeypatch.setattr("dsr_deploy.runtime.tensorrt.load_plugin_library", load)
        trt.loaded_plugins = loaded
        return trt

    return install


def test_build_with_plugin_profile_workspace_cache(fake_trt, chain_onnx, tmp_path):
    trt = fake_trt()
    plugin = tmp_path / "libdsr_trt_plugin.so"
    plugin.write_bytes(b"")
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"OLD")
    out = tmp_path / "model.plan"
    summary = E.build_engine(chain_onnx, out, batch=E.Range(1, 8, 32), timesteps=E.Range(1, 20, 50),
                             workspace_mb=512, timing_cache=cache, plugin=plugin, fp16=True, log=lambda m: None)
    assert out.read_bytes() == b"ENGINE-BYTES"
    assert cache.read_bytes() == b"CACHE:OLD"
    assert trt.loaded_plugins == [plugin]
    assert ("workspace", "WORKSPACE", 512 << 20) in trt.calls and ("flag", "FP16") in trt.calls
    assert ("create_network", 0) in trt.calls and ("timing_cache", b"OLD") in trt.calls
    assert ("profile", {"input": ((1, 1, 4), (20, 8, 4), (50, 32, 4))}) in trt.calls
    assert summary["plugin_creators"] == {"DSRIFSpike": "dsr", "DSRLIFSpike": "dsr"}
    assert summary["profile"]["input"] == [[1, 1, 4], [20, 8, 4], [50, 32, 4]]
    # The plugin library is loaded before the parser runs (so the parser sees the creators).
    assert [c[0] for c in trt.calls].index("init_plugins") < [c[0] for c in trt.calls].index("parse_from_file")


def test_build_fallback_without_plugin_warns(fake_trt, tmp_path, monkeypatch):
    monkeypatch.setenv("DSR_DEPLOY_LIB_DIR", str(tmp_path / "none"))
    monkeypatch.setattr(E, "find_plugin", lambda explicit=None: None)
    trt = fake_trt()
    model = save_onnx_dsr_nodes(tmp_path / "m.onnx", shape_tail=(4,))
    logs = []
    E.build_engine(model, tmp_path / "m.plan", batch=E.Range(1, 1, 1), timesteps=E.Range(4, 4, 4), log=logs.append)
    assert len(logs) == 1 and "function fallback" in logs[0]
    assert trt.loaded_plugins == []
    assert ("flag", "FP16") not in trt.calls


def test_build_errors_leave_no_output(fake_trt, chain_onnx, tmp_path):
    plugin = tmp_path / "libdsr_trt_plugin.so"
    plugin.write_bytes(b"")
    out = tmp_path / "model.plan"
    args = dict(batch=E.Range(1, 1, 1), timesteps=E.Range(2, 2, 2), plugin=plugin, log=lambda m: None)
    fake_trt(parse_ok=False)
    with pytest.raises(UserError, match=r"could not parse .*INVALID_NODE: something \(\+1 more\)"):
        E.build_engine(chain_onnx, out, **args)
    fake_trt(build_ok=False)
    with pytest.raises(UserError, match="failed to build an engine"):
        E.build_engine(chain_onnx, out, **args)
    fake_trt(creators=[("DSRIFSpike", "")])
    with pytest.raises(UserError, match="no creator DSRLIFSpike"):
        E.build_engine(chain_onnx, out, **args)
    fake_trt(version="11.0.0")
    with pytest.raises(UserError, match="strongly typed"):
        E.build_engine(chain_onnx, out, fp16=True, **args)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".model.plan")] == []


def test_build_argument_errors(chain_onnx, tmp_path):
    with pytest.raises(UserError, match="--workspace must be >= 1"):
        E.build_engine(chain_onnx, tmp_path / "a.plan", workspace_mb=0)
    (tmp_path / "exists.plan").write_bytes(b"x")
    with pytest.raises(UserError, match="pass --force"):
        E.build_engine(chain_onnx, tmp_path / "exists.plan", force=False)
    with pytest.raises(UserError, match="--out must differ"):
        E.build_engine(chain_onnx, chain_onnx)


def test_no_gpu_is_one_line(chain_onnx, tmp_path, monkeypatch):
    import torch

    monkeypatch.setitem(sys.modules, "tensorrt", FakeTRT())  # TensorRT "installed", the real GPU check
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(UserError, match="needs an NVIDIA GPU"):
        E.build_engine(chain_onnx, tmp_path / "m.plan", batch=E.Range(1, 1, 1), timesteps=E.Range(2, 2, 2),
                       log=lambda m: None)


def test_cli_without_tensorrt_is_one_line(chain_onnx, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails as if not installed
    with pytest.raises(SystemExit) as e:
        main(["build-engine", str(chain_onnx), "--out", str(tmp_path / "m.plan"), "--batch", "1,4,8", "-T", "20"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert e.value.code == 2 and len(lines) == 1
    assert "pip install 'dsr-deploy[tensorrt]'" in lines[0]
    assert not (tmp_path / "m.plan").exists()


def test_cli_profile_error_comes_before_tensorrt(chain_onnx, capsys):
    with pytest.raises(SystemExit) as e:
        main(["build-engine", str(chain_onnx), "--batch", "4,2,8", "-T", "20"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == "error: --batch: need MIN <= OPT <= MAX, got 4,2,8"


def test_plain_onnx_needs_no_plugin(tmp_path, fake_trt):
    trt = fake_trt()
    p = _plain_onnx(tmp_path / "relu.onnx", ["T", "B", 3])
    summary = E.build_engine(p, tmp_path / "relu.plan", batch=E.Range(1, 2, 4), timesteps=E.Range(1, 2, 4),
                             log=lambda m: None)
    assert summary["dsr_ops"] == [] and trt.loaded_plugins == []


def test_engine_is_listed_in_the_export_manifest(fake_trt, chain_onnx, tmp_path):
    import json

    from dsr_deploy.runtime import resolve_artifact

    fake_trt()
    d = tmp_path / "export"
    d.mkdir()
    model = d / "model.onnx"
    model.write_bytes(chain_onnx.read_bytes())
    (d / "manifest.json").write_text(json.dumps({"artifacts": [{"format": "onnx", "path": "model.onnx"}],
                                                 "neurons": []}))
    plugin = tmp_path / "libdsr_trt_plugin.so"
    plugin.write_bytes(b"")
    for _ in range(2):  # rebuilding replaces the entry, never duplicates it
        summary = E.build_engine(model, d / "model.plan", batch=E.Range(1, 2, 4), timesteps=E.Range(4, 4, 4),
                                 plugin=plugin, log=lambda m: None)
    assert summary["manifest"] == str(d / "manifest.json")
    arts = json.loads((d / "manifest.json").read_text())["artifacts"]
    assert [a["format"] for a in arts] == ["onnx", "tensorrt"]
    assert arts[1]["path"] == "model.plan" and arts[1]["profile"]["input"][2] == [4, 4, 4] and arts[1]["plugin"]
    assert resolve_artifact(d, "tensorrt") == d / "model.plan"
    # An engine written elsewhere leaves the manifest alone.
    other = E.build_engine(model, tmp_path / "elsewhere.plan", batch=E.Range(1, 1, 1), timesteps=E.Range(4, 4, 4),
                           plugin=plugin, log=lambda m: None)
    assert other["manifest"] is None


# -- TensorRT versions: which of plugin / function the parser builds, and what the engine records ---------------

def _plugin_file(tmp_path):
    plugin = tmp_path / "libdsr_trt_plugin.so"
    plugin.write_bytes(b"")
    return plugin


def test_below_10_7_the_function_wins_so_the_build_refuses_unless_asked(fake_trt, chain_onnx, tmp_path):
    plugin = _plugin_file(tmp_path)
    out = tmp_path / "m.plan"
    args = dict(batch=E.Range(1, 1, 1), timesteps=E.Range(2, 2, 2), plugin=plugin)
    fake_trt(version="10.6.0.26")
    with pytest.raises(UserError, match=r"TensorRT 10\.6\.0\.26 .* never from the plugin .*10\.7.*"
                                        r"--allow-function-fallback"):
        E.build_engine(chain_onnx, out, log=lambda m: None, **args)
    assert not out.exists()
    logs = []
    summary = E.build_engine(chain_onnx, out, allow_function_fallback=True, log=logs.append, **args)
    assert any("--allow-function-fallback" in m for m in logs)
    # What the network holds, read from its layers: two Scan loops, no plugin layer.
    assert summary["contents"] == {"dsr_path": "function", "dsr_nodes": 2, "plugin_layers": 0, "loops": 2,
                                   "layers": summary["contents"]["layers"]}


@pytest.mark.parametrize("version", ["10.7.0.23", "10.8.0.43", "11.1.0.106"])
def test_from_10_7_the_plugin_builds_and_is_recorded(fake_trt, chain_onnx, tmp_path, version):
    fake_trt(version=version)
    summary = E.build_engine(chain_onnx, tmp_path / "m.plan", batch=E.Range(1, 1, 1), timesteps=E.Range(2, 2, 2),
                             plugin=_plugin_file(tmp_path), log=lambda m: None)
    c = summary["contents"]
    assert (c["dsr_path"], c["plugin_layers"], c["loops"], c["dsr_nodes"]) == ("plugin", 2, 0, 2)


def test_manifest_records_what_the_engine_holds(fake_trt, chain_onnx, tmp_path):
    import json

    d = tmp_path / "export"
    d.mkdir()
    model = d / "model.onnx"
    model.write_bytes(chain_onnx.read_bytes())
    (d / "manifest.json").write_text(json.dumps({"artifacts": [{"format": "onnx", "path": "model.onnx"}]}))
    fake_trt(version="10.3.0.26")
    E.build_engine(model, d / "model.plan", batch=E.Range(1, 1, 1), timesteps=E.Range(2, 2, 2),
                   plugin=_plugin_file(tmp_path), allow_function_fallback=True, log=lambda m: None)
    entry = json.loads((d / "manifest.json").read_text())["artifacts"][1]
    # A plugin library was found and loaded, but TensorRT 10.3 used the function: the manifest says so.
    assert entry["plugin"] is False and entry["dsr_path"] == "function" and entry["precision"] == "float32"


def test_half_model_is_built_strongly_typed_on_trt10(fake_trt, tmp_path):
    p = tmp_path / "half.onnx"
    g = helper.make_graph([helper.make_node("Relu", ["input"], ["output"])], "g",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT16, ["T", "B", 3])],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT16, ["T", "B", 3])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(p))
    args = dict(batch=E.Range(1, 1, 1), timesteps=E.Range(2, 2, 2), log=lambda m: None)
    trt = fake_trt(version="10.8.0.43")
    summary = E.build_engine(p, tmp_path / "h.plan", **args)
    assert summary["precision"] == "float16" and ("create_network", 1 << 1) in trt.calls
    assert ("flag", "FP16") not in trt.calls
    with pytest.raises(UserError, match="already float16"):
        E.build_engine(p, tmp_path / "h.plan", fp16=True, **args)
    trt = fake_trt(version="11.1.0.106")  # every TensorRT 11 network is strongly typed: no flag to pass
    E.build_engine(p, tmp_path / "h.plan", **args)
    assert ("create_network", 0) in trt.calls


def test_int8_qdq_model_is_built_strongly_typed(fake_trt, tmp_path):
    """An ``export --precision int8`` model (Q/DQ nodes): explicit quantisation, strongly typed on TensorRT 10
    (TensorRT 11 always is); --fp16 refused. Stub-tested only (the real build needs a GPU)."""
    import numpy as np
    from onnx import numpy_helper

    p = tmp_path / "q.onnx"
    inits = [numpy_helper.from_array(np.array(0.5, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.int8), "z")]
    g = helper.make_graph([helper.make_node("QuantizeLinear", ["input", "s", "z"], ["q"]),
                           helper.make_node("DequantizeLinear", ["q", "s", "z"], ["output"])], "g",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["T", "B", 3])],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["T", "B", 3])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(p))
    args = dict(batch=E.Range(1, 1, 1), timesteps=E.Range(2, 2, 2), log=lambda m: None)
    trt = fake_trt(version="10.8.0.43")
    summary = E.build_engine(p, tmp_path / "q.plan", **args)
    assert summary["precision"] == "int8" and ("create_network", 1 << 1) in trt.calls
    with pytest.raises(UserError, match="already int8"):
        E.build_engine(p, tmp_path / "q.plan", fp16=True, **args)
    trt = fake_trt(version="11.1.0.106")
    assert E.build_engine(p, tmp_path / "q.plan", **args)["precision"] == "int8"
    assert ("create_network", 0) in trt.calls


def _qdq_file(path, zp, bias=False):
    import numpy as np
    from onnx import numpy_helper

    inits = [numpy_helper.from_array(np.array(0.5, np.float32), "s"), numpy_helper.from_array(zp, "z")]
    nodes = [helper.make_node("QuantizeLinear", ["input", "s", "z"], ["q"], name="cur_Q"),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["output"], name="cur_DQ")]
    if bias:
        inits += [numpy_helper.from_array(np.array([3], np.int32), "b"),
                  numpy_helper.from_array(np.array([0.25], np.float32), "bs")]
        nodes.append(helper.make_node("DequantizeLinear", ["b", "bs"], ["b_dq"], axis=0, name="bias_DQ"))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["T", "B", 3])],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["T", "B", 3])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


@pytest.mark.parametrize("zp, bias, message", [
    ("u8", False, "QuantizeLinear 'cur_Q' uses uint8 codes"),
    ("nonzero", False, "QuantizeLinear 'cur_Q' has a non-zero zero point"),
    ("i8", True, "DequantizeLinear 'bias_DQ' dequantises an int32 (bias) input"),
])
def test_build_engine_refuses_quantisation_tensorrt_cannot_take(tmp_path, capsys, zp, bias, message):
    """The default int8 export (uint8, asymmetric currents, int32 biases) would be refused by TensorRT's ONNX
    parser: build-engine says so in one line, naming the option that gives the signed form, before TensorRT is
    imported (no tensorrt module here)."""
    import numpy as np

    value = {"u8": np.array(0, np.uint8), "nonzero": np.array(3, np.int8), "i8": np.array(0, np.int8)}[zp]
    p = _qdq_file(tmp_path / "q.onnx", value, bias)
    with pytest.raises(UserError, match=re.escape(message)) as info:
        E.build_engine(p, tmp_path / "q.plan", batch=E.Range(1, 1, 1), timesteps=E.Range(2, 2, 2), log=lambda m: None)
    assert "--int8-activations int8" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "q.plan").exists()
    with pytest.raises(SystemExit) as e:
        main(["build-engine", str(p), "--out", str(tmp_path / "c.plan"), "--batch", "1", "--timesteps", "2"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and "--int8-activations int8" in err


def test_signed_int8_qdq_passes_the_check():
    import numpy as np
    from onnx import numpy_helper

    inits = [numpy_helper.from_array(np.array(0.5, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.int8), "z"),
             numpy_helper.from_array(np.array([1, -2], np.int8), "w"),
             numpy_helper.from_array(np.array([0.1, 0.2], np.float32), "ws"),
             numpy_helper.from_array(np.zeros(2, np.int8), "wz")]
    g = helper.make_graph([helper.make_node("QuantizeLinear", ["input", "s", "z"], ["q"]),
                           helper.make_node("DequantizeLinear", ["q", "s", "z"], ["output"]),
                           helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["w_dq"], axis=0)], "g",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT, [2])], inits)
    assert E.tensorrt_quantization_problem(helper.make_model(g)) is None
