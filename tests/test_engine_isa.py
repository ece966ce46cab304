"""The same seed gives the same market on every x86-64 CPU.

The engine is built here for each x86-64 level this CPU runs (baseline x86-64: SSE2, no FMA;
x86-64-v3: AVX2 and FMA), and as the portable build that dispatches between its copies at load time,
each with CMake into a temporary directory. Every build runs the same markets in a process of its
own (tests/engine_digest.py), and all of them must give the installed engine's bits: the build
never lets the compiler contract a * b + c where the CPU happens to have FMA (CMakeLists.txt).

It also checks that the hot loops vectorise for AVX2 wherever they do for AVX-512: a loop GCC leaves
scalar computes the same bits, so only the compiler's own report shows it (one did, for a conversion
AVX2 lacks, and QE ran at 35-45% of its speed on AVX2 CPUs).
"""

from __future__ import annotations

import json
import os
import re
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


def engine_flags(root: Path = ROOT) -> list[str]:
    """The code-generation flags CMakeLists.txt gives the engine (its target_compile_options)."""
    lines = (root / "CMakeLists.txt").read_text().splitlines()
    cmake = "\n".join(line.split("#")[0] for line in lines)  # comments hold parentheses too
    block = re.search(r"target_compile_options\(_engine PRIVATE(.*?)\)", cmake, re.S)
    if block is None:
        raise AssertionError("CMakeLists.txt no longer sets the engine's compile options")
    return [word for word in block.group(1).split() if word.startswith("-f")]


def vectorised_loops(march: str, directory: Path, root: Path = ROOT) -> set[str]:
    """file:line of every loop in csrc/ that GCC vectorises when it compiles the engine's steps and its
    benchmark floor for `march` (from -fopt-info-vec, the compiler's own account)."""
    source = directory / "loops.cpp"
    source.write_text(
        '#include "engine.hpp"\n'
        "double use(mf::Engine& e, double* p, double* v, double* r) {\n"
        "  e.run(2, p, v, r, 2);\n"
        "  return e.draw_only(2);\n"
        "}\n"
    )
    report = directory / f"vec-{march}.txt"
    command = [
        "g++", "-std=c++20", "-O3", *engine_flags(root), f"-march={march}", f"-I{root / 'csrc'}",
        "-c", str(source), "-o", os.devnull, f"-fopt-info-vec-optimized={report}",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    found = re.finditer(r"csrc/([\w.]+:\d+):\d+: optimized: loop vectorized", report.read_text())
    return {match.group(1) for match in found}


def test_the_loops_that_vectorise_for_avx512_vectorise_for_avx2(tmp_path: Path) -> None:
    if not _engine.cpu_level:
        return  # not x86-64 with GCC: no x86-64 levels to compare (as variants() builds none)
    if shutil.which("g++") is None:
        pytest.fail("g++ is needed to compile the engine (make setup installs the rest)")
    avx512 = vectorised_loops("x86-64-v4", tmp_path)
    avx2 = vectorised_loops("x86-64-v3", tmp_path)
    assert len(avx512) >= 15  # the report was read: the block loops are all there
    assert avx512 <= avx2, f"scalar with AVX2 only: {sorted(avx512 - avx2)}"
