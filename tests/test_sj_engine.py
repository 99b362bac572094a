"""build-engine routes SpikingJelly layers to their TensorRT plugins (SJIFSpike / SJLIFSpike / SJPLIFSpike, the
streaming SJ*Step), driven through the recording stand-in for the ``tensorrt`` module of tests/test_engine.py
(no TensorRT, no GPU here): the creators are looked up under namespace "dsr", the parsed network holds one plugin
layer per SJ node and the export folder's manifest records the engine as built from the plugins. A plugin library
without the SJ creators (built before they existed) is a one-line error naming the missing creator."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from test_engine import FakeTRT

from dsr_deploy import contract
from dsr_deploy import engine as E
from dsr_deploy.errors import UserError
from dsr_deploy.export import export_model

sj_neuron = pytest.importorskip("spikingjelly.activation_based.neuron", reason="SpikingJelly 2.0 (the test oracle)")
from spikingjelly.activation_based import functional as sjf  # noqa: E402
from spikingjelly.activation_based import layer  # noqa: E402

ALL_CREATORS = tuple((op, "dsr") for op in contract.TENSORRT_PLUGIN_OPS)


def sj_net() -> torch.nn.Module:
    torch.manual_seed(0)
    net = torch.nn.Sequential(layer.Linear(6, 8), sj_neuron.IFNode(v_reset=-0.1), layer.Linear(8, 8),
                              sj_neuron.LIFNode(tau=2.0, v_reset=None), layer.Linear(8, 3),
                              sj_neuron.ParametricLIFNode(v_reset=0.0, decay_input=False))
    sjf.set_step_mode(net, "m")
    return net.eval()


@pytest.fixture(scope="module")
def sj_exports(tmp_path_factory):
    d = tmp_path_factory.mktemp("sj_engine")
    export_model(sj_net(), (4, 2, 6), d / "multi", formats=("onnx",))
    export_model(sj_net(), (4, 2, 6), d / "stream", mode="streaming", formats=("onnx",))
    return d


@pytest.fixture
def trt(monkeypatch):
    def install(**kw):
        fake = FakeTRT(**kw)
        monkeypatch.setitem(sys.modules, "tensorrt", fake)
        monkeypatch.setattr(E, "_require_gpu", lambda: None)

        def load(path, trt_module=None):
            fake.plugins_loaded = True
            return "registry"

        monkeypatch.setattr("dsr_deploy.runtime.tensorrt.load_plugin_library", load)
        return fake
    return install


def _plugin(tmp_path):
    lib = tmp_path / contract.TRT_DYNAMIC_PLUGIN_LIBRARY
    lib.write_bytes(b"")
    return lib


@pytest.mark.parametrize("mode, ops", [("multi", ["SJIFSpike", "SJLIFSpike", "SJPLIFSpike"]),
                                       ("stream", ["SJIFStep", "SJLIFStep", "SJPLIFStep"])])
def test_sj_layers_become_plugin_layers_and_the_manifest_says_so(trt, sj_exports, tmp_path, mode, ops):
    folder = tmp_path / mode
    folder.mkdir()
    for f in (sj_exports / mode).iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    info = E.read_onnx(folder / "model.onnx")
    assert info.dsr_ops == sorted(ops) and info.dsr_nodes == 3
    assert set(ops) <= set(contract.TENSORRT_PLUGIN_OPS)
    trt(version="11.1.0.106", creators=ALL_CREATORS)
    profile = {"timesteps": E.Range(4, 4, 4)} if mode == "multi" else {}
    summary = E.build_engine(folder / "model.onnx", folder / "model.plan", batch=E.Range(1, 2, 4),
                             plugin=_plugin(tmp_path), log=lambda m: None, **profile)
    assert summary["plugin_creators"] == dict.fromkeys(sorted(ops), "dsr")
    c = summary["contents"]
    assert (c["dsr_path"], c["plugin_layers"], c["loops"]) == ("plugin", 3, 0)
    entry = next(a for a in json.loads((folder / "manifest.json").read_text())["artifacts"]
                 if a["format"] == "tensorrt")
    assert entry["plugin"] is True and entry["dsr_path"] == "plugin"


def test_a_plugin_library_without_the_sj_creators_is_one_line(trt, sj_exports, tmp_path):
    trt(version="11.1.0.106", creators=tuple(c for c in ALL_CREATORS if not c[0].startswith("SJ")))
    with pytest.raises(UserError, match=r"no creator SJIFSpike \(version 1, namespace 'dsr'\) is registered"):
        E.build_engine(sj_exports / "multi" / "model.onnx", tmp_path / "m.plan", batch=E.Range(2, 2, 2),
                       timesteps=E.Range(4, 4, 4), plugin=_plugin(tmp_path), log=lambda m: None)
    assert not (tmp_path / "m.plan").exists()


def test_a_half_precision_sj_model_is_refused_with_the_plugins(trt, tmp_path):
    """The SJ plugins compute float32 only (the SJ CUDA kernel has no half path): a float16 export's SJ layers
    cannot go to them, and the build stops in one line before parsing, leaving no engine."""
    d = tmp_path / "half"
    export_model(sj_net(), (4, 2, 6), d, formats=("onnx",), precision="float16")
    fake = trt(version="11.1.0.106", creators=ALL_CREATORS)
    with pytest.raises(UserError, match=r"float16 and its SpikingJelly layers \(SJIFSpike, SJLIFSpike, SJPLIFSpike\) "
                                        r"have float32 TensorRT plugins only"):
        E.build_engine(d / "model.onnx", d / "model.plan", batch=E.Range(2, 2, 2), timesteps=E.Range(4, 4, 4),
                       plugin=_plugin(tmp_path), log=lambda m: None)
    assert not (d / "model.plan").exists() and not [c for c in fake.calls if c[0] == "parse_from_file"]
