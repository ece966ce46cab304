"""Each benchmark runs once in a tiny configuration so it keeps working. No timing is asserted:
benchmarks measure, tests check."""

from __future__ import annotations

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
        ("ingest.py", "10,000-tick page"),
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
