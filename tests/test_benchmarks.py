"""Smoke tests: the benchmark scripts run end to end on tiny sizes (no timing assertions)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_fixed_point  # noqa: E402
import bench_layers  # noqa: E402
import bench_rk  # noqa: E402


def test_bench_rk_quick_runs_and_reports_every_ratio():
    report = bench_rk.main(quick=True)
    for needle in (
        "hand-written scan",
        "resode",
        "diffrax",
        "resode / hand-written scan",
        "compile time",
    ):
        assert needle in report


def test_bench_fixed_point_quick_runs_and_reports_every_adjoint():
    report = bench_fixed_point.main(quick=True)
    for needle in ("optimistix", "resode picard + implicit", "resode picard + jfb", "unrolled"):
        assert needle in report
    # The memory table has a row per adjoint.
    for adjoint in ("| implicit |", "| jfb |", "| phantom |", "| unrolled |"):
        assert adjoint in report


def test_bench_layers_quick_runs():
    report = bench_layers.main(quick=True)
    for needle in ("Compile time", "resode / hand-written", "untied euler, checkpointed", "DEQ"):
        assert needle in report
