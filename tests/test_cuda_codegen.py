"""The CUDA spike kernels' generated code: no fused multiply-add, no flushed subnormals, the reference's op count.

No GPU can run the kernels on the development and CI machines, but nvcc is there: these tests compile
``plugins/core/dsr_spike_cuda.cu`` to PTX with the flags the CMake build uses and read the instructions. Float32
bit-exactness with PyTorch CUDA eager rests on three facts checked here: every floating-point add, sub and mul
carries an explicit ``.rn`` rounding (PTX never contracts those into an FMA, whatever ptxas is told), there is no
``fma`` at all, and nothing is ``.ftz`` (eager keeps subnormals). The per-kernel op counts pin the recurrence's
shape (IF: one add and one sub per neuron-step; LIF: two products, one add, one sub). When ``cuobjdump`` and
``nvdisasm`` are on PATH the SASS is checked too (no FFMA / DFMA).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from _native_util import repo_root

from dsr_deploy import plugins

NVCC = plugins._nvcc()
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found (CUDA toolkit not installed)")

CORE = repo_root() / "plugins" / "core"
ARCH = "sm_90"
FLOAT_OP = re.compile(r"^\s*(?:@%p\d+\s+)?(add|sub|mul|fma|div|setp\.\w+)\.([a-z0-9.]+)\s", re.MULTILINE)


def cmake_exact_flags() -> list[str]:
    """DSR_EXACT_CUDA_FLAGS as plugins/CMakeLists.txt sets them (the test compiles with what the build uses)."""
    text = (repo_root() / "plugins" / "CMakeLists.txt").read_text()
    m = re.search(r"^set\(DSR_EXACT_CUDA_FLAGS\s+([^)]*)\)", text, re.MULTILINE)
    assert m, "DSR_EXACT_CUDA_FLAGS not found in plugins/CMakeLists.txt"
    return m.group(1).split()


def compile_ptx(tmp_path: Path, source: Path, flags: list[str]) -> str:
    out = tmp_path / (source.stem + ".ptx")
    proc = subprocess.run([NVCC, "-ptx", f"-arch={ARCH}", "-O3", "-std=c++17", *flags, "-I", str(CORE), str(source),
                           "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out.read_text()


def entries(ptx: str) -> dict[str, str]:
    """PTX kernel name -> body."""
    parts = re.split(r"^\.(?:visible\s+)?entry\s+", ptx, flags=re.MULTILINE)
    out = {}
    for part in parts[1:]:
        name = part.split("(", 1)[0].strip()
        out[name] = part
    return out


def float_ops(body: str) -> list[tuple[str, str]]:
    """(op, modifiers) of every floating-point instruction (integer ones have s/u/b types and are left out)."""
    ops = []
    for op, mods in FLOAT_OP.findall(body):
        if re.search(r"\bf(16|32|64)\b", mods.replace(".", " ")) or op == "fma":
            ops.append((op, mods))
    return ops


def check_no_contraction(ptx: str) -> list[str]:
    """Problems that would break bit-exactness with eager PyTorch, one string each."""
    problems = []
    for op, mods in float_ops(ptx):
        if op == "fma":
            problems.append(f"fma.{mods}")
        elif op in ("add", "sub", "mul") and not mods.startswith("rn"):
            problems.append(f"{op}.{mods} without an explicit .rn (may be contracted into an FMA)")
        if ".ftz" in "." + mods or "ftz" in mods.split("."):
            problems.append(f"{op}.{mods} flushes subnormals")
    return problems


@pytest.fixture(scope="module")
def kernel_ptx(tmp_path_factory):
    return compile_ptx(tmp_path_factory.mktemp("ptx"), CORE / "dsr_spike_cuda.cu", cmake_exact_flags())


def test_the_build_flags_forbid_contraction_and_flushing():
    flags = cmake_exact_flags()
    assert "--fmad=false" in flags and "--ftz=false" in flags


KERNEL_INSTANCES = 2 * (3 + 2 + 4 + 4 + 5 + 5)


def test_every_kernel_instance_is_there(kernel_ptx):
    names = [n for n in entries(kernel_ptx) if "spike_kernel" in n]
    # Every vector width from the 16-byte one down to one element, x (IF, LIF): float32 4, 2, 1; float64 2, 1;
    # float16 / bfloat16 8, 4, 2, 1; the quantised op's uint8 / int8 codes 16, 8, 4, 2, 1.
    assert len(names) == KERNEL_INSTANCES, names
    assert sum("CodeInput" in n for n in names) == 20, names


def test_no_fma_no_ftz_every_float_op_explicitly_rounded(kernel_ptx):
    assert check_no_contraction(kernel_ptx) == []


def test_op_counts_match_the_reference_recurrence(kernel_ptx):
    # Name mangling: spike_kernel<In, Out, VEC, kLeaky> -> ...spike_kernelI<In><Out>Li<VEC>ELb<0|1>E..., In is
    # FloatInput<S> (FloatInputIdE: double) or CodeInput<Q> (the quantised op: one dequantising product per step).
    checked = 0
    for name, body in entries(kernel_ptx).items():
        m = re.search(r"spike_kernelI(.+?)Li(\d+)ELb([01])E", name)
        if not m:
            continue
        vec, leaky = int(m.group(2)), m.group(3) == "1"
        ctype = "f64" if "FloatInputIdE" in m.group(1) else "f32"
        dequantize = "CodeInput" in m.group(1)
        count = {op: sum(1 for o, mods in float_ops(body) if o == op and mods.endswith(ctype))
                 for op in ("add", "sub", "mul")}
        # The T loop is unrolled (by 4, plus a remainder loop): a whole number of steps of `vec` neurons each.
        assert count["sub"] % vec == 0 and count["sub"] > 0, (name, count)
        # Per neuron-step: IF v = v + x; v = v - s.  LIF v = decay*v + gain*x (two products, one sum); v = v - s.
        # Quantised: x = float(q - zero_point) * scale first (one product).
        assert count["add"] == count["sub"], (name, count)
        assert count["mul"] == ((2 if leaky else 0) + dequantize) * count["sub"], (name, count)
        checked += 1
    assert checked == KERNEL_INSTANCES


def test_fast_math_in_the_global_flags_is_overridden(tmp_path):
    # A user's CMAKE_CUDA_FLAGS=--use_fast_math comes before the target's flags on nvcc's command line.
    ptx = compile_ptx(tmp_path, CORE / "dsr_spike_cuda.cu", ["--use_fast_math", *cmake_exact_flags()])
    assert check_no_contraction(ptx) == []


def test_the_checker_catches_contraction_and_flushing(tmp_path):
    # The checks above can fail: plain a*b+c compiles to an fma by default, a lone a*b to a mul that ptxas would be
    # free to contract, and fast math flushes.
    src = tmp_path / "contract.cu"
    src.write_text("__global__ void k(float* y, const float* a, const float* b, const float* c)"
                   " { y[threadIdx.x] = a[threadIdx.x] * b[threadIdx.x] + c[threadIdx.x]; }\n"
                   "__global__ void m(float* y, const float* a, const float* b)"
                   " { y[threadIdx.x] = a[threadIdx.x] * b[threadIdx.x]; }\n")
    problems = check_no_contraction(compile_ptx(tmp_path, src, []))
    assert any(p.startswith("fma.") for p in problems), problems
    assert any(p.startswith("mul.f32 without an explicit .rn") for p in problems), problems
    problems = check_no_contraction(compile_ptx(tmp_path, src, ["--use_fast_math", "--fmad=false"]))
    assert any("flushes" in p for p in problems), problems


def _sass_tool_dir() -> str | None:
    """A folder with cuobjdump and nvdisasm: PATH, or the PyPI wheels scripts/setup.sh installs (nvidia/cu*/bin)."""
    found = shutil.which("cuobjdump")
    if found and shutil.which("nvdisasm"):
        return str(Path(found).parent)
    try:
        import nvidia  # namespace package of NVIDIA's PyPI wheels
    except ImportError:
        return None
    for base in getattr(nvidia, "__path__", []):
        for d in sorted(Path(base).glob("cu*/bin")):
            if (d / "cuobjdump").is_file() and (d / "nvdisasm").is_file():
                return str(d)
    return None


SASS_TOOLS = _sass_tool_dir()


@pytest.mark.skipif(SASS_TOOLS is None, reason="cuobjdump / nvdisasm not found (scripts/setup.sh installs them "
                    "from PyPI: nvidia-cuda-cuobjdump, nvidia-cuda-nvdisasm)")
def test_sass_has_no_fused_multiply_add(tmp_path):
    cubin = tmp_path / "k.cubin"
    proc = subprocess.run([NVCC, "-cubin", f"-arch={ARCH}", "-O3", "-std=c++17", *cmake_exact_flags(), "-I", str(CORE),
                           str(CORE / "dsr_spike_cuda.cu"), "-o", str(cubin)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    env = dict(os.environ, PATH=SASS_TOOLS + os.pathsep + os.environ.get("PATH", ""))  # cuobjdump runs nvdisasm
    sass = subprocess.run([str(Path(SASS_TOOLS) / "cuobjdump"), "-sass", str(cubin)], capture_output=True, text=True,
                          timeout=300, env=env).stdout
    assert sass.count("Function :") == KERNEL_INSTANCES
    fused = [ln.strip() for ln in sass.splitlines() if re.search(r"\b[FDH]FMA2?\b", ln)
             and not re.search(r"-RZ, RZ", ln)]  # HFMA2.MMA Rx, -RZ, RZ, 0, 0 is the zeroing idiom
    assert fused == []
    assert re.search(r"\bFADD\b", sass) and re.search(r"\bFMUL\b", sass)
