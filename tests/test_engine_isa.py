"""The same seed gives the same market on every x86-64 CPU.

The engine is built here for each x86-64 level this CPU runs (baseline x86-64: SSE2, no FMA;
x86-64-v3: AVX2 and FMA), and as the portable build that dispatches between its copies at load time,
each with CMake into a temporary directory. Every build runs the same markets in a process of its
own (tests/engine_digest.py), and all of them must give the installed engine's bits: the build
never lets the compiler contract a * b + c where the CPU happens to have FMA (CMakeLists.txt).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from marketfeed import _engine

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
DIGEST = Path(__file__).resolve().parent / "engine_digest.py"
LEVELS = ["x86-64", "x86-64-v2", "x86-64-v3", "x86-64-v4"]


def variants() -> list[str]:
    """What to build: the dispatching portable build, and baseline x86-64 and x86-64-v3 where this CPU
    runs them (the installed engine, native here, covers the CPU's own level)."""
    if not _engine.cpu_level:
        return []  # not x86-64 with GCC: nothing to dispatch between
    top = LEVELS.index(_engine.cpu_level)
    return ["dispatch", *(level for level in LEVELS[: top + 1] if level in ("x86-64", "x86-64-v3"))]


def build(kind: str, directory: Path) -> Path:
    options = ["-DMARKETFEED_NATIVE=OFF"] + ([] if kind == "dispatch" else [f"-DMARKETFEED_ISA={kind}"])
    configure = [
        "cmake", "-S", str(ROOT), "-B", str(directory), "-DCMAKE_BUILD_TYPE=Release",
        f"-DPython_EXECUTABLE={sys.executable}", *options,
    ]  # fmt: skip
    for command in (
        configure,
        ["cmake", "--build", str(directory), "--target", "_engine", "--parallel", "2"],
    ):
        result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=600)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    [module] = directory.glob("_engine*.so")
    return module


def run_digest(*module: str) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, str(DIGEST), *module], capture_output=True, text=True, check=False, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out: dict[str, object] = json.loads(result.stdout)
    return out


@pytest.mark.timeout(1200)
def test_every_instruction_set_computes_the_same_bits(tmp_path: Path) -> None:
    if shutil.which("cmake") is None:
        pytest.fail("cmake is needed to build the engine (make setup installs the rest)")
    kinds = variants()
    installed = run_digest()
    assert len(installed["digests"]) == 5  # type: ignore[arg-type]
    for kind in kinds:
        other = run_digest(str(build(kind, tmp_path / kind)))
        if kind == "dispatch":
            assert other["isa"] != "portable"  # it did dispatch
        assert other["digests"] == installed["digests"], (
            f"{kind} ({other['isa']}) differs from {installed['isa']}"
        )
