"""Measure the fidelity contract on deep LIF networks: neurons exact per backend (teacher forced), and how far whole
networks agree end to end on this CPU.

PreAct-ResNet-18 LIF (CIFAR-sized, T=20, batch 2) with several random initialisations (the zoo's seeded one and
two more seeds), exported to TorchScript, ONNX and pt2, verified with direct-encoded inputs (a static image
repeated over T, what the network sees in use) and with white noise at every step. Per artifact x backend: the
neuron check, max |diff| of the output, top-1 agreement, the lowest layer's end-to-end spike agreement, where
divergence starts and how far that layer's input already differed.

Writes benchmarks/results/fidelity_cpu.{md,json} with the machine's CPU model and vector extensions. Usage::

    python benchmarks/bench_fidelity.py [--seeds 0,1,2] [--random 2] [--out benchmarks/results/fidelity_cpu]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (20, 2, 3, 32, 32)


def _resnet(seed: int):
    import torch

    from dsr_deploy.models.preact_resnet import PreActResNet18

    torch.manual_seed(seed)
    return PreActResNet18(T=20, neuron="lif", num_classes=10).eval()


# MODEL specs for export / verify: file.py:factory, each a fixed initialisation.
def preact_resnet18_lif_seed1():
    return _resnet(1)


def preact_resnet18_lif_seed2():
    return _resnet(2)


def cpu_flags() -> list:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return sorted(f for f in line.split(":", 1)[1].split()
                              if f.startswith(("avx", "sse4", "fma", "asimd", "sve")))
    except OSError:
        pass
    return []


def main(argv=None) -> int:
    from dsr_deploy.bench import library_versions, machine_info
    from dsr_deploy.export import export_model
    from dsr_deploy.model_spec import load_model
    from dsr_deploy.verify import verify_folder

    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1,2", help="0 = the zoo's seeded network; others: torch.manual_seed(k)")
    ap.add_argument("--random", type=int, default=2, help="generated inputs per encoding")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/fidelity_cpu"))
    args = ap.parse_args(argv)
    rows = []
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in [int(s) for s in args.seeds.split(",")]:
            spec = ("zoo:preact-resnet18-lif" if seed == 0
                    else f"{Path(__file__).resolve()}:preact_resnet18_lif_seed{seed}")
            loaded = load_model(spec)
            out = Path(tmp) / f"seed{seed}"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                export_model(loaded.model, SHAPE, out, formats_=("torchscript", "onnx", "pt2"), spec=loaded.spec)
            for encoding in ("direct", "noise"):
                report = verify_folder(out, n_random=args.random, encoding=encoding, trust_model_code=True)
                for r in report["runs"]:
                    if r["status"] != "ok":
                        continue
                    d, f = r["divergence"], r["first_input_difference"]
                    rows.append({
                        "network": f"seed {seed}" + (" (zoo)" if seed == 0 else ""), "inputs": encoding,
                        "artifact": r["artifact"],
                        "backend": r["backend"] + (f" ({r['variant']})" if r["variant"] else ""),
                        "neuron_exact": r["neuron_exact"], "max_abs_diff": r["max_abs_diff"],
                        "top1_agreement": r["top1_agreement"], "min_layer_agreement": r["min_layer_agreement"],
                        "divergence_layer": d["layer"] if d else None,
                        "divergence_input_rel_diff": d["input_max_rel_diff"] if d else None,
                        "first_input_difference_layer": f["layer"] if f else None,
                        "first_input_rel_diff": f["input_max_rel_diff"] if f else None,
                        "passed": r["passed"], "failures": r["failures"],
                    })
                    print(json.dumps(rows[-1]), flush=True)
    doc = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "seconds": round(time.time() - t0, 1),
           "machine": {**machine_info(), "cpu_vector_flags": cpu_flags()}, "libraries": library_versions(),
           "shape": list(SHAPE), "random_inputs_per_encoding": args.random, "rows": rows}
    Path(args.out + ".json").write_text(json.dumps(doc, indent=2) + "\n")
    m = doc["machine"]
    lines = [
        "# Fidelity on PreAct-ResNet-18 LIF (T=20, batch 2), CPU",
        "",
        f"Machine: {m.get('cpu_model')} ({m.get('cpu_cores_usable')} usable cores); vector extensions: "
        f"{' '.join(doc['machine']['cpu_vector_flags'])}.",
        f"Libraries: {', '.join(f'{k} {v}' for k, v in doc['libraries'].items() if v)}. Created {doc['created']}, "
        f"{doc['seconds']} s. Generated by `benchmarks/bench_fidelity.py`.",
        "",
        f"Inputs: {args.random} per encoding; direct = one N(0,1) image per item repeated over T; noise = N(0,1) at "
        "every step. `neurons`: the teacher-forced check (every neuron fed the reference's input, in the backend). "
        "`first input diff`: the first layer whose input differs from PyTorch's end to end, and by how much "
        "relative to that input's largest magnitude.",
        "",
        "| network | inputs | artifact | backend | neurons | max abs diff | top-1 | lowest layer agreement | "
        "divergence starts | first input diff | pass |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        div = "-" if r["divergence_layer"] is None else (
            f"L{r['divergence_layer']} (input rel. diff {r['divergence_input_rel_diff']:.2g})")
        first = "-" if r["first_input_difference_layer"] is None else (
            f"L{r['first_input_difference_layer']} ({r['first_input_rel_diff']:.2g})")
        lines.append(f"| {r['network']} | {r['inputs']} | {r['artifact']} | {r['backend']} | "
                     f"{'exact' if r['neuron_exact'] else 'DIFFER'} | {r['max_abs_diff']:.3g} | "
                     f"{100 * r['top1_agreement']:.1f} % | {100 * r['min_layer_agreement']:.4f} % | {div} | {first} | "
                     f"{'yes' if r['passed'] else 'NO: ' + '; '.join(r['failures'])} |")
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}.md/.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
