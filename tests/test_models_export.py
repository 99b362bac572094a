"""Zoo networks go through the exporters: the paper's nets script (TorchScript keeps the loops, dynamic T) with
the export helper's inference copy; a LIF net exports to all three formats and each artifact's output is
bit-equal to the PyTorch model's."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import dsr_deploy.models as zoo
from dsr_deploy.convert import inference_copy

torch.set_num_threads(1)


@pytest.mark.parametrize("name,shape", [
    ("preact-resnet18-if", (2, 1, 3, 32, 32)),
    ("preact-resnet18-lif", (2, 1, 3, 32, 32)),
    ("preact-resnet18-imagenet-lif", (2, 1, 3, 64, 64)),
    ("vgg11-dvs-if", (2, 1, 2, 48, 48)),
])
def test_paper_nets_script_and_match_pytorch(name, shape):
    model = zoo.build(name, T=None, pretrained=False, v_threshold=0.05 if "lif" in name else 0.1).eval()
    with torch.no_grad():  # positive BN shifts: spikes through every layer of an untrained net
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.bias.fill_(0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(inference_copy(model, "script"))
    x = torch.rand(shape) * 2
    with torch.no_grad():
        ref = model(x)
        assert float((ref != 0).float().mean()) > 0.0  # spikes reach the output
        assert torch.equal(scripted(x), ref)
        x3 = torch.rand((3,) + shape[1:]) * 2  # another T through the same scripted file
        assert torch.equal(scripted(x3), model(x3))


def test_lif_cnn_exports_to_every_format_bit_exact(tmp_path):
    from dsr_deploy.export import export_model
    from dsr_deploy.runtime import load_runner

    model = zoo.build("cnn-small", T=None, neuron="lif", image_size=8, channels=(4, 8), v_threshold=0.05, delta_t=0.5,
                      pretrained=False).eval()
    manifest = export_model(model, (3, 2, 1, 8, 8), tmp_path / "exp", formats=("torchscript", "onnx", "pt2"))
    x = (np.random.default_rng(0).random((3, 5, 1, 8, 8)) * 3).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert (ref != 0).mean() > 0.0
    backends = {"torchscript": "torchscript", "onnx": "onnxruntime", "pt2": "pt2"}
    for art in manifest["artifacts"]:
        runner = load_runner(tmp_path / "exp" / art["path"], backend=backends[art["format"]])
        with runner:
            out = runner.infer({runner.inputs()[0].name: x})
        got = np.asarray(next(iter(out.values())))
        assert np.array_equal(got, ref), art["format"]
