"""Every zoo model streams (issue 12, item 5): a zoo network is built for a fixed T, but its single-step
module takes one step at a time; fed T steps it equals the multi-step network bit for bit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dsr_deploy import models
from dsr_deploy.cli import main
from dsr_deploy.export import streaming as S
from dsr_deploy.runtime.stream import StreamSession

T = 3
STEP = {  # one small input step [B, ...] per architecture (the zoo's channels, small images)
    "preact-resnet18-if": (1, 3, 32, 32), "preact-resnet18-lif": (1, 3, 32, 32),
    "preact-resnet18-imagenet-if": (1, 3, 32, 32), "preact-resnet18-imagenet-lif": (1, 3, 32, 32),
    "vgg11-dvs-if": (1, 2, 48, 48), "vgg11-dvs-lif": (1, 2, 48, 48),
    "cnn-small": (2, 1, 28, 28), "mlp": (2, 1, 28, 28), "digits-cnn": (2, 1, 8, 8),
}


def test_every_zoo_model_is_listed():
    assert set(STEP) == set(models.names())


def _low_threshold(name: str) -> dict:
    lif = models.describe(name)["neuron"] == "lif"
    return {} if name == "digits-cnn" else {"v_threshold": 0.02 if lif else 0.3}


@pytest.mark.parametrize("name", sorted(STEP))
def test_zoo_model_streams_bit_exactly(name):
    torch.manual_seed(0)
    net = models.build(name, T=T, **_low_threshold(name)).eval()
    x = torch.rand((T, *STEP[name])) * 4
    sm = S.build_streaming_module(net, x[0])
    with torch.no_grad():
        ref = net(x)
        states = sm.zero_states(x.shape[1])
        ys = []
        for t in range(T):
            y, *states = sm(x[t], *states)
            ys.append(y)
    assert torch.equal(torch.stack(ys), ref)
    assert any(float(v.abs().sum()) > 0 for v in states), "the membranes must carry something between steps"


def test_cli_streaming_export_of_a_zoo_model_runs_in_the_runtimes(tmp_path, capsys):
    from dsr_deploy.runtime import load_runner

    torch.manual_seed(0)
    net = models.build("vgg11-dvs-lif", T=T, v_threshold=0.02).eval()
    torch.save(net.state_dict(), tmp_path / "net.pt")
    out = tmp_path / "stream"
    main(["export", "zoo:vgg11-dvs-lif", "--mode", "streaming", "--input-shape", f"{T},1,2,48,48",
          "--checkpoint", str(tmp_path / "net.pt"), "--out", str(out), "--json"])  # returns on success
    captured = capsys.readouterr()
    manifest = json.loads(captured.out)
    assert manifest["mode"] == "streaming" and manifest["model"]["settings"] == {"T": T}
    assert "assumed zoo defaults: alpha=0.3, v_threshold_lower_bound=0.0005, tau=1.0, delta_t=0.05" in captured.err
    x = torch.rand(T, 2, 2, 48, 48) * 4  # another batch size than the export's example
    with torch.no_grad():
        ref = net(x).numpy()
    assert ref.any() and not ref.all(), "the output layer must fire on some steps and not others"
    for backend in ("torchscript", "onnxruntime"):
        with load_runner(out, backend) as runner:
            got = StreamSession.from_manifest(runner, out).run(x.numpy())
        assert np.array_equal(got, ref), backend
