"""SpikingJelly (and authors') checkpoints of zoo architectures load into zoo models: key mapping by name and by
order, bit-exact outputs, clear errors for a different architecture."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dsr_deploy.models as zoo
from dsr_deploy.errors import UserError
from dsr_deploy.models.common import firing_rate
from dsr_deploy.models.interop import load_spikingjelly, normalize_key, read_checkpoint

sj_layer = pytest.importorskip("spikingjelly.activation_based.layer", reason="SpikingJelly is the interop source")
sj_neuron = pytest.importorskip("spikingjelly.activation_based.neuron")

torch.set_num_threads(1)


def _randomise(model: nn.Module, seed: int) -> None:
    """Random weights and BN statistics, so a wrong mapping cannot pass by accident."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                if name.endswith("running_var"):
                    t.copy_(torch.rand(t.shape, generator=g) + 0.5)
                elif name.endswith("v_threshold"):
                    t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.5)
                else:
                    t.copy_(torch.randn(t.shape, generator=g) * 0.5)


def _sj_digits_cnn(T: int, v_threshold_training: bool = True) -> nn.Sequential:
    """The zoo's digits-cnn written the SpikingJelly way (SeqToANNContainer + DSR neurons, flat Sequential)."""
    def node():
        return sj_neuron.DSRIFNode(T=T, v_threshold=1.0, alpha=0.5, v_threshold_lower_bound=0.01,
                                   v_threshold_training=v_threshold_training, step_mode="m")
    return nn.Sequential(
        sj_layer.SeqToANNContainer(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)), node(),
        sj_layer.SeqToANNContainer(nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32)), node(),
        sj_layer.SeqToANNContainer(nn.AvgPool2d(2)),
        sj_layer.SeqToANNContainer(nn.Flatten(), nn.Linear(512, 10), nn.BatchNorm1d(10)), node(),
    )


@pytest.mark.parametrize("trained_thresholds", [True, False])
def test_spikingjelly_digits_cnn_maps_by_order_bit_exact(tmp_path, trained_thresholds):
    T = 4
    sj = _sj_digits_cnn(T, trained_thresholds)
    _randomise(sj, 1)
    if trained_thresholds:
        with torch.no_grad():  # SpikingJelly 2.0 clamps out of place: a saved threshold can sit below its bound
            sj[1].v_threshold.fill_(0.001)
    path = tmp_path / "sj.pth"
    torch.save({"epoch": 3, "state_dict": sj.state_dict()}, path)
    model, report = load_spikingjelly(zoo.build("digits-cnn", T=T, pretrained=False), path, return_report=True)
    assert report.mode == "order"
    assert report.mapping["features.0.module.0.weight"] == "0.0.weight"
    assert report.mapping["classifier.0.module.2.running_mean"] == "5.2.running_mean"
    if trained_thresholds:
        assert report.mapping["classifier.1.v_threshold"] == "6.v_threshold"
    else:
        assert "classifier.1.v_threshold" in report.kept
    sj.eval(), model.eval()
    x = torch.rand(T, 5, 1, 8, 8) * 3
    with torch.no_grad():
        ref, ours = sj(x), model(x)
    assert 0.05 < float((ref != 0).float().mean()) < 0.95  # the comparison sees real spike trains
    assert torch.equal(ours, ref)
    with torch.no_grad():
        torch.testing.assert_close(firing_rate(ours), ref.mean(0), rtol=1e-6, atol=0)


class _SJPreActBlock(nn.Module):
    """The authors' CIFAR block built from SpikingJelly multi-step layers (their attribute names)."""

    def __init__(self, cin, cout, stride, T):
        super().__init__()
        m = dict(step_mode="m")
        self.bn1 = sj_layer.BatchNorm2d(cin, **m)
        self.conv1 = sj_layer.Conv2d(cin, cout, 3, stride, 1, **m)
        self.bn2 = sj_layer.BatchNorm2d(cout, **m)
        self.dropout = sj_layer.Dropout(0.0, **m)
        self.conv2 = sj_layer.Conv2d(cout, cout, 3, 1, 1, **m)
        self.shortcut = sj_layer.Conv2d(cin, cout, 1, stride, 0, **m) if (stride != 1 or cin != cout) else nn.Identity()
        self.relu1 = sj_neuron.DSRLIFNode(T=T, v_threshold=0.3, tau=1.0, delta_t=0.05, alpha=0.3,
                                          v_threshold_lower_bound=5e-4)
        self.relu2 = sj_neuron.DSRLIFNode(T=T, v_threshold=0.3, tau=1.0, delta_t=0.05, alpha=0.3,
                                          v_threshold_lower_bound=5e-4)

    def forward(self, x):
        x = self.relu1(self.bn1(x))
        return self.conv2(self.dropout(self.relu2(self.bn2(self.conv1(x))))) + self.shortcut(x)


class _SJPreActResNet18(nn.Module):
    def __init__(self, T):
        super().__init__()
        m = dict(step_mode="m")
        lif = dict(T=T, v_threshold=0.3, tau=1.0, delta_t=0.05, alpha=0.3, v_threshold_lower_bound=5e-4)
        self.conv1 = sj_layer.Conv2d(3, 64, 3, 1, 1, bias=False, **m)
        c, stages = 64, []
        for w, s in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(nn.Sequential(_SJPreActBlock(c, w, s, T), _SJPreActBlock(w, w, 1, T)))
            c = w
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn1 = sj_layer.BatchNorm2d(512, **m)
        self.pool = sj_layer.AvgPool2d(4, **m)
        self.flat = sj_layer.Flatten(**m)
        self.linear = sj_layer.Linear(512, 10, **m)
        self.bn2 = sj_layer.BatchNorm1d(10, **m)
        self.relu1, self.relu2, self.relu3 = (sj_neuron.DSRLIFNode(**lif) for _ in range(3))

    def forward(self, x):
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        out = self.relu2(self.pool(self.relu1(self.bn1(out))))
        return self.relu3(self.bn2(self.linear(self.flat(out))))


def test_spikingjelly_preact_resnet18_lif_maps_by_name_bit_exact():
    T = 2
    sj = _SJPreActResNet18(T)
    _randomise(sj, 2)
    with torch.no_grad():  # LIF thresholds around the authors' 0.3 so spikes flow through 19 layers
        for n in sj.modules():
            if isinstance(n, sj_neuron.DSRLIFNode):
                n.v_threshold.fill_(0.05)
    model, report = load_spikingjelly(zoo.build("preact-resnet18-lif", T=T, pretrained=False), sj.state_dict(),
                                      return_report=True)
    assert report.mode == "name" and not [k for k in report.kept if not k.endswith("num_batches_tracked")]
    sj.eval(), model.eval()
    x = torch.rand(T, 2, 3, 32, 32) * 2
    with torch.no_grad():
        ref, ours = sj(x), model(x)
    assert float((ref != 0).float().mean()) > 0.05
    assert torch.equal(ours, ref)


def test_authors_style_keys_load_by_name():
    src = zoo.build("preact-resnet18-if", T=2, pretrained=False)
    _randomise(src, 3)
    # nn.DataParallel prefix and the authors' `Vth` name
    state = {"module." + k.replace("v_threshold", "Vth"): v for k, v in src.state_dict().items()}
    dst, report = load_spikingjelly(zoo.build("preact-resnet18-if", T=2, pretrained=False), state, return_report=True)
    assert report.mode == "name"
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k
    assert normalize_key("module.layer1.0.relu1.Vth") == "layer1.0.relu1.v_threshold"
    assert normalize_key("features.0.module.0.weight") == "features.0.0.weight"


def test_other_architecture_is_a_clear_error(tmp_path):
    sj = nn.Sequential(sj_layer.SeqToANNContainer(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8)),
                       sj_neuron.DSRIFNode(T=4, step_mode="m"))
    with pytest.raises(UserError, match="not the same architecture"):
        load_spikingjelly(zoo.build("digits-cnn", T=4, pretrained=False), sj.state_dict())
    bad = tmp_path / "model.pt"
    torch.save(sj, bad)  # a pickled module, not a state dict
    with pytest.raises(UserError, match="weights-only"):
        read_checkpoint(bad)
    with pytest.raises(UserError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.pt")


def test_cli_export_of_zoo_model_takes_a_spikingjelly_checkpoint(tmp_path):
    # `dsr-deploy export zoo:NAME --checkpoint sj.pth`: keys that do not match are mapped like load_spikingjelly.
    from dsr_deploy.cli import main
    from dsr_deploy.runtime import load_runner

    T = 8  # the zoo entry's T
    sj = _sj_digits_cnn(T)
    _randomise(sj, 2)
    path = tmp_path / "sj.pth"
    torch.save(sj.state_dict(), path)
    out = tmp_path / "export"
    main(["export", "zoo:digits-cnn", "--input-shape", f"{T},2,1,8,8", "--format", "torchscript",
          "--checkpoint", str(path), "--out", str(out)])  # returns normally on success
    sj.eval()
    x = torch.rand(T, 3, 1, 8, 8) * 3
    with torch.no_grad():
        ref = sj(x)
    with load_runner(out, backend="torchscript") as runner:
        got = next(iter(runner.infer({"input": x.numpy()}).values()))
    assert (ref != 0).any() and torch.equal(torch.from_numpy(got), ref)


def test_cli_export_rejects_a_checkpoint_of_another_architecture(tmp_path, capsys):
    from dsr_deploy.cli import main

    path = tmp_path / "other.pth"
    torch.save(nn.Sequential(nn.Linear(3, 4)).state_dict(), path)
    with pytest.raises(SystemExit) as info:
        main(["export", "zoo:digits-cnn", "--input-shape", "8,2,1,8,8", "--checkpoint", str(path),
              "--out", str(tmp_path / "never")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not match the model" in err[0] and "SpikingJelly" in err[0]
    assert not (tmp_path / "never").exists()
