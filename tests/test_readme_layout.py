"""README.md's Layout section is checked against the package, like the doc numbers against the results: every
module of ``dsr_deploy`` is named there, and every file or folder it names exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def layout_block(text: str) -> str:
    section = text[text.index("## Layout\n"):]
    return section[section.index("```\n") + 4:section.index("\n```", section.index("```\n") + 4)]


def entries(block: str) -> list[tuple[str, str]]:
    """``(path, text)`` per entry: a line starting with a path, with its indented continuation lines."""
    out: list[tuple[str, str]] = []
    for line in block.splitlines():
        if line[:1].strip():
            path, _, rest = line.partition(" ")
            out.append((path, rest))
        elif out:
            out[-1] = (out[-1][0], out[-1][1] + " " + line.strip())
    return out


def named(block: str) -> set[str]:
    """Every path the block names, relative to the repository root: each entry's path; ``dsr_deploy/...`` paths in
    any text; and in a folder's entry the ``name.py`` / ``name.md`` / ``name.json`` files, inside that folder."""
    out: set[str] = set()
    for path, text in entries(block):
        out.add(path.rstrip("/"))
        out.update(p.rstrip("/") for p in re.findall(r"\bdsr_deploy/[\w/]+(?:\.py|/)", text))
        if path.endswith("/"):
            for name in re.findall(r"(?<![\w/.])(\w+\.(?:py|md|json))\b", text):
                out.add(path + name)
    return out


def modules(pkg: Path) -> set[str]:
    return {str(p.relative_to(ROOT)) for p in pkg.rglob("*.py") if p.name != "__main__.py"} | \
        {str(p.relative_to(ROOT)) for p in pkg.rglob("*") if p.is_dir() and (p / "__init__.py").is_file()}


def check(root: Path, text: str) -> tuple[list[str], list[str]]:
    """(modules the Layout leaves out, names in it that do not exist)."""
    names = named(layout_block(text))
    pkg = root / "dsr_deploy"
    missing = sorted(m for m in modules(pkg) - names if not m.endswith("__init__.py") and m != "dsr_deploy")
    stale = sorted(n for n in names if not (root / n).exists())
    return missing, stale


def test_the_layout_names_every_module_and_only_what_exists():
    missing, stale = check(ROOT, (ROOT / "README.md").read_text())
    assert not missing, f"README.md's Layout leaves out: {', '.join(missing)}"
    assert not stale, f"README.md's Layout names what does not exist: {', '.join(stale)}"


def test_the_check_can_fail():
    text = (ROOT / "README.md").read_text()
    before = set(check(ROOT, text)[0])
    gone = text.replace("dsr_deploy/engine.py       TensorRT engine building\n", "")
    assert set(check(ROOT, gone)[0]) - before == {"dsr_deploy/engine.py"}
    stale = text.replace("dsr_deploy/engine.py ", "dsr_deploy/verify.py ", 1)
    missing, names = check(ROOT, stale)
    assert "dsr_deploy/verify.py" in names and "dsr_deploy/engine.py" in missing
