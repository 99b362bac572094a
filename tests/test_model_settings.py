"""Model settings from the command line (``--set KEY=VALUE``), the authors' trainer checkpoint format, the
assumed-defaults warning and the key mapping for any MODEL spec (issue 12, item 3)."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from _cli_util import run_cli  # (exit code, stdout, stderr) of one CLI call

from dsr_deploy import models
from dsr_deploy.errors import UserError
from dsr_deploy.manifest import read_manifest
from dsr_deploy.model_spec import load_model, load_reference_model, parse_set_options

SMALL = {"T": 4, "neuron": "lif", "image_size": 8, "channels": (4, 8)}
SMALL_SET = ["--set", "T=4", "--set", "neuron=lif", "--set", "image_size=8", "--set", "channels=4,8"]


def _trained_small(seed: int = 0, **extra) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = models.build("cnn-small", **SMALL, **extra)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("v_threshold"):
                p.mul_(0.5 + torch.rand(()))  # every layer its own threshold
            else:
                p.add_(torch.randn_like(p) * 0.3)
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.uniform_(0.5, 2.0)
    return model.eval()


def _authors_checkpoint(model: torch.nn.Module, path, with_thresholds: bool = True, **extra) -> None:
    """The authors' trainer format: DataParallel 'module.' keys, their threshold name 'Vth', epoch/acc/optimizer."""
    state = {}
    for k, v in model.state_dict().items():
        if k.endswith("v_threshold"):
            if not with_thresholds:
                continue  # --train_Vth 0: the threshold is a plain attribute, not in the state dict
            k = k[: -len("v_threshold")] + "Vth"
        state["module." + k] = v
    torch.save({"epoch": 7, "state_dict": state, "acc": 91.5, "best_acc": 92.0,
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}, **extra}, path)


def test_parse_set_options():
    assert parse_set_options(["T=5", "v_threshold = 0.6", "name=a=b"]) == {"T": "5", "v_threshold": "0.6",
                                                                           "name": "a=b"}
    assert parse_set_options(None) == {}
    for bad, msg in ((["T"], "KEY=VALUE"), (["1x=2"], "KEY=VALUE"), (["T=1", "T=2"], "twice")):
        with pytest.raises(UserError, match=msg):
            parse_set_options(bad)


def test_settings_are_typed_by_the_constructor_and_reach_the_model():
    loaded = load_model("zoo:preact-resnet18-lif", settings={"T": "5", "v_threshold": "0.6", "alpha": "0.5",
                                                             "delta_t": "0.1", "num_classes": "100"})
    assert loaded.settings == {"T": 5, "v_threshold": 0.6, "alpha": 0.5, "delta_t": 0.1, "num_classes": 100}
    assert loaded.default_input_shape == (5, 1, 3, 32, 32)  # T from the settings
    neurons = [m for m in loaded.model.modules() if hasattr(m, "delta_t")]
    assert neurons and all(n.T == 5 and n.alpha == 0.5 and n.delta_t == 0.1 for n in neurons)
    assert all(float(n.v_threshold.detach()) == pytest.approx(0.6) for n in neurons)
    assert loaded.model.linear.out_features == 100
    tup = load_model("zoo:cnn-small", settings={"channels": "4,8", "v_threshold_training": "false"})
    assert tup.settings == {"channels": (4, 8), "v_threshold_training": False}


@pytest.mark.parametrize("settings,msg", [
    ({"colour": "red"}, "has no setting 'colour'; accepted: T, neuron"),
    ({"T": "five"}, "T=five: expected an integer"),
    ({"T": "2.5"}, "expected an integer"),
    ({"alpha": "inf"}, "expected a finite number"),
    ({"v_threshold_training": "maybe"}, "expected true or false"),
    ({"readout": "rate"}, "--readout"),
    ({"tau": "2"}, "has no setting 'tau'"),  # an IF model: tau is a LIF setting
])
def test_bad_settings_are_one_line_user_errors(settings, msg):
    with pytest.raises(UserError, match=msg) as info:
        load_model("zoo:cnn-small", settings=settings)
    assert "\n" not in str(info.value)


def test_factory_settings_for_file_specs(tmp_path):
    f = tmp_path / "net.py"
    f.write_text(textwrap.dedent("""
        from dsr_deploy.models.small import SpikingCNN

        def strict(T: int = 4, width: int = 4, scale: float = 1.0):
            return SpikingCNN(T=T, image_size=8, channels=(width, width), v_threshold=scale)

        def loose(**kwargs):
            return SpikingCNN(image_size=8, **kwargs)
    """))
    loaded = load_model(f"{f}:strict", settings={"width": "6", "scale": "2"})
    assert loaded.settings == {"width": 6, "scale": 2.0}
    with pytest.raises(UserError, match=r"has no setting 'depth'; accepted: T, width, scale"):
        load_model(f"{f}:strict", settings={"depth": "3"})
    loose = load_model(f"{f}:loose", settings={"T": "3", "v_threshold": "0.5", "neuron": "if"})
    assert loose.settings == {"T": 3, "v_threshold": 0.5, "neuron": "if"}  # **kwargs: types inferred
    with pytest.raises(UserError, match="model factory .*loose raised"):
        load_model(f"{f}:loose", settings={"colour": "red"})


def test_authors_trainer_checkpoint_warns_about_assumed_settings_and_exports_exactly(tmp_path, capsys):
    # A stand-in for a network the authors' code trained: their LIF arithmetic (beta, 1 - beta in float32), which
    # their checkpoint format implies and the export must reproduce.
    trained = _trained_small(1, alpha=0.5, lif_rule="float32")
    ckpt = tmp_path / "checkpoint.pth"
    _authors_checkpoint(trained, ckpt)
    out = tmp_path / "export"
    code, stdout, err = run_cli(capsys, "export", "zoo:cnn-small", *SMALL_SET, "--set", "alpha=0.5",
                                "--checkpoint", str(ckpt), "--input-shape", "4,2,1,8,8", "--format",
                                "torchscript", "--out", str(out), "--json")
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1
    assert "assumed zoo defaults: v_threshold_lower_bound=0.0005, tau=1.0, delta_t=0.05" in warnings[0]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["settings"] == {"T": 4, "neuron": "lif", "image_size": 8, "channels": [4, 8],
                                             "alpha": 0.5, "lif_rule": "float32"}
    assert {n["lif_rule"] for n in manifest["neurons"]} == {"float32"}
    assert manifest["model"]["assumed_defaults"] == {"v_threshold_lower_bound": 0.0005, "tau": 1.0, "delta_t": 0.05}
    stored = [float(v) for k, v in trained.state_dict().items() if k.endswith("v_threshold")]
    assert [n["v_threshold"] for n in manifest["neurons"]] == pytest.approx(stored, rel=1e-7)
    x = torch.rand(4, 3, 1, 8, 8) * 30
    with torch.no_grad():
        ref = trained(x)
    artifact = torch.jit.load(str(out / "model.ts"))
    with torch.no_grad():
        got = artifact(x)
    assert (ref != 0).any() and torch.equal(got, ref)
    # verify's rebuild: the same model from the folder's manifest (zoo spec, its settings, its checkpoint)
    again = load_reference_model(read_manifest(out)).model
    with torch.no_grad():
        assert torch.equal(again(x), ref)


def test_settings_stored_in_the_checkpoint_are_applied(tmp_path, capsys):
    trained = _trained_small(2, alpha=0.5, delta_t=0.1, lif_rule="float32")
    ckpt = tmp_path / "checkpoint.pth"
    _authors_checkpoint(trained, ckpt, snn_setting={"timesteps": 4, "alpha": 0.5, "delta_t": 0.1, "tau": 1.0,
                                                    "Vth_bound": 0.0005})
    loaded = load_model("zoo:cnn-small", str(ckpt), settings={"neuron": "lif", "image_size": "8",
                                                              "channels": "4,8"})
    assert loaded.assumed == {} and loaded.warning() is None
    assert loaded.settings["T"] == 4 and loaded.settings["delta_t"] == 0.1 and loaded.settings["alpha"] == 0.5
    x = torch.rand(4, 2, 1, 8, 8) * 30
    with torch.no_grad():
        ref = trained(x)
        assert (ref != 0).any() and torch.equal(loaded.model(x), ref)


def test_checkpoint_without_thresholds_needs_the_threshold(tmp_path, capsys):
    # The authors' --train_Vth 0 --Vth 2: no threshold in the checkpoint; the zoo's IF default (6) must not be used.
    trained = _trained_small(3, v_threshold=2.0, v_threshold_training=False)
    trained_if = trained
    ckpt = tmp_path / "fixed.pth"
    _authors_checkpoint(trained_if, ckpt, with_thresholds=False)
    out = tmp_path / "never"
    code, _, err = run_cli(capsys, "export", "zoo:cnn-small", *SMALL_SET, "--checkpoint", str(ckpt),
                           "--input-shape", "4,2,1,8,8", "--format", "torchscript", "--out", str(out))
    assert code == 2 and not out.exists()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "stores no neuron thresholds" in lines[0] and "--set v_threshold=" in lines[0]
    code, _, err = run_cli(capsys, "export", "zoo:cnn-small", *SMALL_SET, "--set", "v_threshold=2",
                           "--checkpoint", str(ckpt), "--input-shape", "4,2,1,8,8", "--format", "torchscript",
                           "--out", str(out))
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert {n["v_threshold"] for n in manifest["neurons"]} == {2.0}
    assert "v_threshold" not in manifest["model"]["assumed_defaults"]


def test_key_mapping_works_for_file_specs(tmp_path, capsys):
    # Not only zoo: a file.py:factory whose model has the architecture takes the authors' keys ('module.', Vth).
    f = tmp_path / "arch.py"
    f.write_text("from dsr_deploy import models\n\ndef net(T: int = 4):\n"
                 "    return models.build('cnn-small', T=T, neuron='lif', image_size=8, channels=(4, 8))\n")
    trained = _trained_small(4)
    ckpt = tmp_path / "checkpoint.pth"
    _authors_checkpoint(trained, ckpt)
    loaded = load_model(f"{f}:net", str(ckpt))
    assert loaded.assumed == {"T": 4}  # the factory's own default, named
    assert "assumed factory defaults: T=4" in loaded.warning()
    x = torch.rand(4, 2, 1, 8, 8) * 30
    with torch.no_grad():
        ref = trained(x)
        assert (ref != 0).any() and torch.equal(loaded.model(x), ref)


def test_cli_bad_set_exits_2_with_one_line(tmp_path, capsys):
    for extra, msg in ((["--set", "T=x"], "expected an integer"), (["--set", "nope=1"], "has no setting 'nope'"),
                       (["--set", "T"], "KEY=VALUE")):
        code, _, err = run_cli(capsys, "export", "zoo:cnn-small", *extra, "--format", "torchscript",
                               "--out", str(tmp_path / "x"))
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and msg in lines[0], err
        assert not (tmp_path / "x").exists()


def test_inspect_takes_settings(capsys):
    code, out, err = run_cli(capsys, "inspect", "zoo:cnn-small", "--set", "neuron=lif", "--set", "delta_t=0.1",
                             "--set", "T=3", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["settings"] == {"neuron": "lif", "delta_t": 0.1, "T": 3}
    assert info["default_input_shape"][0] == 3
    assert {n["delta_t"] for n in info["neurons"]} == {0.1}
    code, _, err = run_cli(capsys, "inspect", "zoo:cnn-small", "--set", "delta_t=0.1")  # IF: no delta_t
    assert code == 2 and "has no setting 'delta_t'" in err


def test_bench_on_a_model_spec_takes_settings(tmp_path, capsys):
    code, _, err = run_cli(capsys, "bench", "zoo:cnn-small", "--set", "T=3", "--set", "image_size=8",
                           "--input-shape", "3,2,1,8,8", "--batch", "2", "--iters", "1", "--warmup", "0", "--no-memcpy",
                           "--json", str(tmp_path / "b.json"))
    assert code == 0, err
    rows = json.loads((tmp_path / "b.json").read_text())["results"]
    assert [(r["timesteps"], r["input_shape"], r["error"]) for r in rows] == [(3, [3, 2, 1, 8, 8], None)]
    code, _, err = run_cli(capsys, "bench", "zoo:cnn-small", "--set", "size=8", "--batch", "1", "--iters", "1")
    assert code == 2 and "has no setting 'size'" in err
