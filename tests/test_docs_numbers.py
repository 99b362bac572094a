"""The measured tables in the docs are generated from benchmarks/results/*.json (`make docs-numbers`): they match the
committed results, and a changed result shows up in the docs only through the script."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("docs_numbers", ROOT / "scripts" / "docs_numbers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_docs_match_the_results_files(capsys):
    assert _script().main(["--check"]) == 0, capsys.readouterr().err


def test_a_changed_result_is_stale_until_regenerated(tmp_path, capsys):
    dn = _script()
    results = tmp_path / "results"
    shutil.copytree(ROOT / "benchmarks" / "results", results)
    for rel in {rel for rel, _ in dn.BLOCKS.values()}:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
    data = json.loads((results / "bench_kernels_cpu.json").read_text())
    r = next(r for r in data["results"] if r["kind"] == "if")
    r["kernel_prealloc_s"] = r["copy_prealloc_s"] * 1.77  # the kernel now 1.77x a memcpy
    (results / "bench_kernels_cpu.json").write_text(json.dumps(data))
    assert dn.main(["--check"], root=tmp_path, results=results) == 1
    assert "README.md" in capsys.readouterr().err
    assert dn.main([], root=tmp_path, results=results) == 0
    assert "IF 1.77x" in (tmp_path / "README.md").read_text()
    assert "| kernel into a preallocated output vs memcpy (preallocated) | 1.77x |" in \
        (tmp_path / "plugins" / "README.md").read_text()
    assert dn.main(["--check"], root=tmp_path, results=results) == 0
