"""First contact with a GPU (scripts/gpu_check.sh runs this): every stage wrapped, the report rewritten after each.

Stages: environment, build (scripts/gpu_check_build.py), float kernels, quantised kernels, the torch CUDA op,
TorchScript and torch.export (pt2) on the device, timings by size and dtype against a device-to-device copy, the
T=20 x 32x128x16x16 timing table (SpikingJelly column), TensorRT engines of the digits model. A stage that raises is
reported as failed (its error line in the report, its traceback in the log) and the next stage runs; a stage that
cannot run here says "not checked: <why>". The report (gpu_check.json + gpu_check.md) is rewritten under --out-dir
after every stage, and on a GPU also as benchmarks/results/gpu_check_<GPU>.{json,md}; the last line printed is the
summary. Without a GPU (or a CUDA build of torch) the same stages run as a CPU dry run of their logic, and the
report says what could not be checked and why. Nothing here imports torch before its stage: a broken torch is a
failed stage, not an empty report.

DSR_GPU_CHECK_RAISE=<stage> makes that stage raise (the test suite checks the report survives it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(HERE))

NOT_CHECKED = "not checked"


class Report:
    """The stages run so far, written (atomically) after each one."""

    def __init__(self, out_dir: Path, log: Path, budget_s: float):
        self.out_dir, self.log, self.budget_s = out_dir, log, budget_s
        self.t0 = time.monotonic()
        self.copies: list[Path] = []  # benchmarks/results/gpu_check_<GPU> (a GPU run only)
        self.data = {"meta": {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                              "host": platform.node(), "python": sys.version.split()[0], "argv": sys.argv[1:]},
                     "mode": "starting", "stages": [], "results": {}}

    def stage(self, name: str, fn) -> object:
        """Run ``fn() -> (status, note, result)``; any exception is a failed stage. Returns the result."""
        t = time.monotonic()
        result = None
        if time.monotonic() - self.t0 > self.budget_s:
            status, note = NOT_CHECKED, f"not checked: the time budget ({self.budget_s:.0f} s) is spent"
        else:
            try:
                if os.environ.get("DSR_GPU_CHECK_RAISE") == name:
                    raise RuntimeError(f"raised on request (DSR_GPU_CHECK_RAISE={name})")
                status, note, result = fn()
            except BaseException as exc:  # noqa: BLE001 - a stage's failure is a report line, never an empty report
                if isinstance(exc, KeyboardInterrupt):
                    self._record(name, "failed", "interrupted", None, t)
                    raise
                first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
                status, note = "failed", f"{type(exc).__name__}: {first}"
                with open(self.log, "a") as f:
                    f.write(f"--- stage {name} failed\n{traceback.format_exc()}\n")
        self._record(name, status, note, result, t)
        print(f"gpu_check: {name}: {status}{' - ' + note if note else ''} ({time.monotonic() - t:.1f} s)", flush=True)
        return result

    def _record(self, name, status, note, result, t):
        self.data["stages"].append({"name": name, "status": status, "note": note,
                                    "seconds": round(time.monotonic() - t, 2)})
        if result is not None:
            self.data["results"][name] = result
        self.write()

    def summary(self) -> str:
        st = self.data["stages"]
        count = {s: sum(x["status"] == s for x in st) for s in ("ok", "failed", NOT_CHECKED)}
        failed = ", ".join(x["name"] for x in st if x["status"] == "failed")
        return (f"gpu_check summary ({self.data['mode']}): {count['ok']} ok, {count['failed']} failed"
                + (f" ({failed})" if failed else "") + f", {count[NOT_CHECKED]} not checked; "
                f"{time.monotonic() - self.t0:.0f} s; report {self.out_dir / 'gpu_check.json'}")

    def write(self) -> None:
        self.data["summary"] = self.summary()
        text = json.dumps(self.data, indent=2, default=str)
        md = render(self.data)
        for base in [self.out_dir / "gpu_check", *self.copies]:
            _atomic(base.with_suffix(".json"), text)
            _atomic(base.with_suffix(".md"), md)


def _atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def render(data: dict) -> str:
    """The markdown report: the stage table, then each stage's rows."""
    meta = data["meta"]
    lines = [f"# GPU check ({meta['date']}): {data['mode']}", ""]
    env = data["results"].get("environment", {})
    if env:
        lines += [f"GPU: **{env.get('gpu')}**; torch {env.get('torch')} (CUDA {env.get('torch_cuda')}); nvcc "
                  f"{env.get('nvcc') or 'none'}; cmake {env.get('cmake') or 'none'}; tensorrt "
                  f"{env.get('tensorrt') or 'not importable'}; CPU {env.get('cpu')}", ""]
    lines += ["| stage | status | note | s |", "|---|---|---|---|"]
    lines += [f"| {s['name']} | {s['status']} | {str(s['note']).replace('|', '/')} | {s['seconds']} |"
              for s in data["stages"]]
    from gpu_check_render import stage_sections

    lines += stage_sections(data["results"])
    lines += ["", data.get("summary", "")]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, required=True, help="where gpu_check.json / .md and the build log go")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--seed", type=int, default=None, help="default: fresh from the clock")
    ap.add_argument("--dry-run-cpu", action="store_true", help="the CPU dry run even where a GPU is visible")
    ap.add_argument("--quick", action="store_true", help="small shapes only (the test suite's dry run)")
    ap.add_argument("--build-only", action="store_true", help="environment and build only")
    ap.add_argument("--budget", type=float, default=450.0, help="seconds; later stages are skipped past it")
    ap.add_argument("--only", default="", help="comma-separated stages to run (environment and build always run)")
    ap.add_argument("--no-results-copy", action="store_true", help="do not write benchmarks/results/ (GPU runs)")
    args = ap.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    log = args.out_dir / "gpu_check_build.log"
    log.write_text("")
    report = Report(args.out_dir, log, args.budget)
    from gpu_check_stages import Stages

    stages = Stages(args, report, log)
    try:
        stages.run_all()
    finally:
        report.write()
        print(report.summary(), flush=True)
    return 1 if any(s["status"] == "failed" for s in report.data["stages"]) else 0


if __name__ == "__main__":
    sys.exit(main())
