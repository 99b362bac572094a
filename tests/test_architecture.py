"""The house rules, read from the sources with ``ast``: no module imports another module's private name, the
import graph of ``dsr_deploy`` (function-level imports included) has no cycle; runner options are typed and
the runner lifecycle is the base's template."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import numpy as np
import pytest

from dsr_deploy.errors import UserError
from dsr_deploy.runtime import Runner, TensorSpec, get_backend, load_runner

PKG = Path(__file__).resolve().parents[1] / "dsr_deploy"


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _imports(mods: dict[str, Path]):
    """(importer, imported module, name or None) for every import of a dsr_deploy module anywhere in a file."""
    for mod, path in mods.items():
        pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.split(".")[0] != "dsr_deploy":
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    yield (mod, sub, None) if sub in mods else (mod, target, alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in mods:
                        yield mod, alias.name, None


def test_no_private_names_imported_across_modules():
    mods = _modules()
    bad = [f"{m} imports {name} from {t}" for m, t, name in _imports(mods)
           if name and name.startswith("_") and not name.startswith("__") and t != m]
    assert not bad, "\n".join(bad)


def test_import_graph_has_no_cycle():
    mods = _modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, t, _ in _imports(mods):
        if t in mods and t != m:
            edges[m].add(t)
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(t):] + [t]))
            if t not in state:
                visit(t)
        path.pop()
        state[m] = 2

    for m in sorted(mods):
        if m not in state:
            visit(m)
    assert len(state) == len(mods)


def test_the_checker_sees_a_cycle_and_a_private_import(tmp_path, monkeypatch):
    # The two checks above can fail: a tiny package with both faults.
    pkg = tmp_path / "dsr_deploy"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import _hidden\n")
    (pkg / "b.py").write_text("def f():\n    from . import a\n_hidden = 1\n")
    monkeypatch.setattr(sys.modules[__name__], "PKG", pkg)
    with pytest.raises(AssertionError, match="imports _hidden"):
        test_no_private_names_imported_across_modules()
    with pytest.raises(AssertionError, match="import cycle"):
        test_import_graph_has_no_cycle()


class Counting(Runner):
    backend = "counting"

    def __init__(self):
        super().__init__("counting")
        self.loads = self.runs = 0

    def _load(self):
        self.loads += 1

    def inputs(self):
        return [TensorSpec("input", ("T", 3), "float32")]

    def outputs(self):
        return [TensorSpec("output", ("T", 3), "float32")]

    def _infer(self, feeds, copy_outputs):
        self.runs += 1
        return {"output": feeds["input"] * 2}


def test_infer_is_the_template():
    r = Counting()
    x = np.ones((2, 3), np.float32)
    assert not r.loaded
    np.testing.assert_array_equal(r.infer({"input": x})["output"], 2 * x)
    r.infer({"input": x})
    assert (r.loads, r.runs, r.loaded) == (1, 2, True)  # loaded once, by the base
    with pytest.raises(UserError, match="counting: input 'input' has dtype float64"):
        r.infer({"input": x.astype(np.float64)})
    assert r.runs == 2
    # check=False hands the feeds over unchecked (bench's timed call)
    assert r.infer({"input": x.astype(np.float64)}, check=False)["output"].dtype == np.float64
    r.release()
    assert not r.loaded


@pytest.mark.parametrize("backend,artifact", [("onnxruntime", "m.onnx"), ("torchscript", "m.ts"),
                                              ("pt2", "m.pt2"), ("tensorrt", "m.plan"), ("torch", "zoo:x")])
def test_an_unknown_option_is_a_user_error(backend, artifact):
    with pytest.raises(UserError, match=rf"{backend}: unknown option\(s\) 'thread'; known: device, threads"):
        get_backend(backend).factory(artifact, thread=4)


def test_options_are_typed_per_backend(tmp_path):
    p = tmp_path / "m.onnx"
    p.write_bytes(b"")
    r = load_runner(p, custom_ops="off", threads=2)
    assert (r.options.custom_ops, r.options.threads, r.options.io_binding) == ("off", 2, False)
    with pytest.raises(UserError, match="unknown option"):
        load_runner(p, input_names=["x"])  # ONNX Runtime reads the names from the file
    with pytest.raises(UserError, match="unknown backend 'nope'"):
        get_backend("nope")


def test_callers_pass_only_known_runner_options():
    # Every keyword given to load_runner(...) in the package, benchmarks and scripts is some backend's option.
    from dataclasses import fields

    from dsr_deploy.runtime import backend_names

    known = {"backend", "trust_model_code"}  # load_runner's own (trust_model_code: an export folder's torch model)
    for name in backend_names():
        known |= {f.name for f in fields(get_backend(name).factory.Options)}
    bad, calls = [], 0
    root = PKG.parent
    for path in [*PKG.rglob("*.py"), *(root / "benchmarks").glob("*.py"), *(root / "scripts").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            func = getattr(node, "func", None)
            if isinstance(node, ast.Call) and getattr(func, "id", getattr(func, "attr", None)) == "load_runner":
                calls += 1
                bad += [f"{path.relative_to(root)}:{node.lineno} {kw.arg}" for kw in node.keywords
                        if kw.arg is not None and kw.arg not in known]
    assert calls > 10 and not bad, (calls, bad)


# -- size: no package function over 80 lines, no package file over 500 (split along a seam, not cut to fit) ----
MAX_FUNCTION_LINES = 80
MAX_FILE_LINES = 500


def _sizes(root: Path):
    """(file lines over the limit, functions over the limit) of every .py file under ``root``."""
    files, functions = [], []
    for p in sorted(root.rglob("*.py")):
        text = p.read_text()
        n = len(text.splitlines())
        if n > MAX_FILE_LINES:
            files.append(f"{p.relative_to(root.parent)}: {n} lines")
        for node in ast.walk(ast.parse(text, str(p))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    functions.append(f"{p.relative_to(root.parent)}:{node.lineno} {node.name}: {length} lines")
    return files, functions


def test_no_function_over_80_lines_and_no_file_over_500():
    files, functions = _sizes(PKG)
    assert not files and not functions, "\n".join(files + functions)


# -- the manifest is read through dsr_deploy.manifest.Manifest's accessors, not by raw key ---------------------
MANIFEST_KEYS = {"schema", "dsr_deploy_version", "created", "mode", "model", "input_shape", "T", "layout", "dtype",
                 "dynamic_batch", "lowering", "target", "neurons", "artifacts", "inputs", "outputs", "input_names",
                 "output_names", "step_shape", "states", "io"}


def _raw_manifest_reads(root: Path):
    """``manifest["io"]`` / ``m.get("states")`` / ``"io" in manifest``: a manifest key read from an object named
    like a manifest (``manifest``, ``m``, ``*_manifest``, ``x.manifest``) outside the files named manifest.py."""
    def manifest_like(expr) -> bool:
        if isinstance(expr, ast.Name):
            return expr.id == "m" or "manifest" in expr.id.lower()
        if isinstance(expr, ast.Attribute):  # self.manifest, ctx.manifest (not manifest.io: the io record)
            return "manifest" in expr.attr.lower()
        if isinstance(expr, ast.BoolOp):  # (manifest or {})
            return manifest_like(expr.values[0])
        if isinstance(expr, ast.Call):  # read_manifest(folder)["io"]
            return manifest_like(expr.func)
        return False

    bad = []
    for p in sorted(root.rglob("*.py")):
        if p.name == "manifest.py":
            continue
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            recv = key = None
            if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) \
                    and isinstance(node.ctx, ast.Load):
                recv, key = node.value, node.slice.value
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr in ("get", "pop", "setdefault") and node.args \
                    and isinstance(node.args[0], ast.Constant):
                recv, key = node.func.value, node.args[0].value
            elif isinstance(node, ast.Compare) and isinstance(node.left, ast.Constant) \
                    and isinstance(node.ops[0], (ast.In, ast.NotIn)):
                recv, key = node.comparators[0], node.left.value
            if recv is not None and key in MANIFEST_KEYS and manifest_like(recv):
                bad.append(f"{p.relative_to(root.parent)}:{node.lineno} {ast.unparse(node)}")
    return bad


def test_manifest_keys_are_read_only_in_manifest_py():
    bad = _raw_manifest_reads(PKG)
    assert not bad, "read these through dsr_deploy.manifest.Manifest's accessors:\n" + "\n".join(bad)


def test_the_size_and_manifest_checks_can_fail(tmp_path):
    pkg = tmp_path / "dsr_deploy"
    pkg.mkdir()
    (pkg / "long.py").write_text("def f():\n" + "    x = 1\n" * 80 + "\n" * 430)
    (pkg / "reader.py").write_text("def g(manifest, m):\n    return manifest['io'], m.get('states'), "
                                   "'step_shape' in manifest, (manifest.io or {}).get('T')\n")
    (pkg / "manifest.py").write_text("def h(manifest):\n    return manifest['io']\n")
    files, functions = _sizes(pkg)
    assert files == ["dsr_deploy/long.py: 511 lines"] and functions == ["dsr_deploy/long.py:1 f: 81 lines"]
    bad = _raw_manifest_reads(pkg)
    assert [b.split(" ", 1)[0] for b in bad] == ["dsr_deploy/reader.py:2"] * 3, bad
