"""The engine's reproducibility contract: a path is a pure function of (universe, seed, scheme, dt).

Random numbers are keyed by (seed, asset, step), so neither how the steps are chunked into calls nor
how many threads share the assets may change a single bit, and a saved state continues exactly.
"""

from __future__ import annotations

import dataclasses
import itertools
import warnings

import numpy as np
import pytest

from marketfeed.engine import FellerConditionWarning, Paths, Scheme, Simulator, SimulatorState, Universe

DT = 1.0 / 252  # a day: large enough that QE's exponential branch is taken as well as its quadratic one
MODES = list(itertools.product(list(Scheme), [False, True]))
MODE_IDS = [f"{scheme.value}-{'jumps' if jumps else 'no-jumps'}" for scheme, jumps in MODES]


def mixed_universe(n: int) -> Universe:
    """The default assets tiled to n, every fifth one rough (Feller violated, variance often at zero).

    1100 assets are two full 512-asset blocks and a partial one, so threads split real work and the
    vector loops have remainders; blocks mix QE's quadratic and exponential regimes.
    """
    base = Universe.default()
    assets = []
    for i in range(n):
        asset = dataclasses.replace(base.assets[i % len(base.assets)], symbol=f"S{i}")
        if i % 5 == 0:
            asset = dataclasses.replace(asset, kappa=0.5, theta=0.04, xi=1.5)
        assets.append(asset)
    return dataclasses.replace(base, assets=tuple(assets))


UNIVERSE = mixed_universe(1100)


def simulator(seed: int, scheme: Scheme, jumps: bool, threads: int = 1) -> Simulator:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FellerConditionWarning)  # the rough assets are rough on purpose
        return Simulator(UNIVERSE, dt=DT, seed=seed, scheme=scheme, jumps=jumps, threads=threads)


def assert_same_paths(a: Paths, b: Paths) -> None:
    assert np.array_equal(a.prices, b.prices)
    assert np.array_equal(a.variances, b.variances)
    assert np.array_equal(a.log_returns, b.log_returns)


def concatenate(parts: list[Paths]) -> Paths:
    return Paths(
        prices=np.vstack([p.prices for p in parts]),
        variances=np.vstack([p.variances for p in parts]),
        log_returns=np.vstack([p.log_returns for p in parts]),
    )


def test_the_universe_exercises_both_qe_branches() -> None:
    # Otherwise the determinism tests below would say nothing about the exponential branch.
    variances = simulator(1, Scheme.QE, jumps=False).paths(200).variances
    assert np.any(variances[:, ::5] == 0.0)  # only the exponential branch sets v' = 0 exactly
    assert np.all(variances[:, 1::5] > 0.0)


@pytest.mark.parametrize(("scheme", "jumps"), MODES, ids=MODE_IDS)
def test_same_seed_same_bits(scheme: Scheme, jumps: bool) -> None:
    assert_same_paths(simulator(3, scheme, jumps).paths(300), simulator(3, scheme, jumps).paths(300))


@pytest.mark.parametrize(("a", "b"), [(3, 4), (1, 1 + 2**32), (0, 2**64 - 1)])
def test_different_seeds_differ(a: int, b: int) -> None:
    # (1, 1 + 2**32) differ only in the high word of the seed, which keys the generator's second word.
    first = simulator(a, Scheme.QE, jumps=True).paths(5)
    second = simulator(b, Scheme.QE, jumps=True).paths(5)
    assert np.all(first.log_returns != second.log_returns)


@pytest.mark.parametrize(("scheme", "jumps"), MODES, ids=MODE_IDS)
def test_chunking_does_not_change_the_paths(scheme: Scheme, jumps: bool) -> None:
    whole = simulator(3, scheme, jumps).paths(1000)
    tens = simulator(3, scheme, jumps)
    assert_same_paths(whole, concatenate([tens.paths(100) for _ in range(10)]))
    uneven = simulator(3, scheme, jumps)
    assert_same_paths(whole, concatenate([uneven.paths(n) for n in (1, 99, 400, 7, 493)]))

    stepped = simulator(3, scheme, jumps).step(1000)
    assert stepped.step == 1000
    assert np.array_equal(stepped.prices, whole.prices[-1])
    assert np.array_equal(stepped.variances, whole.variances[-1])
    # One difference of log-prices against a sum of a thousand: equal up to rounding only.
    np.testing.assert_allclose(stepped.log_returns, whole.log_returns.sum(axis=0), rtol=0, atol=1e-11)

    steps = simulator(3, scheme, jumps)
    last = [steps.step(100) for _ in range(10)][-1]
    assert np.array_equal(last.prices, whole.prices[-1])
    assert np.array_equal(last.variances, whole.variances[-1])


@pytest.mark.parametrize(("scheme", "jumps"), MODES, ids=MODE_IDS)
def test_thread_count_does_not_change_the_paths(scheme: Scheme, jumps: bool) -> None:
    one = simulator(5, scheme, jumps, threads=1).paths(200)
    two = simulator(5, scheme, jumps, threads=2)
    assert two.threads == 2
    assert_same_paths(one, two.paths(200))
    every_core = simulator(5, scheme, jumps, threads=0)  # 0: one thread per core
    assert every_core.threads >= 1
    assert_same_paths(one, every_core.paths(200))
    switched = simulator(5, scheme, jumps, threads=2)
    first = switched.paths(77)
    switched.threads = 1
    assert_same_paths(one, concatenate([first, switched.paths(123)]))


def rough(universe: Universe, *, per_asset: bool) -> Universe:
    """`universe` with 20-factor rough kernels: H = 0.1 for every asset (one kernel shared by all), or
    0.1, 0.15 and 0.2 in turn (a kernel per asset). tests/engine_digest.py digests both."""
    if not per_asset:
        return universe.with_hurst(0.1)
    assets = tuple(dataclasses.replace(a, hurst=0.1 + 0.05 * (i % 3)) for i, a in enumerate(universe.assets))
    return dataclasses.replace(universe, assets=assets)


CASES = {
    "qe-jumps": (UNIVERSE, Scheme.QE, True),
    "euler": (UNIVERSE, Scheme.EULER, False),
    "lifted": (rough(UNIVERSE, per_asset=False), Scheme.LIFTED, False),
    "lifted-per-asset": (rough(UNIVERSE, per_asset=True), Scheme.LIFTED, False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_an_assets_path_does_not_depend_on_the_others(case: str) -> None:
    # What makes a universe of identical assets a Monte Carlo sample: asset i's numbers are its own.
    # Seven assets are all remainder for the vector loops (the lifted scheme's 32-asset chunks too),
    # so this also ties the remainder code to the code that steps whole blocks.
    universe, scheme, jumps = CASES[case]
    few = dataclasses.replace(universe, assets=universe.assets[:7])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FellerConditionWarning)
        alone = Simulator(few, dt=DT, seed=2, scheme=scheme, jumps=jumps).paths(100)
        among = Simulator(universe, dt=DT, seed=2, scheme=scheme, jumps=jumps).paths(100)
    assert np.array_equal(alone.prices, among.prices[:, :7])
    assert np.array_equal(alone.variances, among.variances[:, :7])


def test_an_assets_bits_do_not_depend_on_which_qe_loop_its_block_took() -> None:
    # QE steps a block whose every asset takes the quadratic branch with a loop of its own; a block with
    # a rough asset takes the loop that computes both branches and picks one per asset. An asset in the
    # quadratic branch must compute the same bits in either.
    # Random numbers are keyed by the asset's index: asset 0 is swapped for a calm one, not dropped.
    calm = (Universe.default().assets[0], *UNIVERSE.assets[1:5])
    assert all(a.xi**2 / (2 * a.kappa * a.theta) < 1.5 for a in calm)  # psi < 1.5 at every variance
    alone = Simulator(dataclasses.replace(UNIVERSE, assets=calm), dt=DT, seed=3).paths(300)
    among = simulator(3, Scheme.QE, jumps=False).paths(300)  # block 0 holds rough assets too
    assert np.any(among.variances[:, 0] == 0.0)  # asset 0 took the exponential branch
    assert np.array_equal(alone.prices[:, 1:], among.prices[:, 1:5])
    assert np.array_equal(alone.variances[:, 1:], among.variances[:, 1:5])


def factor_universe(k: int, loaded: int) -> Universe:
    """40 assets on k independent factors, loading on the first `loaded` of them. Every beta and
    weight is a multiple of 1/4 and the correlation is the identity, so the loadings and factor shocks
    derived from them are exact whatever k is."""
    template = Universe.default().assets[0]
    assets = tuple(
        dataclasses.replace(
            template,
            symbol=f"A{i}",
            betas=tuple(0.25 * ((i + j) % 3) if j < loaded else 0.0 for j in range(k)),
            idio_vol=0.5,
        )
        for i in range(40)
    )
    identity = tuple(tuple(1.0 if i == j else 0.0 for j in range(k)) for i in range(k))
    return Universe(factors=tuple(f"f{j}" for j in range(k)), correlation=identity, assets=assets)


@pytest.mark.parametrize("scheme", [Scheme.QE, Scheme.EULER])
@pytest.mark.parametrize("k", range(1, 10))
def test_a_factor_nobody_loads_on_changes_no_bit(k: int, scheme: Scheme) -> None:
    # The exposure a_i . f is summed in one pass for each count up to eight factors and a pass per
    # factor beyond (csrc/engine.hpp, exposure): k and k + 1 factors chain every count to the next,
    # and nine and ten go the general way.
    a = Simulator(factor_universe(k, k), dt=DT, seed=6, scheme=scheme).paths(50)
    b = Simulator(factor_universe(k + 1, k), dt=DT, seed=6, scheme=scheme).paths(50)
    assert np.array_equal(a.prices, b.prices)
    assert np.array_equal(a.variances, b.variances)
    # The factors are not idle: the same assets on one factor fewer move differently.
    if k > 1:
        c = Simulator(factor_universe(k, k - 1), dt=DT, seed=6, scheme=scheme).paths(50)
        assert not np.array_equal(a.prices, c.prices)


def test_one_shared_rough_kernel_gives_the_per_asset_kernels_bits() -> None:
    # When every asset has the same Hurst exponent, the lifted scheme keeps one kernel for all of them
    # (a faster loop); one asset with another exponent sends the universe down the per-asset loop.
    # The other assets must not notice which loop ran.
    shared = UNIVERSE.with_hurst(0.1)
    last = dataclasses.replace(shared.assets[-1], hurst=0.3)
    mixed = dataclasses.replace(shared, assets=(*shared.assets[:-1], last))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FellerConditionWarning)
        a = Simulator(shared, dt=DT, seed=4, scheme=Scheme.LIFTED, threads=2).paths(60)
        b = Simulator(mixed, dt=DT, seed=4, scheme=Scheme.LIFTED, threads=2).paths(60)
    for x, y in ((a.prices, b.prices), (a.variances, b.variances)):
        assert np.array_equal(x[:, :-1], y[:, :-1])
        assert not np.array_equal(x[:, -1], y[:, -1])  # the odd asset did take its own kernel


@pytest.mark.parametrize(("scheme", "jumps"), MODES, ids=MODE_IDS)
def test_saved_state_continues_bit_for_bit(scheme: Scheme, jumps: bool) -> None:
    original = simulator(9, scheme, jumps)
    original.paths(123)
    text = original.state().to_json()
    saved = SimulatorState.from_json(text)
    assert saved == original.state()
    if scheme is Scheme.EULER:
        # Full truncation lets the stored variance go below zero; the state must keep it as it is.
        assert min(saved.variances) < 0.0
    expected = original.paths(50)

    restored = simulator(9, scheme, jumps)
    restored.paths(10)  # a simulator that has moved on is put back, not only a fresh one
    restored.restore(saved)
    assert restored.step_index == 123
    assert restored.state() == saved
    assert_same_paths(restored.paths(50), expected)
    assert restored.state() == original.state()


def test_a_state_is_refused_by_a_different_simulator() -> None:
    saved = simulator(9, Scheme.QE, jumps=False).state()
    for other in (simulator(10, Scheme.QE, False), simulator(9, Scheme.EULER, False)):
        with pytest.raises(ValueError, match="seed, scheme and dt must match"):
            other.restore(saved)
    with pytest.raises(ValueError, match="seed, scheme and dt must match"):
        simulator(9, Scheme.QE, False).restore(dataclasses.replace(saved, dt=DT / 2))
    with pytest.raises(ValueError, match="symbols differ"):
        Simulator(seed=9, dt=DT).restore(saved)
    with pytest.raises(ValueError, match="invalid simulator state"):
        SimulatorState.from_json("{not json")


def test_results_are_plain_numpy_arrays() -> None:
    # The kernel writes straight into these: one float64 row per step, one column per asset.
    paths = Simulator().paths(7)
    for array in (paths.prices, paths.variances, paths.log_returns):
        assert array.shape == (7, 20)
        assert array.dtype == np.float64
        assert array.flags.c_contiguous
    step = Simulator().step(7)
    assert step.prices.shape == step.variances.shape == step.log_returns.shape == (20,)
