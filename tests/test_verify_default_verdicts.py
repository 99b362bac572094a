"""The closing figures of issue 24: verify's default verdicts (no --input) on the zoo's PreAct-ResNet-18, IF and
LIF, float32 and int8, and on the authors-style nets (benchmarks/verify_zoo_defaults.py), and the words the docs
use for them: every folder passed with its sample size, every neuron exact, no defect; the int8 top-1 figures that
docs/fidelity.md quotes are the results file's; README and docs/fidelity.md say what is exact and what is measured."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "verify_zoo_defaults.json"


def _rows() -> dict:
    return {(r["model"], r["precision"]): r for r in json.loads(RESULTS.read_text())["rows"]}


def test_every_default_verdict_passed_with_exact_neurons_and_no_defect():
    rows = _rows()
    want = {(f"preact-resnet18-{k}", p) for k in ("if", "lif") for p in ("float32", "int8")}
    assert want <= set(rows) and any(m.startswith("authors:") for m, _ in rows)
    for key, row in rows.items():
        assert row["passed"] and row["exit_code"] == 0 and row["samples"] >= 16, key
        assert row["generated"]["seed"] == 0 and row["activity"]["output_nonzero"] > 0, key  # not a silent net
        ran = [r for r in row["runs"] if r["status"] == "ok"]
        assert ran and all(r["neuron_exact"] is True and r["defects"] == [] for r in ran), key
        assert all(r["verdict"] in ("exact", "numerical divergence") for r in ran), key


def _onnx_top1(row: dict) -> str:
    (top1,) = {r["top1"] for r in row["runs"] if r["status"] == "ok" and r["artifact"] == "model.onnx"}
    return f"{100 * top1:.1f} %"


def test_the_int8_figures_in_docs_fidelity_are_the_results():
    rows = _rows()
    text = (ROOT / "docs" / "fidelity.md").read_text()
    assert "The int8 rule, reviewed" in text
    for key in (("preact-resnet18-if", "int8"), ("preact-resnet18-lif", "int8"), ("authors:resnet_if", "int8"),
                ("authors:resnet_lif", "int8")):
        assert _onnx_top1(rows[key]) in text, key


def test_readme_and_fidelity_say_what_is_exact_and_what_is_measured():
    readme = (ROOT / "README.md").read_text()
    fidelity = (ROOT / "docs" / "fidelity.md").read_text()
    assert "every neuron, every backend, every format" in readme and "Measured, not promised" in readme
    assert "**exact** is every neuron given its input" in fidelity and "**measured** is the whole network" in fidelity
    assert "verify_zoo_defaults.md" in readme and "verify_zoo_defaults.md" in fidelity
