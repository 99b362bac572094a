"""The op spec beside the plugins (plugins/ops.json) is the one machine-readable list of the dsr ops: the wire
contract (dsr_deploy/contract.py), the op tables of plugins/README.md and the op list of the Triton repository's
README are checked against it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dsr_deploy import contract
from dsr_deploy.ops import plugin_source_dir

ROOT = Path(__file__).resolve().parents[1]
SPEC = json.loads((ROOT / "plugins" / "ops.json").read_text())


def _op_types(spec: dict) -> list[str]:
    return [op for form in spec["forms"] for op in form["ops"].values()]


def test_the_contract_is_the_spec():
    assert (contract.DOMAIN, contract.DOMAIN_VERSION) == (SPEC["domain"], SPEC["domain_version"])
    assert (contract.PLUGIN_NAMESPACE, contract.PLUGIN_VERSION) == (SPEC["plugin"]["namespace"],
                                                                    SPEC["plugin"]["version"])
    for form in SPEC["forms"]:
        assert getattr(contract, form["contract"]) == form["ops"], form["form"]
    assert sorted(contract.DSR_OPS) == sorted(_op_types(SPEC))
    assert sorted(contract.TENSORRT_PLUGIN_OPS) == sorted(
        op for form in SPEC["forms"] if form["tensorrt_plugin"] for op in form["ops"].values())


def test_the_spec_ships_with_the_plugin_sources():
    assert json.loads((plugin_source_dir() / "ops.json").read_text()) == SPEC


def _tables(text: str) -> dict[str, list[list[str]]]:
    """``{heading path: rows}`` of every markdown table under a ``###`` / ``####`` heading."""
    out: dict[str, list[list[str]]] = {}
    h3 = h4 = ""
    for line in text.splitlines():
        if line.startswith("#### "):
            h4 = line[5:].strip()
        elif line.startswith("#"):  # any other heading starts a new section
            h3, h4 = line.lstrip("#").strip(), ""
        elif line.startswith("|") and not set(line) <= set("|-: "):
            out.setdefault(f"{h3} / {h4}" if h4 else h3, []).append([c.strip() for c in line.strip("|").split("|")])
    return {k: rows[1:] for k, rows in out.items()}  # without the header row


def _type(cell: str) -> str:
    """A README type cell as the spec writes it: ``T``, ``Q`` (``uint8 / int8 (Q)``) or a dtype."""
    m = re.search(r"\((\w)\)$", cell)
    return m.group(1) if m else cell


def test_the_plugin_readme_tables_are_the_spec():
    tables = _tables((ROOT / "plugins" / "README.md").read_text())
    for form in SPEC["forms"]:
        if "attributes" in form:  # a family with its own attribute set: its section's table lists them
            heading = next((h for h in tables if ", ".join(form["ops"].values()) in h), None)
            assert heading, f"plugins/README.md has no section for {', '.join(form['ops'].values())}"
            got = [(r[0].strip("`"), {"float": "float32", "int": "int64"}.get(r[1], r[1])) for r in tables[heading]]
            assert got == [(a["name"], a["type"]) for a in SPEC[form["attributes"]]], heading
            continue
        heading = next((h for h in tables if h.startswith(", ".join(form["ops"].values()) + " (")), None)
        assert heading, f"plugins/README.md has no section for {', '.join(form['ops'].values())}"
        heading = heading.split(" / ")[0]
        for side in ("inputs", "outputs"):
            rows = tables[f"{heading} / {side.capitalize()}"]
            got = [(r[0].strip("`"), _type(r[1])) for r in rows]
            assert got == [(p["name"], p["type"]) for p in form[side]], (heading, side)
    attrs = [(r[0].strip("`"), r[1], r[2]) for r in tables["Attributes (all ops)"]]
    want = [(a["name"], a["type"], {"all": "all", "lif": "LIF"}[a["ops"]] + ("" if a["required"] else ", optional"))
            for a in SPEC["attributes"]]
    assert attrs == want


def test_the_triton_readme_lists_every_op():
    from dsr_deploy.serving.triton_repo import readme_text

    known = {"trt_plugin", "trt_plugin_dynamic", "ort_library", "dsr_ops", "trt_ops", "stream_input", "stream_output",
             "state_in", "state_out"}  # what readme_text fills in itself
    fields = re.findall(r"\{(\w+)\}", (ROOT / "dsr_deploy" / "serving" / "triton_readme.md").read_text())
    text = readme_text(**{f: "x" for f in fields if f not in known})
    listed = re.search(r"\(((?:[A-Z]\w+, )+[A-Z]\w+);", text)  # the ops the onnxruntime models may hold
    assert listed, "the Triton README names no dsr op"
    assert sorted(listed.group(1).split(", ")) == sorted(_op_types(SPEC))
    plugins = re.search(r"namespace `dsr`: ((?:[A-Z]\w+, )+[A-Z]\w+)\.", text)  # the TensorRT plugins
    assert plugins and sorted(plugins.group(1).split(", ")) == sorted(
        op for form in SPEC["forms"] if form["tensorrt_plugin"] for op in form["ops"].values())


def test_the_checks_can_fail(tmp_path):
    bad = json.loads(json.dumps(SPEC))
    bad["forms"][2]["ops"]["if"] = "DSRIFSpikeQ8"
    assert sorted(contract.DSR_OPS) != sorted(_op_types(bad))
    with pytest.raises(AssertionError):
        assert _tables("### A (x)\n#### Inputs\n| name | type |\n|---|---|\n| `x` | T |\n")["A (x) / Inputs"] == [
            ["`x`", "Q"]]
