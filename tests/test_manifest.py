"""An export folder is untrusted input (issue 15, items 1-4 and the manifest weak cases): the typed manifest
module, trust only from the command line, artifact paths inside the folder, unchecked artifacts are not a pass,
tampered .pt2 archives refused, TorchScript loading already safe."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch
from _cli_util import run_cli
from export_nets import NEURON_SHAPE, exported

from dsr_deploy.errors import UserError
from dsr_deploy.manifest import ARTIFACT, MAX_ELEMENTS, Record, optional, parse_manifest, read_manifest, string

ZOO = "zoo:digits-cnn"  # the zoo's smallest model: a manifest naming it may be rebuilt without any flag
ZOO_SHAPE = (8, 1, 1, 8, 8)



class _Marker:
    """Unpickling this object creates the file ``path`` (standing for any code a pickle can run)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _evil_pickle(marker: Path) -> bytes:
    buf = io.BytesIO()
    torch.save({"x": _Marker(marker)}, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def zoo_export(tmp_path_factory):
    from dsr_deploy import models
    from dsr_deploy.export import export_model

    out = tmp_path_factory.mktemp("zoo") / "export"
    export_model(models.build("digits-cnn"), ZOO_SHAPE, out, formats=("onnx", "pt2"), spec=ZOO)
    return out


def _copy(src: Path, dst: Path, edit=None) -> Path:
    shutil.copytree(src, dst)
    if edit is not None:
        m = json.loads((dst / "manifest.json").read_text())
        edit(m)
        (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def _temp_leftovers() -> set:
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("dsr-")}


# -- the module: typed, lenient with unknown keys, extensible ---------------------------------------------

def test_a_written_manifest_reads_back_with_typed_accessors(zoo_export):
    m = read_manifest(zoo_export)
    assert m.schema == 1 and m.mode == "multistep" and m.input_shape == ZOO_SHAPE and m.model_spec == ZOO
    assert [a["format"] for a in m.artifacts] == ["onnx", "pt2"]
    assert m.path_of(m.artifacts[0]) == zoo_export / "model.onnx"
    assert m.io_names() == (["input"], ["output"])


def test_unknown_keys_are_kept_and_new_fields_are_one_line_to_add():
    data = {"schema": 1, "artifacts": [{"format": "onnx", "path": "m.onnx", "precision": "fp16"}],
            "settings": {"a": 1}, "future": [1, 2]}
    m = parse_manifest(data)
    assert m["settings"] == {"a": 1} and m["future"] == [1, 2] and m.artifacts[0]["precision"] == "fp16"
    rec = Record("x", dict(ARTIFACT.fields), ARTIFACT.required)
    rec.add("precision", optional(string))
    with pytest.raises(Exception, match="precision: expected a string"):
        rec({"format": "onnx", "path": "m.onnx", "precision": 16})


@pytest.mark.parametrize("edit, needle", [
    (lambda m: m.update(neurons="oops"), "neurons: expected a list"),
    (lambda m: m.update(artifacts={"a": 1}), "artifacts.a: expected a path"),
    (lambda m: m.update(artifacts=7), "artifacts: expected a list"),
    (lambda m: m["artifacts"][0].update(path=None), "artifacts[0].path: expected a string"),
    (lambda m: m["artifacts"][0].pop("format"), "artifacts[0].format: missing"),
    (lambda m: m.update(input_shape=[8, -1, 1, 8, 8]), "input_shape[1]: expected an integer >= 1"),
    (lambda m: m.update(input_shape=[1 << 20, 1 << 20, 1 << 10]), f"more than the {MAX_ELEMENTS} elements"),
    (lambda m: m.update(input_shape=[8]), "input_shape: expected at least 2"),
    (lambda m: m.update(schema=2), "unknown schema version 2"),
    (lambda m: m.update(schema="1"), "unknown schema version"),
    (lambda m: m["model"].update(trust_pickle="yes"), "model.trust_pickle: expected true or false"),
    (lambda m: m["model"].update(spec=5), "model.spec: expected a string"),
    (lambda m: m["model"].update(settings="T=5"), "model.settings: expected a mapping"),
    (lambda m: m["model"].update(settings={"T": {"a": 1}}), "model.settings: T: expected a name with a scalar"),
    (lambda m: m.update(dynamic_batch="no"), "dynamic_batch: expected true or false"),
    (lambda m: m["neurons"][0].update(index="x"), "neurons[0].index: expected an integer"),
    (lambda m: m["neurons"][0].update(v_threshold=True), "neurons[0].v_threshold: expected a number"),
    (lambda m: m.update(mode="batch"), "mode: expected one of multistep, streaming"),
    (lambda m: m["artifacts"][0].update(path="/etc/passwd"), "leaves the export folder"),
    (lambda m: m["artifacts"][0].update(path="../../../../etc/passwd"), "leaves the export folder"),
])
def test_wrong_types_and_values_are_one_line_errors(zoo_export, edit, needle):
    m = json.loads((zoo_export / "manifest.json").read_text())
    edit(m)
    with pytest.raises(UserError) as exc:
        parse_manifest(m, "DIR/manifest.json")
    assert needle in str(exc.value) and "\n" not in str(exc.value)
    assert str(exc.value).startswith("DIR/manifest.json")


# -- weak cases as CLI calls: exit 2, one stderr line, nothing on stdout, nothing left ----------------------

_BAD = {
    "neurons-str": lambda m: m.update(neurons="oops"),
    "artifacts-dict": lambda m: m.update(artifacts={"a": 1}),
    "path-null": lambda m: m["artifacts"][0].update(path=None),
    "shape-negative": lambda m: m.update(input_shape=[8, -1, 1, 8, 8]),
    "shape-4TiB": lambda m: m.update(input_shape=[1 << 20, 1 << 20, 1 << 2]),
    "schema-unknown": lambda m: m.update(schema=99),
    "path-absolute": lambda m: m["artifacts"][0].update(path="/etc/passwd"),
    "path-dotdot": lambda m: m["artifacts"][0].update(path="../../../../etc/passwd"),
    "neuron-index": lambda m: m["neurons"][0].update(index="x"),
    "settings-str": lambda m: m["model"].update(settings="oops"),
    "not-json": None,
    "too-deep": None,
}
_RAW = {"not-json": '{"schema": 1, "artifacts": [', "too-deep": "[" * 200_000}


@pytest.mark.parametrize("command", ["verify", "inspect", "bench", "triton-repo"])
@pytest.mark.parametrize("case", sorted(_BAD))
def test_weak_manifest_cases_on_the_command_line(zoo_export, tmp_path, tmp_path_factory, monkeypatch, capsys,
                                                 command, case):
    # A private temp folder: another test (or pytest worker) may make its own dsr-* folders in the shared one.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path_factory.mktemp("private-tmp")))
    d = _copy(zoo_export, tmp_path / "d", _BAD[case])
    if case in _RAW:
        (d / "manifest.json").write_text(_RAW[case])
    before, files = _temp_leftovers(), sorted(p.name for p in d.iterdir())
    extra = {"bench": ["--iters", "1", "--batch", "1", "--no-memcpy"], "triton-repo": ["--out", tmp_path / "repo"]}
    code, out, err = run_cli(capsys, command, d, *extra.get(command, []))
    assert code == 2, out + err
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and "manifest.json" in err, err
    if case == "not-json":
        assert "not valid JSON" in err  # bench used to say "no usable backend"
    assert sorted(p.name for p in d.iterdir()) == files and _temp_leftovers() <= before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


# -- 1. a manifest never switches trust_pickle on ---------------------------------------------------------

def test_a_manifest_cannot_switch_trust_pickle_on(zoo_export, tmp_path, capsys):
    marker = tmp_path / "pwned"
    (tmp_path / "evil.pt").write_bytes(_evil_pickle(marker))

    def edit(m):
        m["model"].update(checkpoint=str(tmp_path / "evil.pt"), trust_pickle=True)
    d = _copy(zoo_export, tmp_path / "d", edit)
    code, out, err = run_cli(capsys, "verify", d)
    assert not marker.exists(), "the checkpoint's pickle ran"
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "--trust-pickle" in err  # the flag it names exists now
    # Only the command line grants trust: then the file is unpickled (and is not a state dict).
    code, _, err = run_cli(capsys, "verify", d, "--trust-pickle")
    assert marker.exists() and code == 2


# -- 2. a manifest's model spec is built only for zoo specs, --model or --trust-model-code ------------------

def test_a_manifest_spec_outside_the_zoo_is_not_imported(zoo_export, tmp_path, capsys):
    marker = tmp_path / "imported"
    (tmp_path / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef make():\n    raise SystemExit(0)\n")
    d = _copy(zoo_export, tmp_path / "d", lambda m: m["model"].update(spec=f"{tmp_path / 'evil.py'}:make"))
    code, out, err = run_cli(capsys, "verify", d)
    assert not marker.exists(), "verify imported the manifest's model file"
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "outside the zoo" in err and "--model" in err and "--trust-model-code" in err
    # The same for os:abort (a module spec), and for bench's torch backend on the folder.
    d2 = _copy(zoo_export, tmp_path / "d2", lambda m: m["model"].update(spec="os:abort"))
    code, _, err = run_cli(capsys, "verify", d2)
    assert code == 2 and "outside the zoo" in err
    code, _, err = run_cli(capsys, "bench", d2, "-b", "torch", "--iters", "1", "--batch", "1", "--no-memcpy")
    assert code == 2 and "outside the zoo" in err


def test_verify_with_model_on_the_command_line(zoo_export, tmp_path, capsys):
    d = _copy(zoo_export, tmp_path / "d", lambda m: m["model"].update(spec="os:abort"))
    code, out, err = run_cli(capsys, "verify", d, "--model", ZOO, "--json")
    assert code == 0, err
    assert json.loads(out)["model"] == ZOO


# -- 3. artifact paths stay inside the folder; an unchecked artifact is not a pass --------------------------

def test_a_symlink_out_of_the_folder_is_refused(zoo_export, tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(zoo_export / "model.onnx", outside / "model.onnx")
    d = _copy(zoo_export, tmp_path / "d")
    (d / "model.onnx").unlink()
    (d / "model.onnx").symlink_to(outside / "model.onnx")
    for command in ("verify", "inspect"):
        code, out, err = run_cli(capsys, command, d)
        assert code == 2 and out == "" and "leads out of the export folder" in err, err
    from dsr_deploy.runtime import load_runner

    with pytest.raises(UserError, match="leads out of the export folder"):
        load_runner(d, backend="onnxruntime")


def test_an_artifact_no_backend_ran_fails_verify_unless_allowed(zoo_export, tmp_path, capsys):
    def edit(m):
        m["artifacts"].append({"format": "tflite", "path": "model.tflite"})
    d = _copy(zoo_export, tmp_path / "d", edit)
    (d / "model.tflite").write_bytes(b"not run here")
    code, out, err = run_cli(capsys, "verify", d, "--json")
    report = json.loads(out)
    assert code == 1 and report["passed"] is False
    assert report["unchecked"] == [{"artifact": "model.tflite", "format": "tflite",
                                    "reason": "no backend runs this format"}]
    code, out, _ = run_cli(capsys, "verify", d)
    assert code == 1 and "model.tflite (tflite) ran in no backend here" in out
    code, out, _ = run_cli(capsys, "verify", d, "--json", "--allow-skipped")
    assert code == 0 and json.loads(out)["passed"]


# -- 4. tampered .pt2 archives are refused unless --trust-pickle; TorchScript is already safe ----------------

def _rewrite_zip(src: Path, dst: Path, change) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        names = zin.namelist()
        for name in names:
            data = change(name, zin.read(name))
            if data is not None:
                zout.writestr(name, data)
        extra = change(None, names)
        for name, data in (extra or {}).items():
            zout.writestr(name, data)


def _tamper_pt2(src: Path, dst: Path, how: str, marker: Path) -> None:
    evil = _evil_pickle(marker)

    def change(name, data):
        if name is None:  # extra entries
            if how == "use_pickle":
                prefix = next(n for n in data if n.endswith("model_weights_config.json")).rsplit("/", 1)[0]
                return {f"{prefix}/weight_evil": evil}
            return None
        if how == "use_pickle" and name.endswith("model_weights_config.json"):
            config = json.loads(data)
            config["config"]["evil"] = {"path_name": "weight_evil", "is_param": False, "use_pickle": True,
                                        "tensor_meta": None}
            return json.dumps(config)
        if how == "sample_inputs" and "/data/sample_inputs/" in name:
            return evil
        return data
    _rewrite_zip(src, dst, change)


@pytest.mark.parametrize("how", ["use_pickle", "sample_inputs"])
def test_a_tampered_pt2_is_refused_unless_trusted(zoo_export, tmp_path, capsys, how):
    from dsr_deploy.runtime import load_runner
    from dsr_deploy.runtime.pt2 import pickled_entries

    marker = tmp_path / "pwned"
    assert pickled_entries(zoo_export / "model.pt2") == []  # our own exports load safely
    d = _copy(zoo_export, tmp_path / "d")
    _tamper_pt2(zoo_export / "model.pt2", d / "model.pt2", how, marker)
    with pytest.raises(UserError, match="--trust-pickle") as exc:
        load_runner(d / "model.pt2", backend="pt2").load()
    assert "\n" not in str(exc.value)
    assert not marker.exists()
    # bench and verify go through the same runner: refused, and verify fails the artifact.
    code, out, err = run_cli(capsys, "bench", d / "model.pt2", "--iters", "1", "--batch", "1", "--no-memcpy")
    assert code == 2 and out == "" and "--trust-pickle" in err and not marker.exists()
    code, out, _ = run_cli(capsys, "verify", d, "--json")
    pt2 = [r for r in json.loads(out)["runs"] if r["artifact"] == "model.pt2"]
    assert code == 1 and pt2 and "pickled Python objects" in pt2[0]["reason"] and not marker.exists()
    from dsr_deploy.serving.pytriton_server import prepare_model  # serve --backend pt2 loads it the same way

    with pytest.raises(UserError, match="--trust-pickle"):
        prepare_model(d, "pt2")
    assert not marker.exists()
    code, out, _ = run_cli(capsys, "inspect", d / "model.pt2", "--json")
    assert code == 0 and json.loads(out)["pickled_entries"] and not marker.exists()
    # --trust-pickle (the command line) lets torch unpickle it: the code runs.
    try:
        load_runner(d / "model.pt2", backend="pt2", trust_pickle=True).load()
    except UserError:
        pass  # the injected entry need not make a loadable program; it was unpickled
    assert marker.exists()


def test_torchscript_loading_refuses_foreign_globals(tmp_path):
    from dsr_deploy.runtime import load_runner

    folder = exported("sj_neuron_net", NEURON_SHAPE, formats=("torchscript",))
    marker = tmp_path / "pwned"
    evil = pickle.dumps(_Marker(marker), protocol=2)  # GLOBAL builtins.open + REDUCE
    control = tmp_path / "control.ts"  # the same rewrite with data.pkl unchanged loads: only the pickle differs
    _rewrite_zip(folder / "model.ts", control, lambda name, data: data if name is not None else None)
    assert load_runner(control, backend="torchscript").load().backend == "torchscript"
    ts = tmp_path / "model.ts"
    _rewrite_zip(folder / "model.ts", ts,
                 lambda name, data: (evil if name is not None and name.endswith("/data.pkl") else data)
                 if name is not None else None)
    with pytest.raises(UserError, match="torchscript: cannot load"):
        load_runner(ts, backend="torchscript").load()
    assert not marker.exists()


def test_verify_takes_the_checkpoint_from_the_command_line(zoo_export, tmp_path, capsys):
    from dsr_deploy import models

    torch.save(models.build("digits-cnn").state_dict(), tmp_path / "weights.pt")
    d = _copy(zoo_export, tmp_path / "d", lambda m: m["model"].update(checkpoint=str(tmp_path / "missing.pt")))
    code, _, err = run_cli(capsys, "verify", d)
    assert code == 2 and "missing.pt" in err
    code, out, err = run_cli(capsys, "verify", d, "--checkpoint", tmp_path / "weights.pt", "--json")
    assert code == 0, err
    assert json.loads(out)["checkpoint"] == str(tmp_path / "weights.pt")


def test_the_writer_never_writes_a_manifest_its_readers_refuse(tmp_path):
    from dsr_deploy.manifest import write_manifest

    with pytest.raises(UserError, match="artifacts\\[0\\].path"):
        write_manifest(tmp_path, {"schema": 1, "artifacts": [{"format": "onnx", "path": "../x.onnx"}]})
    assert not (tmp_path / "manifest.json").exists()
    m = write_manifest(tmp_path, {"schema": 1, "artifacts": [{"format": "onnx", "path": "x.onnx"}], "extra": 1})
    assert read_manifest(tmp_path) == m and m["extra"] == 1
