"""The per-stage sections of scripts/gpu_check.py's markdown report (from the JSON results)."""

from __future__ import annotations


def _correctness(rows) -> list[str]:
    out = ["", "## Float kernels vs the reference (the Python reference on the same device)", ""]
    for dtype in ("float32", "float16", "bfloat16"):
        sel = [r for r in rows if r["dtype"] == dtype]
        worst = min((r["spikes_equal"] for r in sel if r.get("spikes_equal") is not None), default=None)
        out.append(f"- {dtype}: {sum(r['bit_exact'] for r in sel)}/{len(sel)} bit-exact (spikes and final membrane)"
                   + (f", worst spike agreement {worst:.6f}" if worst is not None else ""))
    out += [f"- FAIL: {r}" for r in rows if not r["ok"]]
    return out


def _sizes(rows) -> list[str]:
    out = ["", "## Kernel vs device-to-device copy by size and dtype (IF; median of CUDA-event timings)", "",
           "| size | T | N | dtype | kernel us | copy us | kernel / copy | launch (vec, block, grid) |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "kernel_us" not in r:
            out.append(f"| {r['size']} | {r['T']} | {r['N']} | {r['dtype']} | {r.get('note', '')} | | | |")
            continue
        out.append(f"| {r['size']} | {r['T']} | {r['N']} | {r['dtype']} | {r['kernel_us']:.1f} | {r['copy_us']:.1f} | "
                   f"{r['kernel_over_copy']:.2f} | {r['launch']} |")
    return out


def _layer(res) -> list[str]:
    rows = res["rows"]
    out = ["", "## One layer (T=20, B=32, 128x16x16 on a GPU): kernel vs copy, reference, SpikingJelly", "",
           "| neuron | dtype | kernel ms | copy ms | % of copy bandwidth | reference ms | SpikingJelly ms |",
           "|---|---|---|---|---|---|---|"]
    for t in rows:
        sj = f"{t['spikingjelly_s'] * 1e3:.3f}" if t["spikingjelly_s"] else "n/a"
        out.append(f"| {t['kind'].upper()} | {t['dtype']} | {t['kernel_s'] * 1e3:.3f} | {t['copy_s'] * 1e3:.3f} | "
                   f"{100 * t['fraction_of_copy_bandwidth']:.1f}% | {t['reference_s'] * 1e3:.3f} | {sj} |")
    out.append(f"\nSpikingJelly: {res['spikingjelly']}")
    return out


def _rows(title):
    def fmt(rows) -> list[str]:
        return ["", f"## {title}", ""] + [f"- {r}" for r in rows]
    return fmt


SECTIONS = {
    "kernels_float": _correctness,
    "kernels_quantized": _rows("Quantised ops (uint8 / int8 codes) vs the CPU quantised op and the definition"),
    "torch_op": _rows("The torch CUDA op (torch.ops.dsr) vs the reference"),
    "torchscript": _rows("TorchScript export's neurons on the device vs the eager reference (4 calls each)"),
    "pt2": _rows("torch.export (pt2) neurons on the device vs the eager reference"),
    "timings_by_size": _sizes,
    "timings_layer": _layer,
    "tensorrt": _rows("TensorRT engines of the digits model vs PyTorch"),
}


def stage_sections(results: dict) -> list[str]:
    out: list[str] = []
    for name, fmt in SECTIONS.items():
        if results.get(name) is not None:
            try:
                out += fmt(results[name])
            except (KeyError, TypeError, ValueError) as exc:  # a malformed row never loses the report
                out += ["", f"## {name}: (could not render: {exc})"]
    return out
