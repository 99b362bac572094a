"""The friction a user of the authors' code (qymeng94/DSR) met, each fixed: the missing-shape message from the
model's own I/O, the --set that fits a classifier of another size, IF versus LIF checkpoints, the authors'
setting names as --set aliases, an explicit setting that disagrees with the checkpoint, the docs' table."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
from _cli_util import run_cli

from dsr_deploy.errors import UserError
from dsr_deploy.model_spec import load_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
import authors_nets as A  # noqa: E402

NETS = Path(__file__).resolve().parent / "authors_nets.py"
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name,takes", [("resnet_lif", "B,3,H,W (a static image; the model repeats it over T = 4"),
                                        ("vgg_if", "B,T,2,H,W (DVS-style events; T = 3")])
def test_missing_and_rejected_input_shape_say_what_the_model_takes(tmp_path, capsys, name, takes):
    code, _out, err = run_cli(capsys, "export", f"{NETS}:{name}", "--out", str(tmp_path / "a"))
    assert code == 2 and f"this model takes {takes}" in err and "T,B" not in err
    code, _out, err = run_cli(capsys, "export", f"{NETS}:{name}", "--input-shape", "4,2,3,8,8", "--out",
                               str(tmp_path / "b"))
    assert code == 2 and "the model rejects input shape [4, 2, 3, 8, 8]" in err and f"it takes {takes}" in err


def test_a_classifier_of_another_size_names_the_set_that_fits(tmp_path):
    ckpt = tmp_path / "c100.pth"
    torch.save(load_model("zoo:cnn-small", settings={"num_classes": "100"}).model.state_dict(), ckpt)
    with pytest.raises(UserError, match=r"classes: --set num_classes=100$"):
        load_model("zoo:cnn-small", str(ckpt))
    assert load_model("zoo:cnn-small", str(ckpt), settings={"num_classes": "100"}).settings["num_classes"] == 100


def _trainer_checkpoint(path: Path, state: dict, **extra) -> Path:
    """The authors' trainer format: {'epoch', 'state_dict' ('module.' keys), 'acc', 'best_acc', 'optimizer'}."""
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}, "acc": 0.5,
                "best_acc": 0.5, "optimizer": {"state": {}, "param_groups": []}, **extra}, path)
    return path


def test_an_if_checkpoint_in_a_lif_model_and_the_reverse_are_named(tmp_path):
    if_state = load_model("zoo:cnn-small", settings={"neuron": "if", "v_threshold": "6.0"}).model.state_dict()
    lif_state = load_model("zoo:cnn-small", settings={"neuron": "lif", "v_threshold": "0.3"}).model.state_dict()
    by_vth = _trainer_checkpoint(tmp_path / "if.pth", if_state)
    notes = load_model("zoo:cnn-small", str(by_vth), settings={"neuron": "lif"}).notes
    assert any("thresholds are typical of IF neurons, but the model chosen has LIF" in n for n in notes), notes
    assert load_model("zoo:cnn-small", str(by_vth), settings={"neuron": "if"}).notes == []
    by_setting = _trainer_checkpoint(tmp_path / "lif.pth", if_state, snn_setting={"neuron": "LIF"})
    notes = load_model("zoo:cnn-small", str(by_setting), settings={"neuron": "if"}).notes
    assert any("stored settings name LIF neurons, but the model chosen has IF" in n for n in notes), notes
    back = _trainer_checkpoint(tmp_path / "lif2.pth", lif_state)
    notes = load_model("zoo:cnn-small", str(back), settings={"neuron": "if"}).notes
    assert any("typical of LIF neurons, but the model chosen has IF" in n for n in notes), notes
    # thresholds in between and no settings: nothing can tell (docs/models.md says so), no warning
    mid = {k: (torch.full_like(v, 1.5) if k.endswith("v_threshold") else v) for k, v in if_state.items()}
    assert load_model("zoo:cnn-small", str(_trainer_checkpoint(tmp_path / "m.pth", mid)),
                      settings={"neuron": "lif"}).notes == []


def test_the_authors_setting_names_are_set_aliases_recorded_under_ours():
    loaded = load_model("zoo:cnn-small", settings={"neuron": "lif", "Vth": "0.6", "Vth_bound": "0.001",
                                                   "alpha": "0.5", "tau": "1.0", "delta_t": "0.1", "timesteps": "5"})
    s = loaded.settings
    assert (s["v_threshold"], s["v_threshold_lower_bound"], s["alpha"], s["tau"], s["delta_t"], s["T"]) == \
        (0.6, 0.001, 0.5, 1.0, 0.1, 5)
    assert not {"Vth", "Vth_bound", "timesteps"} & set(s)
    with pytest.raises(UserError, match="Vth is the authors' name for v_threshold"):
        load_model("zoo:cnn-small", settings={"Vth": "0.6", "v_threshold": "0.5"})


def test_an_explicit_lif_rule_that_disagrees_with_the_checkpoint_is_warned(tmp_path, capsys):
    net = A.resnet_lif()
    ckpt = _trainer_checkpoint(tmp_path / "a.pth", load_model("zoo:cnn-small", settings={"neuron": "lif"})
                               .model.state_dict(), snn_setting=net.snn_setting)
    loaded = load_model("zoo:cnn-small", str(ckpt), settings={"neuron": "lif", "lif_rule": "double"})
    assert loaded.settings["lif_rule"] == "double"
    assert any("--set lif_rule=double disagrees" in n and "lif_rule=float32" in n for n in loaded.notes), loaded.notes
    assert not load_model("zoo:cnn-small", str(ckpt), settings={"neuron": "lif"}).notes


def test_the_low_latency_row_uses_the_authors_readme_values():
    """docs/models.md's low-latency recipe against the authors' README (T 5, --Vth 0.6, --alpha 0.5, --delta_t 0.1,
    --Vth_bound 0.001)."""
    text = (ROOT / "docs" / "models.md").read_text()
    row = next(line for line in text.splitlines() if "low latency" in line)
    for want in ("--set T=5", "--set v_threshold=0.6", "--set alpha=0.5", "--set delta_t=0.1",
                 "--set v_threshold_lower_bound=0.001"):
        assert want in row, want
    assert not re.search(r"v_threshold_lower_bound=5e-4", row)
    assert "IF from LIF" in text  # where nothing can tell the families apart, the docs say so


def test_the_quickstart_says_how_much_logits_differ():
    from dsr_deploy.quickstart import AccuracyRow, vs_pytorch

    far = AccuracyRow("model.onnx", "onnx", "onnxruntime", total=10, identical_to_pytorch=False,
                      predictions_differing=0, max_logit_diff=2.2, last_bits=False)
    assert vs_pytorch(far) == "logits differ by up to 2.2, every prediction identical"
    near = AccuracyRow("model.onnx", "onnx", "onnxruntime", total=10, identical_to_pytorch=False,
                       predictions_differing=0, max_logit_diff=4.8e-7, last_bits=True)
    assert vs_pytorch(near) == "logits differ in the last bits, every prediction identical"
