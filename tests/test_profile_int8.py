"""benchmarks/profile_int8.py's bookkeeping (the profile itself is a benchmark, run by hand): op types grouped as
the convolutions (dense and event-driven), the dsr neurons and the float work around them; the int8 peak read from
the CPU's flags."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
profile_int8 = pytest.importorskip("profile_int8")


def test_op_types_are_grouped_into_convolutions_neurons_and_float_work():
    shares = {"QLinearConv": 0.5, "SpikeQLinearConv": 0.2, "DSRLIFSpikeQ": 0.05, "DSRIFSpike": 0.05,
              "DequantizeLinear": 0.1, "Add": 0.06, "BatchNormalization": 0.04}
    g = profile_int8.groups(shares)
    assert g["convolutions"] == pytest.approx(0.7) and g["dsr neurons"] == pytest.approx(0.1)
    assert g["float work"] == pytest.approx(0.2)


def test_the_int8_peak_follows_the_cpu_flags():
    assert profile_int8.int8_peak(["avx", "avx2", "fma"]) == 2.0
    assert profile_int8.int8_peak(["avx2", "avx512f", "avx512_vnni"]) == 4.0
    assert profile_int8.int8_peak(["avx2", "avx_vnni"]) == 4.0
