"""Run the main job (``dsr-deploy quickstart``) as if on other x86-64 CPUs, so PyTorch's oneDNN and ONNX
Runtime's MLAS pick the convolution kernels of those CPUs, and record whether the fidelity contract holds there.

The whole Python process runs under QEMU user-mode emulation (``qemu-x86_64 -cpu MODEL``; Debian package
``qemu-user``), which reports that CPU's CPUID to every library. Slow (about 4 minutes per model on 2 cores), so it
is a script, not a test. Writes benchmarks/results/quickstart_other_cpus.{md,json}. Usage::

    python scripts/other_cpus.py [--cpus Haswell,SandyBridge,host] [--out benchmarks/results/quickstart_other_cpus]

``host`` runs natively. The native kernels must be built first (``dsr-deploy plugins build``); they choose their
own vector path at run time from CPUID as well.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = ("import torch, json; print(json.dumps({'torch_capability': torch.backends.cpu.get_cpu_capability()}))")


def run(cpu: str, out: Path) -> dict:
    prefix = [] if cpu == "host" else ["qemu-x86_64", "-cpu", cpu]
    env_note = "native" if cpu == "host" else f"qemu-x86_64 -cpu {cpu}"
    probe = subprocess.run(prefix + [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=600)
    cap = json.loads(probe.stdout.strip().splitlines()[-1])["torch_capability"] if probe.returncode == 0 else None
    t0 = time.time()
    proc = subprocess.run(prefix + [sys.executable, "-m", "dsr_deploy", "quickstart", "--out", str(out), "--no-bench",
                                    "--json"], capture_output=True, text=True, timeout=3600)
    row = {"cpu": cpu, "how": env_note, "torch_capability": cap, "exit_code": proc.returncode,
           "seconds": round(time.time() - t0, 1)}
    try:
        summary = json.loads(proc.stdout)
    except ValueError:
        row["error"] = [line for line in proc.stderr.splitlines() if "qemu-x86_64: warning" not in line][-3:]
        return row
    row.update(passed=summary["passed"], neurons_exact=summary["neurons_exact"],
               end_to_end_identical=summary["end_to_end_identical"], pytorch_accuracy=summary["pytorch_accuracy"])
    row["runs"] = [{"artifact": r["artifact"], "backend": r["backend"], "variant": r.get("variant"),
                    "status": r["status"], "neuron_exact": r.get("neuron_exact"), "max_abs_diff": r.get("max_abs_diff"),
                    "divergence": r.get("divergence"), "passed": r.get("passed")} for r in summary["verify"]]
    row["accuracy"] = [{"artifact": a["artifact"], "backend": a["backend"], "variant": a.get("variant"),
                        "accuracy": a.get("accuracy"), "identical_to_pytorch": a.get("identical_to_pytorch"),
                        "predictions_differing": a.get("predictions_differing")} for a in summary["accuracy"]]
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpus", default="Haswell,SandyBridge,host")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/quickstart_other_cpus"))
    args = ap.parse_args(argv)
    cpus = [c.strip() for c in args.cpus.split(",") if c.strip()]
    if any(c != "host" for c in cpus) and not shutil.which("qemu-x86_64"):
        print("qemu-x86_64 not found: apt-get install qemu-user", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for cpu in cpus:
            rows.append(run(cpu, Path(tmp) / cpu))
            print(json.dumps({k: v for k, v in rows[-1].items() if k not in ("runs", "accuracy")}), flush=True)
    doc = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": rows}
    Path(args.out + ".json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = ["# The quickstart on other x86-64 CPU models (QEMU user-mode emulation)", "",
             f"Created {doc['created']} by `scripts/other_cpus.py` on the host below; each row runs `dsr-deploy "
             "quickstart --no-bench` with the libraries seeing that CPU model (torch's kernel capability shown).", "",
             "| CPU model | torch capability | exit | passed | neurons exact | ONNX Runtime end to end "
             "| accuracy (PyTorch) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "passed" not in r:
            lines.append(f"| {r['cpu']} | {r['torch_capability']} | {r['exit_code']} "
                         f"| error: {' '.join(r['error'])} | | | |")
            continue
        ort = [x for x in r["runs"] if x["backend"] == "onnxruntime" and x["status"] == "ok"]
        e2e = "; ".join(
            f"{x['variant']}: " + ("identical" if not x["divergence"] else
                                   f"{x['divergence']['spikes_differing']} spike(s) differ "
                                   f"from L{x['divergence']['layer']} "
                                   f"(its input differs by {x['divergence']['input_max_rel_diff']:.2g} rel.)")
            for x in ort) or "-"
        accs = sorted({f"{100 * a['accuracy']:.2f} %" for a in r["accuracy"] if a["accuracy"] is not None})
        lines.append(f"| {r['cpu']} | {r['torch_capability']} | {r['exit_code']} | {r['passed']} "
                     f"| {r['neurons_exact']} | {e2e} | {', '.join(accs)} ({100 * r['pytorch_accuracy']:.2f} %) |")
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    return 0 if all(r.get("passed") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
