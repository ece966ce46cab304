"""The engine's random numbers: Philox4x32-10 known answers and the bits -> standard normal transform."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from marketfeed import _engine

LEVELS = 2**24  # the transform keeps the top 24 bits: u = (k + 1/2) / 2^24


@pytest.mark.parametrize(
    ("counter", "key", "expected"),
    [
        # The known-answer vectors published with Random123 (Salmon et al. 2011), kat_vectors.
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        (
            (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
            (0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
        ),
    ],
    ids=["zeros", "ones", "pi"],
)
def test_philox_known_answers(
    counter: tuple[int, int, int, int], key: tuple[int, int], expected: tuple[int, int, int, int]
) -> None:
    assert _engine.philox4x32_10(*counter, *key) == expected


def normals(
    bits: np.ndarray[tuple[int], np.dtype[np.uint32]],
) -> np.ndarray[tuple[int], np.dtype[np.float64]]:
    return np.fromiter((_engine.normal_from_bits(int(b)) for b in bits), dtype=np.float64, count=bits.size)


def test_normal_transform_gives_standard_normals() -> None:
    # Philox's own output, the bits the engine actually feeds the transform (counter = index, key = 7).
    blocks = [_engine.philox4x32_10(i, 0, 0, 0, 7, 0) for i in range(50_000)]
    z = normals(np.array(blocks, dtype=np.uint32).ravel())
    n = z.size
    # Standard errors of the sample moments of N(0, 1): sqrt(1/n), sqrt(2/n), sqrt(6/n), sqrt(24/n).
    assert abs(z.mean()) < 4 * math.sqrt(1 / n)
    assert abs(z.var() - 1.0) < 4 * math.sqrt(2 / n)
    assert abs(stats.skew(z)) < 4 * math.sqrt(6 / n)
    assert abs(stats.kurtosis(z)) < 4 * math.sqrt(24 / n)
    assert stats.kstest(z, "norm").pvalue > 1e-3


def test_normal_transform_is_the_inverse_normal_cdf() -> None:
    # Every 997th of the 2^24 levels and the 4000 at either end: Giles' single-precision erfinv is
    # good to a few parts in 1e7 everywhere, tails included, so 1e-6 relative would catch a bad branch.
    ends = np.arange(4000, dtype=np.uint32)
    k = np.unique(np.concatenate([np.arange(0, LEVELS, 997, dtype=np.uint32), ends, LEVELS - 1 - ends]))
    exact = stats.norm.ppf((k + 0.5) / LEVELS)
    got = normals(k << np.uint32(8))
    np.testing.assert_allclose(got, exact, rtol=1e-6, atol=1e-7)
    assert np.all(np.diff(got) >= 0)  # monotone: a larger uniform never maps to a smaller normal


def test_normal_transform_is_symmetric_and_bounded_at_the_extremes() -> None:
    # The lowest and highest 4000 levels: a rounding slip at the top once turned them into z = -620.
    for k in range(4000):
        low = _engine.normal_from_bits(k << 8)
        high = _engine.normal_from_bits(((LEVELS - 1 - k) << 8) | 0xFF)
        assert low == -high
        assert -5.5 < low < 0
    assert _engine.normal_from_bits(0) == pytest.approx(stats.norm.ppf(0.5 / LEVELS), abs=1e-3)


@pytest.mark.parametrize("isa", _engine.philox_isas())
@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 15, 16, 17, 600])
@pytest.mark.parametrize("first", [0, 0xFFFFFFF5], ids=["from-0", "wrapping"])
def test_block_generator_gives_the_scalar_bits(isa: str, n: int, first: int) -> None:
    # Every copy of the block generator (vector widths 16 and 8, with their scalar tails; the counter
    # wrapping past 2^32) against the scalar rounds that the known answers check.
    out = np.zeros((4, n), dtype=np.uint32)
    _engine.philox4x32_10_block(out, first, 5, 6, 7, 0xDEADBEEF, 42, isa)
    scalar = [_engine.philox4x32_10((first + j) % 2**32, 5, 6, 7, 0xDEADBEEF, 42) for j in range(n)]
    np.testing.assert_array_equal(out, np.array(scalar, dtype=np.uint32).reshape(n, 4).T)


def test_the_fast_generator_copies_are_the_ones_this_cpu_runs() -> None:
    # So that on an AVX-512 machine (CI's included) the AVX-512 copy is the one tested above.
    if _engine.cpu_level == "x86-64-v4":
        assert _engine.philox_isas() == ["avx512", "avx2", "generic"]
    elif _engine.cpu_level == "x86-64-v3":
        assert "avx2" in _engine.philox_isas()
    assert _engine.philox_isas()[-1] == "generic"
    with pytest.raises(ValueError, match="unknown generator copy"):
        _engine.philox4x32_10_block(np.zeros((4, 1), dtype=np.uint32), 0, 0, 0, 0, 0, 0, "sse9")


@pytest.mark.parametrize("kind", ["random", "all-tails", "no-tails", "tails-at-chunk-edges"])
@pytest.mark.parametrize("n", [1, 31, 32, 33, 95, 512])
def test_block_normals_are_the_per_word_normals(kind: str, n: int) -> None:
    # The block transform computes Giles' tail branch only in chunks of 32 where a lane needs it; every
    # word must still get exactly normal_from_bits. Tails are the top and bottom 0.17% of the levels.
    rng = np.random.default_rng(n)
    tail_low = rng.integers(0, 28_000, n, dtype=np.uint32) << np.uint32(8)
    central = rng.integers(1 << 22, 3 << 22, n, dtype=np.uint32) << np.uint32(8)
    if kind == "random":
        bits = rng.integers(0, 2**32, n, dtype=np.uint32)
    elif kind == "all-tails":
        bits = tail_low
    elif kind == "no-tails":
        bits = central
    else:
        bits = central.copy()
        for i in (0, 31, 32, n - 1):
            if i < n:
                bits[i] = np.uint32(0xFFFFFF00) - tail_low[i]  # an upper tail
    out = np.zeros(n, dtype=np.float32)
    _engine.normals_from_bits(bits, out)
    expected = np.array([_engine.normal_from_bits(int(b)) for b in bits], dtype=np.float32)
    np.testing.assert_array_equal(out, expected)
    if kind in ("all-tails", "tails-at-chunk-edges"):
        assert np.abs(out).max() > 2.9  # the tail branch did run
