"""Each benchmark runs once in a tiny configuration so it keeps working. No timing is asserted:
benchmarks measure, tests check."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.parametrize(
    ("script", "needle"),
    [
        ("engine.py", "vs NumPy"),
        ("fanout.py", "marketfeed"),
        ("fanout.py --edges 2", "engine + 2 edges"),
        ("fanout.py --sets 3 --transport sse", "3 symbol sets"),  # each client on a symbol list
        ("fanout.py --sets 3", "3 symbol sets"),
        ("ingest.py", "10,000-tick page"),
        ("ingest.py --skip-sqlite --skip-queries", "3 of 3 symbol-minutes merged"),  # the merge ran
        ("kafka.py", "KafkaBus"),
    ],
)
def test_benchmark_runs_in_its_quick_configuration(script: str, needle: str) -> None:
    name, *options = script.split()
    command = [sys.executable, str(BENCH / name), "--quick", *options]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert needle in result.stdout
    assert "nan" not in result.stdout.split("\n", 2)[-1]  # every figure was measured


def build(tmp_path: Path, name: str, *extra: str) -> Path:
    """bench/<name>.cpp compiled with warnings as errors, without -march=native (any CPU runs it)."""
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.fail("a C++ compiler is needed (the engine's build needs one too)")
    binary = tmp_path / name
    flags = ["-O2", "-fopenmp-simd", "-pthread", "-Wall", "-Wextra", "-Werror", *extra]
    subprocess.run([compiler, *flags, str(BENCH / f"{name}.cpp"), "-o", str(binary)], check=True, timeout=120)
    return binary


def test_the_thread_scaling_benchmark_builds_and_runs(tmp_path: Path) -> None:
    binary = build(tmp_path, "threads")
    result = subprocess.run(
        [str(binary), "64", "10"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    for loop in ("streaming", "chunked", "dependent"):
        assert loop in result.stdout
    assert "nan" not in result.stdout
    assert "inf" not in result.stdout
    bad = subprocess.run([str(binary), "8"], capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2
    assert "at least 16" in bad.stderr


def test_the_divider_benchmark_builds_and_runs(tmp_path: Path) -> None:
    # GCC 12's AVX-512 headers warn that their own deliberately undefined operands may be used
    # uninitialized (GCC bug 105593, fixed in 13), in the engine's Philox copy that the benchmark includes.
    binary = build(tmp_path, "divider", "-std=c++20", "-fno-math-errno", "-Wno-maybe-uninitialized")
    result = subprocess.run(
        [str(binary), "64", "10"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    for row in ("floor (two normals)", "divider (QE's 3 sqrt + 1 division)", "bound on QE-M / floor"):
        assert row in result.stdout
    figures = result.stdout.split("\n", 1)[1]  # below the title, which says "nanoseconds"
    assert "nan" not in figures
    assert "inf" not in figures
    bad = subprocess.run([str(binary), "64", "0"], capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2
    assert "at least 1" in bad.stderr
