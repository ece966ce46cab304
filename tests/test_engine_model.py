"""The engine against the mathematics of its model.

Monte Carlo call prices within 3 standard errors of the semi-analytic Heston and Bates prices (computed
here, in heston_pricing, independently of the engine), the mean of the variance against its
closed form, and the correlation of asset returns against the factor model's.

A universe of n identical assets is an n-path Monte Carlo sample: every asset draws its own random
numbers (keyed by seed, asset and step), and with one factor and beta 0 each price driver is
idiosyncratic. Seeds are fixed, so the outcome is reproducible, but each assertion is a genuine
statistical test at the stated number of standard errors.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest
from heston_pricing import (
    HestonParams,
    black_scholes_call,
    call_price,
    expected_variance,
    merton_call,
)

from marketfeed.engine import Asset, FellerConditionWarning, Scheme, Simulator, Universe

FloatArray = npt.NDArray[np.float64]

# Published prices of the at-the-money call (S0 = K = 100): Broadie and Kaya (2006), and Andersen
# (2008) case I. Both violate the Feller condition; case I also has strong negative correlation.
BROADIE_KAYA = HestonParams(
    s0=100.0, v0=0.010201, kappa=6.21, theta=0.019, xi=0.61, rho=-0.7, r=0.0319, t=1.0
)
ANDERSEN_I = HestonParams(s0=100.0, v0=0.04, kappa=0.5, theta=0.04, xi=1.0, rho=-0.9, r=0.0, t=10.0)
MODERATE = HestonParams(s0=100.0, v0=0.04, kappa=2.0, theta=0.04, xi=0.3, rho=-0.5, r=0.02, t=0.5)
# Leverage reversed and the variance starting above its mean: the sign of rho and the decay both matter.
POSITIVE_RHO = HestonParams(s0=100.0, v0=0.09, kappa=1.5, theta=0.06, xi=0.4, rho=0.5, r=0.05, t=1.0)
BATES = dataclasses.replace(MODERATE, jump_intensity=0.5, jump_mean=-0.1, jump_std=0.15)
# Four jumps a year: at dt = 1/8 one step in eleven has two or more, so the whole Poisson draw is used.
FREQUENT_JUMPS = HestonParams(
    s0=100.0, v0=0.04, kappa=1.5, theta=0.04, xi=0.5, rho=-0.7, r=0.03, t=1.0,
    jump_intensity=4.0, jump_mean=-0.05, jump_std=0.1,
)  # fmt: skip

PATHS = 200_000
STRIKES = (90.0, 100.0, 110.0)


@dataclass(frozen=True, slots=True)
class McCase:
    name: str
    params: HestonParams
    scheme: Scheme
    dt: float  #: chosen so the scheme's discretisation bias is well inside the statistical error
    seed: int
    paths: int = PATHS

    @property
    def steps(self) -> int:
        return round(self.params.t / self.dt)

    def __str__(self) -> str:
        return f"{self.name}-{self.scheme.value}-dt=1/{round(1 / self.dt)}"


# Each case has its own seed so that the cases are independent samples, not one sample re-used.
# The steps were chosen by measuring each scheme's bias with ten to twenty times the paths.
CASES = [
    # QE keeps its accuracy at large steps, even where the variance often touches zero...
    McCase("Andersen-I", ANDERSEN_I, Scheme.QE, 1 / 16, 102),
    McCase("moderate", MODERATE, Scheme.QE, 1 / 8, 103),
    McCase("positive-rho", POSITIVE_RHO, Scheme.QE, 1 / 8, 104),
    McCase("Bates", BATES, Scheme.QE, 1 / 8, 105),
    McCase("frequent-jumps", FREQUENT_JUMPS, Scheme.QE, 1 / 8, 106),
    # ...but not when kappa dt is large: with kappa = 6.21, dt = 1/8 prices the 110 call 0.012 low
    # (1.3 standard errors here). An independent NumPy QE shows the same bias, and it is gone by 1/32.
    McCase("Broadie-Kaya", BROADIE_KAYA, Scheme.QE, 1 / 32, 101),
    # Full-truncation Euler converges only like dt (slower still where the variance keeps hitting
    # zero), so it gets much smaller steps. At dt = 1/32 it prices the 110 call about one standard error
    # high even on the moderate, Feller-respecting case (an independent NumPy Euler agrees); at 1/128 it
    # is within 0.4 standard errors. Broadie-Kaya needs 1/256 for that.
    McCase("moderate", MODERATE, Scheme.EULER, 1 / 128, 203),
    McCase("positive-rho", POSITIVE_RHO, Scheme.EULER, 1 / 128, 204),
    McCase("Bates", BATES, Scheme.EULER, 1 / 128, 205),
    McCase("frequent-jumps", FREQUENT_JUMPS, Scheme.EULER, 1 / 128, 206),
    McCase("Broadie-Kaya", BROADIE_KAYA, Scheme.EULER, 1 / 256, 201),
    # Andersen I (2 kappa theta / xi^2 = 0.04, T = 10) is Euler's worst case: at dt = 1/64 the ATM call
    # is 1% high (+4.7 standard errors), and the bias fades slowly: about +0.03 at 1/256 (an independent
    # NumPy Euler agrees), +0.02 at 1/1024. With a quarter of the paths (standard error 0.044) that is
    # about 0.4 standard errors, within the time budget; QE above tests this case at full precision.
    McCase("Andersen-I", ANDERSEN_I, Scheme.EULER, 1 / 1024, 202, paths=PATHS // 4),
]


def replicated(p: HestonParams, n: int) -> Universe:
    """n independent copies of one asset under the pricing measure (mu = r)."""
    asset = Asset(
        symbol="X0", s0=p.s0, mu=p.r, v0=p.v0, kappa=p.kappa, theta=p.theta, xi=p.xi, rho=p.rho,
        betas=(0.0,), idio_vol=1.0, jump_intensity=p.jump_intensity, jump_mean=p.jump_mean,
        jump_std=p.jump_std,
    )  # fmt: skip
    assets = tuple(dataclasses.replace(asset, symbol=f"X{i}") for i in range(n))
    return Universe(factors=("f",), correlation=((1.0,),), assets=assets)


def simulator(p: HestonParams, n: int, steps: int, scheme: Scheme, seed: int) -> Simulator:
    with warnings.catch_warnings():
        # Several cases break the Feller condition on purpose; the warning has its own test.
        warnings.simplefilter("ignore", FellerConditionWarning)
        return Simulator(
            replicated(p, n), dt=p.t / steps, seed=seed, scheme=scheme, jumps=p.jump_intensity > 0, threads=2
        )


def mean_and_se(sample: FloatArray) -> tuple[float, float]:
    return float(sample.mean()), float(sample.std(ddof=1) / math.sqrt(sample.size))


# --- the reference pricer -----------------------------------------------------------------------------
def test_reference_pricer_reproduces_published_prices() -> None:
    assert call_price(BROADIE_KAYA, 100.0) == pytest.approx(6.8061, abs=1e-4)
    assert call_price(ANDERSEN_I, 100.0) == pytest.approx(13.0847, abs=1e-4)


@pytest.mark.parametrize("strike", [80.0, 100.0, 120.0])
def test_reference_pricer_reduces_to_black_scholes_and_merton(strike: float) -> None:
    # As xi -> 0 with v0 = theta the variance stays at theta: Heston becomes Black-Scholes and Bates
    # becomes Merton's jump-diffusion, both priced here without any characteristic function. rho = 0
    # makes the gap O(xi^2), so xi = 1e-4 leaves it far below the tolerance.
    still = HestonParams(s0=100.0, v0=0.04, kappa=1.0, theta=0.04, xi=1e-4, rho=0.0, r=0.03, t=1.0)
    jumpy = dataclasses.replace(still, jump_intensity=2.0, jump_mean=-0.1, jump_std=0.2)
    assert call_price(still, strike) == pytest.approx(
        black_scholes_call(100.0, strike, 0.03, 1.0, 0.2), abs=1e-6
    )
    assert call_price(jumpy, strike) == pytest.approx(merton_call(jumpy, strike), abs=1e-6)
    assert merton_call(dataclasses.replace(jumpy, jump_intensity=0.0), strike) == pytest.approx(
        black_scholes_call(100.0, strike, 0.03, 1.0, 0.2), rel=1e-12
    )


# --- Monte Carlo prices ---------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=str)
def test_monte_carlo_calls_within_three_standard_errors(case: McCase) -> None:
    p = case.params
    final = simulator(p, case.paths, case.steps, case.scheme, case.seed).step(case.steps).prices
    discount = math.exp(-p.r * p.t)
    # The discounted mean of S_T must be S0: that checks QE's martingale correction and the jumps'
    # compensated drift directly, before the option payoffs weigh in.
    checks = {"discounted S_T": (discount * final, p.s0)}
    for strike in STRIKES:
        checks[f"call K={strike:g}"] = (discount * np.maximum(final - strike, 0.0), call_price(p, strike))
    misses = []
    for label, (payoff, exact) in checks.items():
        price, se = mean_and_se(payoff)
        if abs(price - exact) >= 3 * se:
            misses.append(
                f"{label}: MC {price:.4f} ± {se:.4f}, exact {exact:.4f} ({(price - exact) / se:+.1f} SE)"
            )
    assert not misses, f"{case}: " + "; ".join(misses)


# --- the variance ---------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(
    ("params", "scheme", "steps"),
    [
        # Start far from theta so the decay shows. QE matches the conditional mean exactly at any step.
        (dataclasses.replace(MODERATE, v0=0.09, t=1.0), Scheme.QE, 20),
        # Euler's mean decays like (1 - kappa dt)^k rather than e^{-kappa t}: it needs small steps.
        (dataclasses.replace(MODERATE, v0=0.09, t=1.0), Scheme.EULER, 400),
        # Feller violated and dt = 1/5: QE's exponential branch (v' = 0 with positive probability).
        (dataclasses.replace(ANDERSEN_I, v0=0.1, t=4.0), Scheme.QE, 20),
    ],
    ids=["moderate-qe", "moderate-euler", "Andersen-I-qe"],
)
def test_mean_variance_follows_its_expectation(params: HestonParams, scheme: Scheme, steps: int) -> None:
    n, checkpoints = 50_000, 10
    sim = simulator(params, n, steps, scheme, seed=7)
    misses = []
    for _ in range(checkpoints):
        mean, se = mean_and_se(sim.step(steps // checkpoints).variances)
        t = sim.step_index * sim.dt
        exact = expected_variance(params, t)
        # Ten correlated comparisons: 4 standard errors keeps a false alarm unlikely (~1e-3).
        if abs(mean - exact) >= 4 * se:
            misses.append(f"t={t:g}: {mean:.5f} ± {se:.5f}, exact {exact:.5f}")
    assert not misses, "; ".join(misses)


def test_qe_takes_its_exponential_branch_exactly_where_psi_exceeds_one_and_a_half() -> None:
    # Andersen's QE draws v' from a squared normal when psi = s^2 / m^2 <= 1.5 (never exactly 0) and
    # else from a mass p = (psi - 1) / (psi + 1) at 0 plus an exponential. The engine tests psi through
    # a threshold on v; here psi is computed from each step's starting variance, independently.
    params = dataclasses.replace(ANDERSEN_I, v0=0.02, t=10.0)  # psi(0) = xi^2 / (2 kappa theta) = 25
    steps = 50
    sim = simulator(params, 4000, steps, Scheme.QE, seed=5)
    after = sim.paths(steps).variances
    before = np.vstack([np.full(after.shape[1], params.v0), after[:-1]])
    k, th, xi, dt = params.kappa, params.theta, params.xi, sim.dt
    e = math.exp(-k * dt)
    m = th + (before - th) * e
    s2 = before * xi**2 * e * (1 - e) / k + th * xi**2 * (1 - e) ** 2 / (2 * k)
    psi = s2 / m**2
    quadratic, exponential = psi < 1.49, psi > 1.51
    assert quadratic.sum() > 10_000  # both branches well exercised
    assert exponential.sum() > 10_000
    assert np.all(after[quadratic] > 0.0)
    zero = (after[exponential] == 0.0).astype(float)
    p = (psi[exponential] - 1) / (psi[exponential] + 1)
    mean, se = mean_and_se(zero - p)  # each draw is 0 with probability p, independently given psi
    assert abs(mean) < 4 * se


# --- cross-asset correlation ----------------------------------------------------------------------------
def signed_universe() -> Universe:
    """Assets on single factors and short the market, so that some implied correlations are negative."""
    base = Universe.default()
    template = base.assets[0]
    exposures = {"GROW": (0.0, 1.0, 0.0, 0.0), "VALU": (0.0, 0.0, 1.0, 0.0), "SHRT": (-1.0, 0.0, 0.0, 0.0)}
    exposures |= {"MKT": (1.0, 0.0, 0.0, 0.0), "MIX": (0.5, 0.5, 0.5, 0.5)}
    assets = tuple(
        dataclasses.replace(template, symbol=s, betas=b, idio_vol=0.4) for s, b in exposures.items()
    )
    return dataclasses.replace(base, assets=assets)


def independent_universe() -> Universe:
    """Identical beta-0 assets: the replication the pricing tests rely on needs them uncorrelated."""
    template = dataclasses.replace(Universe.default().assets[0], betas=(0.0,), idio_vol=1.0)
    assets = tuple(dataclasses.replace(template, symbol=f"I{i}") for i in range(10))
    return Universe(factors=("f",), correlation=((1.0,),), assets=assets)


@pytest.mark.parametrize("scheme", list(Scheme))
@pytest.mark.parametrize(
    "universe",
    [Universe.default(), signed_universe(), independent_universe()],
    ids=["default", "signed", "independent"],
)
def test_return_correlation_matches_the_factor_model(universe: Universe, scheme: Scheme) -> None:
    steps = 100_000
    sim = Simulator(universe, seed=11, scheme=scheme)  # the default dt: one second, as served
    start = sim.variances
    paths = sim.paths(steps)
    before = np.vstack([start, paths.variances[:-1]])
    # Returns divided by their volatility at the start of the step: over a second the drift is
    # negligible, so each is the asset's price driver (under Euler exactly but for the drift, under QE
    # up to O(sqrt(dt)) terms). Raw returns would carry each path's stochastic volatility, which lowers
    # and blurs their correlation by an amount the factor model does not describe.
    drivers = paths.log_returns / np.sqrt(before * sim.dt)
    sample = np.corrcoef(drivers.T)
    implied = universe.implied_correlation()
    se = (1.0 - implied**2) / math.sqrt(steps)  # of a correlation estimated from Gaussian pairs
    # A maximum over up to 190 pairs: 5 standard errors keeps a chance failure below 1e-4.
    excess = np.abs(sample - implied) - 5 * se
    assert np.all(excess <= 1e-9), (
        f"worst pair off by {np.max(np.abs(sample - implied) / (se + 1e-12)):.1f} SE"
    )
