"""Rough volatility: the lifted Heston scheme against rough Heston's fractional Riccati prices, and the
roughness of the simulated variance against the Hurst exponent it was given."""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import numpy.typing as npt
import pytest
from heston_pricing import HestonParams, call_price
from rough_heston_pricing import lewis_calls, lifted_char_fn, rough_char_fn

from marketfeed.engine import Asset, FellerConditionWarning, Scheme, Simulator, Universe, lifted_kernel

FloatArray = npt.NDArray[np.float64]

# Rough (H = 0.1) with strong leverage; xi is kept moderate so that the variance rarely reaches zero,
# where any Euler-type scheme's truncation adds a bias the affine reference prices do not have.
ROUGH = HestonParams(s0=100.0, v0=0.04, kappa=1.0, theta=0.04, xi=0.3, rho=-0.7, r=0.0, t=0.5)
HURST = 0.1
STRIKES = np.array([90.0, 100.0, 110.0])
STEPS = 1000  # dt = 1/2000: the kernel's fastest factor then moves at half a step's rate
PATHS = 100_000


def replicated(p: HestonParams, hurst: float, n: int) -> Universe:
    asset = Asset(
        symbol="X0", s0=p.s0, mu=p.r, v0=p.v0, kappa=p.kappa, theta=p.theta, xi=p.xi, rho=p.rho,
        betas=(0.0,), idio_vol=1.0, hurst=hurst,
    )  # fmt: skip
    assets = tuple(dataclasses.replace(asset, symbol=f"X{i}") for i in range(n))
    return Universe(factors=("f",), correlation=((1.0,),), assets=assets)


def rough_calls(p: HestonParams, hurst: float) -> FloatArray:
    return lewis_calls(p, lambda u: rough_char_fn(p, hurst, u, steps=800), STRIKES)


def lifted_calls(p: HestonParams, hurst: float, factors: int, x_fast: float) -> FloatArray:
    c, x = lifted_kernel(hurst, factors, x_fast)
    return lewis_calls(p, lambda u: lifted_char_fn(p, c, x, u), STRIKES)


# --- the reference pricers ------------------------------------------------------------------------------
def test_reference_pricers_reduce_to_heston_at_h_one_half() -> None:
    p = dataclasses.replace(ROUGH, xi=0.5)
    heston = np.array([call_price(p, k) for k in STRIKES])
    c, x = lifted_kernel(0.5, 3, 1e3)  # one factor with c = 1, x = 0 is classical Heston
    np.testing.assert_allclose(
        lewis_calls(p, lambda u: lifted_char_fn(p, c, x, u), STRIKES), heston, atol=1e-6
    )
    np.testing.assert_allclose(rough_calls(p, 0.5), heston, atol=1e-4)  # the fractional solver at alpha = 1


def test_lifted_kernel_approximates_the_fractional_kernel() -> None:
    c, x = lifted_kernel(HURST, 20, 1e6)
    t = np.geomspace(1e-4, 1.0, 9)  # an hour to a year
    kernel = (c[None, :] * np.exp(-np.outer(t, x))).sum(axis=1)
    exact = t ** (HURST - 0.5) / math.gamma(HURST + 0.5)
    np.testing.assert_allclose(kernel, exact, rtol=0.1)


def test_lifted_prices_converge_to_rough_heston() -> None:
    rough = rough_calls(ROUGH, HURST)
    errors = [
        float(np.abs(lifted_calls(ROUGH, HURST, n, 0.5 * STEPS / ROUGH.t) - rough).max())
        for n in (3, 6, 12, 24)
    ]
    assert errors == sorted(errors, reverse=True), errors
    assert errors[-1] < 0.02, errors  # the at-the-money call is worth about 5


# --- Monte Carlo against the references -----------------------------------------------------------------
@pytest.mark.slow
def test_monte_carlo_matches_lifted_prices_and_approaches_rough_heston() -> None:
    rough = rough_calls(ROUGH, HURST)
    gaps = {}
    for factors, seed in ((3, 301), (20, 302)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FellerConditionWarning)
            sim = Simulator(
                replicated(ROUGH, HURST, PATHS),
                dt=ROUGH.t / STEPS,
                seed=seed,
                threads=2,
                rough_factors=factors,
            )
        assert sim.scheme is Scheme.LIFTED
        final = sim.step(STEPS).prices
        payoff = np.maximum(final[None, :] - STRIKES[:, None], 0.0)
        mc = payoff.mean(axis=1)
        se = payoff.std(axis=1, ddof=1) / math.sqrt(PATHS)
        exact = lifted_calls(ROUGH, HURST, factors, 0.5 * STEPS / ROUGH.t)
        assert abs(final.mean() - ROUGH.s0) < 3 * final.std() / math.sqrt(PATHS)
        assert np.all(np.abs(mc - exact) < 3 * se), f"{factors} factors: MC {mc} ± {se}, lifted {exact}"
        gaps[factors] = np.abs(mc - rough)
    # More factors, closer to rough Heston: at 3 factors the out-of-the-money call is visibly off.
    assert gaps[20][-1] < gaps[3][-1] / 3, gaps


# --- roughness ------------------------------------------------------------------------------------------
def variogram_hurst(x: FloatArray, lags: list[int], noise: float = 0.0) -> float:
    """H from E[(x_{t+lag} - x_t)^2] ~ lag^{2H}, less the measurement noise's share (2 var(noise))."""
    m = np.array([np.mean((x[lag:] - x[:-lag]) ** 2) for lag in lags]) - noise
    return float(np.polyfit(np.log(lags), np.log(m), 1)[0] / 2)


@pytest.mark.slow
@pytest.mark.parametrize("hurst", [0.1, 0.3, 0.5])
def test_realised_variance_recovers_the_hurst_exponent(hurst: float) -> None:
    per_day, days, n = 78, 252 * 20, 100  # five-minute returns, twenty years, a hundred paths
    asset = Asset("X", 100.0, 0.0, 0.04, 0.3, 0.04, 0.3, -0.7, (0.0,), 1.0, hurst=hurst)
    universe = Universe(
        factors=("f",),
        correlation=((1.0,),),
        assets=tuple(dataclasses.replace(asset, symbol=f"X{i}") for i in range(n)),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FellerConditionWarning)
        sim = Simulator(universe, dt=1 / (252 * per_day), seed=7)
    spot, realised = np.empty((days, n)), np.empty((days, n))
    for d in range(days):
        p = sim.paths(per_day)
        spot[d] = p.variances[-1]
        realised[d] = (p.log_returns**2).sum(axis=0) * 252
    lags = [5, 10, 20, 40, 80]  # one week to four months
    # The spot variance, which the simulator knows exactly.
    assert variogram_hurst(spot, lags) == pytest.approx(hurst, abs=0.04)
    # Daily realised variance, as an econometrician would see it: its sampling error (variance about
    # 2 RV^2 / 78) is subtracted; averaging over the day still lifts small H a little.
    noise = 2 * float(np.mean(2 * realised**2 / per_day))
    assert variogram_hurst(realised, lags, noise) == pytest.approx(hurst, abs=0.08)


# --- the scheme's plumbing ------------------------------------------------------------------------------
def rough_default(hurst: float = 0.1) -> Universe:
    u = Universe.default()
    return dataclasses.replace(u, assets=tuple(dataclasses.replace(a, hurst=hurst) for a in u.assets))


def test_rough_paths_do_not_depend_on_threads_chunking_or_a_restore() -> None:
    dt = 1 / 25_200
    whole = Simulator(rough_default(), dt=dt, seed=9, threads=1).paths(400)
    threaded = Simulator(rough_default(), dt=dt, seed=9, threads=2)
    first = threaded.paths(150)
    saved = threaded.state()
    restored = Simulator(rough_default(), dt=dt, seed=9)
    restored.restore(type(saved).from_json(saved.to_json()))
    rest = restored.paths(250)
    np.testing.assert_array_equal(np.vstack([first.prices, rest.prices]), whole.prices)
    np.testing.assert_array_equal(np.vstack([first.variances, rest.variances]), whole.variances)
    assert len(saved.lift_factors) == 20 * len(saved.log_prices)


def test_one_half_in_the_lifted_scheme_is_full_truncation_euler() -> None:
    dt = 1 / 25_200
    euler = Simulator(Universe.default(), dt=dt, seed=4, scheme=Scheme.EULER).paths(1000)
    lifted = Simulator(Universe.default(), dt=dt, seed=4, scheme=Scheme.LIFTED).paths(1000)
    np.testing.assert_allclose(lifted.prices, euler.prices, rtol=1e-12)
    np.testing.assert_allclose(lifted.variances, euler.variances, atol=1e-14)


def test_bad_rough_settings_are_refused() -> None:
    with pytest.raises(ValueError, match=r"hurst must be in \(0, 0.5\]"):
        Simulator(rough_default(0.7))
    with pytest.raises(ValueError, match="hurst"):
        Simulator(rough_default(0.0))
    with pytest.raises(ValueError, match="rough_factors"):
        Simulator(rough_default(), rough_factors=0)
    with pytest.raises(ValueError, match="rough_factors"):
        Simulator(rough_default(), rough_factors=1)
    state = Simulator(rough_default(), seed=1).state()
    with pytest.raises(ValueError, match="lifted"):
        Simulator(Universe.default(), seed=1, scheme=Scheme.LIFTED, rough_factors=5).restore(state)
