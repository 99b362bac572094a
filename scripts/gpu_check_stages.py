"""The stages of scripts/gpu_check.py, in order; each returns (status, note, result) or raises (a failed stage)."""

from __future__ import annotations

import platform
import re
import shutil
import time
from pathlib import Path

import gpu_check_build as B

ROOT = Path(__file__).resolve().parent.parent
OK, FAILED, NOT_CHECKED = "ok", "failed", "not checked"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


class Stages:
    def __init__(self, args, report, log: Path):
        self.args, self.report, self.log = args, report, log
        self.gpu = False
        self.env: dict = {}
        self.K = None  # gpu_check_kernels, imported in the first stage that needs torch
        self.run = None  # the kernels under test
        self.gen = None
        self.no_kernels = ""
        self.cuda_build = False

    ORDER = ("environment", "build", "kernels_float", "kernels_quantized", "torch_op", "torchscript", "pt2",
             "timings_by_size", "timings_layer", "tensorrt")

    def run_all(self) -> None:
        only = set(self.args.only.split(",")) if self.args.only else None
        names = ("environment", "build", "build_check") if self.args.build_only else self.ORDER
        for name in names:
            if only is None or name in only or name in ("environment", "build"):
                self.report.stage(name, getattr(self, name))

    # ---- environment and build -----------------------------------------------------------------------------------

    def environment(self):
        import importlib.util

        env = {"cpu": _cpu_model(), "machine": platform.machine(), "nvcc": B.find_nvcc(),
               "cmake": shutil.which("cmake"), "tensorrt": None}
        self.env = env
        if importlib.util.find_spec("tensorrt") is not None:
            try:
                import tensorrt

                env["tensorrt"] = tensorrt.__version__
            except Exception as exc:  # noqa: BLE001 - reported
                env["tensorrt"] = f"import failed: {exc}"
        import torch  # a broken torch fails this stage (reported), not the report

        env.update(torch=torch.__version__, torch_cuda=torch.version.cuda)
        self.gpu = bool(torch.cuda.is_available()) and not self.args.dry_run_cpu
        if self.gpu:
            props = torch.cuda.get_device_properties(0)
            env.update(gpu=props.name, capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
                       arch=f"{props.major}{props.minor}")
            self.report.data["mode"] = f"GPU {props.name}"
            if not self.args.no_results_copy:
                name = re.sub(r"[^A-Za-z0-9]+", "-", props.name).strip("-")
                self.report.copies.append(ROOT / "benchmarks" / "results" / f"gpu_check_{name}")
        else:
            why = ("--dry-run-cpu" if self.args.dry_run_cpu else "torch has no CUDA build" if not torch.version.cuda
                   else "torch sees no GPU")
            env["gpu"] = f"none ({why})"
            self.report.data["mode"] = f"CPU DRY RUN (not a GPU result: {why})"
        return OK, self.report.data["mode"], env

    def build(self):
        build = ROOT / "build" / "gpu_check"
        # --build-only needs no GPU, a CUDA build of torch: the preflight of a GPU session
        self.cuda_build = self.gpu or (self.args.build_only and bool(self.env.get("torch_cuda")))
        if self.cuda_build:
            return B.build_gpu(self.env, build, self.log)
        from dsr_deploy import ops

        return B.build_cpu(build, self.log, ops.find_library)

    def build_check(self):
        import ctypes

        import torch

        from dsr_deploy import ops, plugins

        path = ops.find_library(plugins.KERNELS_LIBRARY)
        if path is None:
            return NOT_CHECKED, "not checked: libdsr_kernels.so not built", None
        lib = ctypes.CDLL(str(path))
        res = {"dsr_cuda_forward": hasattr(lib, "dsr_cuda_forward"), "torch_op": ops.native_status()["reason"],
               "cuda_kernels": {op: torch._C._dispatch_has_kernel_for_dispatch_key(f"dsr::{op}", "CUDA")
                                for op in ("if_spike", "lif_spike")}}
        ok = not self.cuda_build or (res["dsr_cuda_forward"] and all(res["cuda_kernels"].values()))
        return (OK if ok else FAILED), str(res), res

    # ---- checks --------------------------------------------------------------------------------------------------

    def _kernels(self):
        """The kernel module on this device, and the kernels under test (None: why not, as a note)."""
        if self.K is None:
            import gpu_check_kernels as K
            import torch

            K.DEVICE = "cuda" if self.gpu else "cpu"
            if self.args.quick:
                K.CHECK_SHAPES, K.CHECK_T = [(1, 1000), (3, 7, 33)], (1, 4)
            seed = self.args.seed if self.args.seed is not None else int(time.time())
            self.report.data["meta"]["seed"] = seed
            self.gen = torch.Generator(device=K.DEVICE).manual_seed(seed)
            self.K = K
            try:
                self.run, how = K.pick_kernels()
                self.report.data["meta"]["kernels"] = how
            except SystemExit as exc:  # pick_kernels' own one-line refusal
                self.run, self.no_kernels = None, f"not checked: {exc}"
        return self.K

    def kernels_float(self):
        K = self._kernels()
        if self.run is None:
            return NOT_CHECKED, self.no_kernels, None
        rows, failures = K.check(self.run, self.gen)
        ok = sum(r["ok"] for r in rows)
        note = f"{ok}/{len(rows)} cases pass ({self.report.data['meta']['kernels']})"
        return (OK if not failures else FAILED), note, rows

    def kernels_quantized(self):
        K = self._kernels()
        rows, note = K.quantized_rows(self.gen)
        if not rows:
            return NOT_CHECKED, f"not checked: {note}", None
        bad = [r for r in rows if not (r["equal_cpu_op"] and r["equal_definition"])]
        return (OK if not bad else FAILED), f"{len(rows) - len(bad)}/{len(rows)} cases equal code for code", rows

    def torch_op(self):
        K = self._kernels()
        rows, note = K.torch_op_rows(self.gen)
        if not rows:
            return NOT_CHECKED, note, None
        ok = sum(r["bit_exact"] for r in rows)
        return (OK if ok == len(rows) else FAILED), f"{ok}/{len(rows)} bit-exact", rows

    def torchscript(self):
        K = self._kernels()
        rows = K.torchscript_rows(self.gen)
        bad = [r for r in rows if not r["bit_exact"]]
        # TorchScript's own GPU fuser may contract to FMA (the runner turns it off): reported, a failure only when
        # the runner's setting is not exact.
        fail = [r for r in bad if "fusion on" not in r["setting"]]
        return (OK if not fail else FAILED), f"{len(rows) - len(bad)}/{len(rows)} bit-exact", rows

    def pt2(self):
        K = self._kernels()
        rows = K.pt2_rows(self.gen, aot=self.gpu and not self.args.quick)
        ok = sum(r["bit_exact"] for r in rows)
        return (OK if ok == len(rows) else FAILED), f"{ok}/{len(rows)} bit-exact", rows

    def timings_by_size(self):
        K = self._kernels()
        if self.run is None:
            return NOT_CHECKED, self.no_kernels, None
        sizes = K.QUICK_SIZES if (self.args.quick or not self.gpu) else K.SIZES
        rows = K.size_rows(self.run, self.gen, self.args.repeats, sizes)
        return OK, f"{len(rows)} rows (kernel vs device-to-device copy)", rows

    def timings_layer(self):
        K = self._kernels()
        if self.run is None:
            return NOT_CHECKED, self.no_kernels, None
        if self.args.quick or not self.gpu:
            K.TIMING_SHAPE = (3, 2, 64)
        times, sj_note = K.timings(self.run, self.gen, self.args.repeats)
        return OK, f"shape {list(K.TIMING_SHAPE)}; SpikingJelly: {sj_note}", {"rows": times, "spikingjelly": sj_note}

    def tensorrt(self):
        K = self._kernels()
        rows, note = K.tensorrt_rows(self.gen)
        if not rows:
            return NOT_CHECKED, note, None
        bad = [r for r in rows if "error" in r]
        return (OK if not bad else FAILED), f"{len(rows) - len(bad)}/{len(rows)} engines built and run", rows
