"""Record the real spike-agreement figures of `verify` on the test networks.

Exports each network of tests/export_nets.py (SpikingJelly layers with both SpikingJelly DSR neurons, our
modules with plain torch.nn layers, neuron-only nets) to every format, with the function and the portable ONNX
lowering, and runs :func:`dsr_deploy.verify.verify_folder` with several random inputs plus a batch-8 input.
Writes benchmarks/results/verify_test_nets.{md,json}. Usage::

    python benchmarks/verify_test_nets.py [--random 3] [--out benchmarks/results/verify_test_nets]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

NETS = {"sj_conv_net": "SJ_CONV_SHAPE", "ours_conv_net": "OURS_CONV_SHAPE", "sj_neuron_net": "NEURON_SHAPE",
        "ours_neuron_net": "NEURON_SHAPE"}


def main(argv=None):
    import export_nets as E

    from dsr_deploy.export import export_model
    from dsr_deploy.model_spec import load_model
    from dsr_deploy.verify import verify_folder

    ap = argparse.ArgumentParser()
    ap.add_argument("--random", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/verify_test_nets"))
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        todo = [(net, getattr(E, shape_name), f"{E.nets_file()}:{net}") for net, shape_name in NETS.items()]
        # A larger net where ORT's convolutions can round differently: PreAct-ResNet-18-style, width 16, T=4.
        todo.append(("preact_resnet18_sj_small", (4, 2, 3, 32, 32),
                     f"{ROOT / 'benchmarks' / 'bench_export.py'}:preact_resnet18_sj_small"))
        for net, shape, spec in todo:
            loaded = load_model(spec)
            big = np.random.default_rng(99).standard_normal((shape[0], 8) + tuple(shape[2:])).astype(np.float32) * 2
            np.save(Path(tmp) / f"{net}_b8.npy", big)
            for lowering in (("function", "portable") if net in NETS else ("function",)):
                out = Path(tmp) / f"{net}_{lowering}"
                formats = ("torchscript", "onnx", "pt2") if lowering == "function" else ("onnx",)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    export_model(loaded.model, shape, out, formats=formats, spec=loaded.spec, lowering=lowering)
                report = verify_folder(out, input_file=str(Path(tmp) / f"{net}_b8.npy"), samples=args.random * shape[1],
                                       trust_model_code=True)  # the test nets' own files
                for r in report["runs"]:
                    if r["status"] != "ok":
                        continue
                    rows.append({"net": net, "lowering": lowering, "artifact": r["artifact"],
                                 "backend": r["backend"] + (f" ({r['variant']})" if r["variant"] else ""),
                                 "neuron_exact": r["neuron_exact"],
                                 "max_abs_diff": r["max_abs_diff"], "top1": r["top1_agreement"],
                                 "layers": [(layer["agreement"], layer["spikes_equal"], layer["spikes_total"])
                                            for layer in r["layers"]],
                                 "passed": r["passed"]})
                print(f"{net} {lowering}: {'PASSED' if report['passed'] else 'FAILED'}", file=sys.stderr)
    from dsr_deploy.runtime.onnxruntime import find_ort_library

    lib = find_ort_library()
    from dsr_deploy.machine import cpu_flags, cpu_model

    meta = {"machine": f"{cpu_model()} ({' '.join(cpu_flags())}), {os.cpu_count()} cores",
            "ort_custom_op_library": str(lib) if lib else "not built (function fallback only)",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "inputs": f"{args.random} random [T,B,...] of the export shape + one batch-8 input"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = ["# verify on the test networks: spike agreement per neuron layer, output difference", "",
             "  ".join(f"{k}: {v}" for k, v in meta.items()), "",
             "| net | ONNX lowering | artifact | backend | max abs diff | top-1 "
             "| per-layer spike agreement (equal/total) | pass |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        layers = ", ".join(f"{100 * a:.4f}% ({e}/{t})" for a, e, t in r["layers"])
        lines.append(f"| {r['net']} | {r['lowering']} | {r['artifact']} | {r['backend']} | {r['max_abs_diff']:.3g} | "
                     f"{100 * r['top1']:.1f}% | {layers} | {r['passed']} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
