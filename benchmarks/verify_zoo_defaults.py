"""verify's DEFAULT verdict (no --input) on the zoo's PreAct-ResNet-18, IF and LIF, float32 and int8, and on the
authors-style nets (tests/authors_nets.py: PreAct-ResNet and DVS VGG lookalikes of their code, IF and LIF).

What a user of the authors' code meets: a checkpoint of the zoo network (here a seeded random initialisation; see
ZOO_SETTINGS), exported with the command line as documented (``dsr-deploy export zoo:...``;
float32: every format; int8: ``--precision int8`` with the default ``--target``, calibrated on 32 generated images),
then ``dsr-deploy verify <folder> --json`` with nothing else: the generated inputs, their sample size and seed, and
per artifact x backend the verdict (exact / numerical divergence / defect), the defects, where divergence starts,
top-1 agreement and whether the neuron check was exact.

These are correctness figures, not timings: the machine's load does not change them (only the run time).
Writes benchmarks/results/verify_zoo_defaults.{json,md}. Usage::

    python benchmarks/verify_zoo_defaults.py [--T 4] [--quick] [--out benchmarks/results/verify_zoo_defaults]

``--quick``: the IF float32 case only (a smoke run of the script, a few minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CASES = [("preact-resnet18-if", "float32"), ("preact-resnet18-lif", "float32"),
         ("preact-resnet18-if", "int8"), ("preact-resnet18-lif", "int8"),
         # the authors-style nets (tests/authors_nets.py: their neuron classes, [T*B, ...] layout, logits out)
         ("authors:resnet_if", "float32"), ("authors:resnet_lif", "float32"), ("authors:vgg_if", "float32"),
         ("authors:vgg_lif", "float32"), ("authors:resnet_if", "int8"), ("authors:resnet_lif", "int8")]
#: Zoo settings: the IF net with the zoo's v_threshold 1.0 is silent at random init (a trained one is not), so it
#: is measured at 0.3; LIF at the zoo's defaults (its layers fire 1-36 % of the time).
ZOO_SETTINGS = {"preact-resnet18-if": {"v_threshold": 0.3}, "preact-resnet18-lif": {}}
AUTHORS = ROOT / "tests" / "authors_nets.py"


def _cli(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("dsr-deploy")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "dsr_deploy"]
    return subprocess.run(cmd + list(args), capture_output=True, text=True)


def _checkpoint(name: str, T: int, path: Path) -> None:
    import torch

    from dsr_deploy import models

    torch.manual_seed(0)
    torch.save(models.build(name, T=T, **ZOO_SETTINGS[name]).state_dict(), path)


def _calibration(shape: tuple, path: Path) -> Path:
    np.save(path, np.random.default_rng(7).standard_normal(shape).astype(np.float32))
    return path


def _export(name: str, precision: str, T: int, tmp: Path) -> Path:
    out = tmp / f"{name.replace(':', '_')}_{precision}"
    if name.startswith("authors:"):
        sys.path.insert(0, str(AUTHORS.parent))
        import authors_nets as A

        shape = A.DVS_SHAPE if "vgg" in name else A.CIFAR_SHAPE
        args = ["export", f"{AUTHORS}:{name[8:]}", "--input-shape", ",".join(map(str, shape)), "--out", str(out)]
        cal_shape = (32,) + shape[1:]
    else:
        ck = tmp / f"{name}.pt"
        if not ck.exists():
            _checkpoint(name, T, ck)
        sets = [a for k, v in ZOO_SETTINGS[name].items() for a in ("--set", f"{k}={v}")]
        args = ["export", f"zoo:{name}", "--checkpoint", str(ck), *sets, "--input-shape", f"{T},1,3,32,32",
                "--out", str(out)]
        cal_shape = (T, 32, 3, 32, 32)  # 32 generated images repeated over T, as the net sees them
    if precision == "int8":
        cal = _calibration(cal_shape, tmp / f"cal_{out.name}.npy")
        if len(cal_shape) == 5 and not name.startswith("authors:"):
            np.save(cal, np.repeat(np.load(cal)[:1], T, axis=0))
        args += ["--precision", "int8", "--format", "onnx", "--calibration", str(cal)]
    done = _cli(*args)
    if done.returncode != 0:
        raise SystemExit(f"export {name} {precision} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return out


def _activity(folder: Path, report: dict) -> dict:
    """How much the reference fires on verify's own generated inputs: per neuron layer the fraction of nonzero
    spikes (min, max) and the output's nonzero fraction (an all-silent net would be trivially exact)."""
    import torch

    from dsr_deploy.convert import find_neuron_modules
    from dsr_deploy.io_adapter import wrap_io
    from dsr_deploy.manifest import read_manifest
    from dsr_deploy.model_spec import load_reference_model
    from dsr_deploy.verify.inputs import generated_inputs

    manifest = read_manifest(folder)
    model = wrap_io(load_reference_model(manifest, trust_model_code=True).model, manifest.io).eval()
    counts: dict = {}
    hooks = [m.register_forward_hook(lambda _m, _a, o, n=n: counts.setdefault(n, []).append(
        (int((o != 0).sum()), o.numel()))) for n, m in find_neuron_modules(model).items()]
    nonzero = total = 0
    g = report["generated"]
    with torch.no_grad():
        for _name, x in generated_inputs(manifest, g["samples"], g["seed"], g["encoding"], False):
            y = model(torch.from_numpy(x))
            nonzero, total = nonzero + int((y != 0).sum()), total + y.numel()
    for h in hooks:
        h.remove()
    rates = [sum(a for a, _ in v) / sum(b for _, b in v) for v in counts.values()]
    return {"layers": len(rates), "layer_firing_min": min(rates), "layer_firing_max": max(rates),
            "output_nonzero": nonzero / total}


def _row(name: str, precision: str, report: dict, rc: int) -> dict:
    runs = []
    for r in report["runs"]:
        if r["status"] != "ok":
            runs.append({"artifact": r["artifact"], "backend": r["backend"], "variant": r["variant"],
                         "status": r["status"], "reason": r["reason"], "passed": r["passed"]})
            continue
        div = r["divergence"] or {}
        runs.append({"artifact": r["artifact"], "backend": r["backend"], "variant": r["variant"], "status": "ok",
                     "verdict": r["verdict"], "neuron_exact": r["neuron_exact"], "top1": r["top1_agreement"],
                     "max_abs_diff": r["max_abs_diff"], "min_layer_agreement": r["min_layer_agreement"],
                     "defects": [d["text"] for d in r["defects"]],
                     "divergence_starts": (f"layer {div['layer']} ({div['name']}), its input off by "
                                           f"{div['input_max_rel_diff']:.2g} rel" if div else None),
                     "failures": r["failures"], "passed": r["passed"]})
    return {"model": name, "precision": precision, "samples": report["samples"],
            "generated": report["generated"], "rule": report["rule"], "verdicts": report["verdicts"],
            "passed": report["passed"], "exit_code": rc, "runs": runs}  # no timing: correctness figures only


def _markdown(meta: dict, rows: list) -> str:
    lines = ["# verify's default verdict (no --input): the zoo's PreAct-ResNet-18 and the authors-style nets", "",
             "  ".join(f"{k}: {v}" for k, v in meta.items()), "",
             "| model | precision | samples (seed, encoding) | artifact | backend | verdict | neuron exact | top-1 "
             "| max abs diff | divergence starts | defects | pass |", "|---" * 12 + "|"]
    for row in rows:
        g = row["generated"]
        head = f"| {row['model']} | {row['precision']} | {row['samples']} ({g['seed']}, {g['encoding']})"
        for r in row["runs"]:
            backend = r["backend"] + (f" ({r['variant']})" if r["variant"] else "")
            if r["status"] != "ok":
                lines.append(f"{head} | {r['artifact']} | {backend} | {r['status']}: {r['reason']} | | | | | | "
                             f"{r['passed']} |")
                continue
            top1 = "n/a" if r["top1"] is None else f"{100 * r['top1']:.1f}%"
            lines.append(f"{head} | {r['artifact']} | {backend} | {r['verdict']} | {r['neuron_exact']} | {top1} | "
                         f"{r['max_abs_diff']:.3g} | {r['divergence_starts'] or '-'} | "
                         f"{'; '.join(r['defects']) or '-'} | {r['passed']} |")
    lines += ["", "Folder verdicts:", ""]
    for r in rows:
        rule = r["rule"]["top1"] + (f"; int8: {r['rule']['int8']}" if r["precision"] == "int8" else "")
        a = r["activity"]
        lines.append(f"* {r['model']} {r['precision']}: {'PASSED' if r['passed'] else 'FAILED'} (exit "
                     f"{r['exit_code']}, {r['samples']} samples; rule: {rule}); the reference's {a['layers']} neuron "
                     f"layers fire {100 * a['layer_firing_min']:.1f}-{100 * a['layer_firing_max']:.1f} % of the "
                     f"time, output nonzero {100 * a['output_nonzero']:.1f} %")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="the IF float32 case only")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/verify_zoo_defaults"))
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="dsr-zoo-verify-") as tmpdir:
        tmp = Path(tmpdir)
        for name, precision in CASES[:1] if args.quick else CASES:
            folder = _export(name, precision, args.T, tmp)
            trust = ["--trust-model-code"] if name.startswith("authors:") else []  # our own test file
            done = _cli("verify", str(folder), "--json", *trust)
            if done.returncode not in (0, 1):
                raise SystemExit(f"verify {name} {precision} failed ({done.returncode}): {done.stderr.strip()}")
            report = json.loads(done.stdout)
            rows.append(_row(name, precision, report, done.returncode))
            rows[-1]["activity"] = _activity(folder, report)
            print(f"{name} {precision}: {'PASSED' if rows[-1]['passed'] else 'FAILED'} {rows[-1]['verdicts']}",
                  file=sys.stderr)
    from dsr_deploy.machine import cpu_flags, cpu_model

    meta = {"machine": f"{cpu_model()} ({' '.join(cpu_flags())}), {os.cpu_count()} cores",
            "load": "correctness figures (the machine's load changes only the run time)",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "networks": f"zoo PreAct-ResNet-18 at T={args.T}, CIFAR 3x32x32, seeded random weights "
                        "(torch.manual_seed(0)), IF at v_threshold 0.3, LIF at the zoo's defaults; "
                        "authors-style nets of tests/authors_nets.py",
            "command": "dsr-deploy verify <folder> --json (nothing else)"}
    out = Path(args.out)
    if args.quick:
        out = out.with_name(out.name + "_quick")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    out.with_suffix(".md").write_text(_markdown(meta, rows))
    print(_markdown(meta, rows))


if __name__ == "__main__":
    main()
