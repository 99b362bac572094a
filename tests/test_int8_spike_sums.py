"""int8: a sum of spike trains (a SEW ResNet's ADD shortcut) is quantised with the spike value as its scale and zero
point 0, so every count is exact, as spikes are; a range calibrated on it would cut the rare large counts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

pytest.importorskip("spikingjelly.activation_based.neuron", reason="SpikingJelly 2.0 (the test oracle)")

from _cli_util import run_cli  # noqa: E402

NET = (
    "import torch\n"
    "from spikingjelly.activation_based import neuron, layer, functional\n\n\n"
    "class Sew(torch.nn.Module):\n"
    "    def __init__(self):\n"
    "        super().__init__()\n"
    "        torch.manual_seed(0)\n"
    "        self.a = torch.nn.Sequential(layer.Conv2d(3, 8, 3, padding=1), neuron.LIFNode(tau=2.0))\n"
    "        self.b = torch.nn.Sequential(layer.Conv2d(8, 8, 3, padding=1), neuron.LIFNode(tau=2.0))\n"
    "        self.c = torch.nn.Sequential(layer.Conv2d(8, 8, 3, padding=1), neuron.IFNode(v_reset=None))\n"
    "        self.d = torch.nn.Sequential(layer.Conv2d(8, 8, 3, padding=1), neuron.IFNode())\n"
    "        self.head = torch.nn.Sequential(layer.Flatten(), layer.Linear(8 * 8 * 8, 10), neuron.IFNode())\n\n"
    "    def forward(self, x):\n"
    "        s = self.a(x)\n"
    "        s = s + self.b(s)  # SEW ADD: counts 0, 1, 2\n"
    "        s = s + self.c(s)  # counts up to 3\n"
    "        return self.head(self.d(s))\n\n\n"
    "def build():\n"
    "    net = Sew()\n"
    "    functional.set_step_mode(net, 'm')\n"
    "    return net\n")



def test_summed_spikes_are_quantised_exactly_and_verify_passes(capsys, tmp_path: Path):
    (tmp_path / "sew.py").write_text(NET)
    spec = f"{tmp_path / 'sew.py'}:build"
    calib = tmp_path / "calib.npy"
    np.save(calib, (np.random.default_rng(0).random((4, 8, 3, 8, 8)) * 3).astype(np.float32))
    out = tmp_path / "int8"
    code, _, err = run_cli(capsys, "export", spec, "--input-shape", "4,2,3,8,8", "--out", out, "--format", "onnx",
                           "--precision", "int8", "--calibration", calib, "--target", "portable")
    assert code == 0, err
    model = onnx.load(str(out / "model.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    made_by = {o: n for n in model.graph.node for o in n.output}
    adds = [n for n in model.graph.node if n.op_type == "Add"  # the shortcut sums, not a Linear's bias add
            and not any(i in inits or made_by[i].op_type in ("MatMul", "Gemm") for i in n.input)]
    readers = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)

    def quantizers(t, depth=0):  # the QuantizeLinear nodes reading t, through value-preserving ops
        found = []
        for n in readers.get(t, []):
            if n.op_type == "QuantizeLinear":
                found.append(n)
            elif n.op_type in ("Reshape", "Flatten", "Transpose", "Identity") and depth < 4:
                found += quantizers(n.output[0], depth + 1)
        return found

    sums = [q for a in adds for q in quantizers(a.output[0])]
    assert len(sums) >= 2, [a.name for a in adds]  # both spike sums feed a quantised layer
    assert all(float(inits[q.input[1]]) == 1.0 and int(inits[q.input[2]]) == 0 for q in sums)
    code, stdout, err = run_cli(capsys, "verify", out, "--model", spec, "--json")
    assert code == 0, err + stdout[-2000:]
    assert json.loads(stdout)["passed"] is True
