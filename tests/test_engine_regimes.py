"""Regime switching: a Markov chain of market regimes scaling factor volatility and correlation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from marketfeed.engine import Asset, Regime, Scheme, Simulator, SimulatorState, Universe

CALM_TO_STRESSED, STRESSED_TO_CALM = 20.0, 80.0  # per year: stressed about 20% of the time
DT = 1 / 2520  # a tenth of a day


def two_regimes(assets: tuple[Asset, ...] | None = None) -> Universe:
    base = Universe.default()
    stressed_corr = ((1.0, 0.8, 0.7, 0.7), (0.8, 1.0, 0.5, 0.6), (0.7, 0.5, 1.0, 0.7), (0.7, 0.6, 0.7, 1.0))
    return dataclasses.replace(
        base,
        assets=assets if assets is not None else base.assets,
        regimes=(Regime("calm"), Regime("stressed", vol_scale=2.0, correlation=stressed_corr)),
        regime_rates=((0.0, CALM_TO_STRESSED), (STRESSED_TO_CALM, 0.0)),
    )


def test_regimes_follow_the_chain_and_scale_factor_volatility() -> None:
    # A pure market-factor asset (no idiosyncratic part) so its returns show the factor's volatility.
    probe = Asset("MKT", 100.0, 0.0, 0.04, 5.0, 0.04, 0.3, 0.0, (1.0, 0.0, 0.0, 0.0), 0.0)
    sim = Simulator(two_regimes((probe,)), dt=DT, seed=5, scheme=Scheme.EULER)
    regimes, returns, variances = [], [], []
    for _ in range(40_000):
        v = float(sim.variances[0])
        step = sim.step(1)
        regimes.append(sim.regime)
        returns.append(float(step.log_returns[0]))
        variances.append(v)
    regime = np.array(regimes)
    z = np.array(returns) / np.sqrt(np.array(variances) * DT)  # the price driver, per step
    stationary = CALM_TO_STRESSED / (CALM_TO_STRESSED + STRESSED_TO_CALM)
    assert abs(regime.mean() - stationary) < 0.05
    switches = int(np.count_nonzero(np.diff(regime)))
    expected = 2 * 40_000 * DT * CALM_TO_STRESSED * STRESSED_TO_CALM / (CALM_TO_STRESSED + STRESSED_TO_CALM)
    assert 0.7 * expected < switches < 1.3 * expected
    calm, stressed = float(z[regime == 0].var()), float(z[regime == 1].var())
    assert calm == pytest.approx(1.0, abs=0.05)
    assert stressed == pytest.approx(4.0, rel=0.1)  # vol_scale 2: variance x4


def test_regimes_stay_deterministic_and_restorable() -> None:
    universe = two_regimes()
    whole = Simulator(universe, seed=2, dt=DT, threads=1).paths(600)
    chunked = Simulator(universe, seed=2, dt=DT, threads=2)
    parts = [chunked.paths(100) for _ in range(6)]
    assert np.array_equal(whole.prices, np.vstack([p.prices for p in parts]))
    saved = SimulatorState.from_json(chunked.state().to_json())
    expected = chunked.paths(200).prices
    again = Simulator(universe, seed=2, dt=DT)
    again.restore(saved)
    assert again.regime == saved.regime
    assert np.array_equal(again.paths(200).prices, expected)


def test_universe_round_trips_its_regimes_and_refuses_bad_ones() -> None:
    universe = two_regimes()
    assert Universe.from_dict(universe.to_dict()) == universe
    p = universe.regime_switch(DT)
    assert np.allclose(p.sum(axis=1), 1.0)
    assert p[0, 1] == pytest.approx(CALM_TO_STRESSED * DT, rel=0.05)
    with pytest.raises(ValueError, match="vol_scale"):
        dataclasses.replace(universe, regimes=(Regime("calm"), Regime("bad", vol_scale=0.0))).validate()
    with pytest.raises(ValueError, match="regime_rates"):
        dataclasses.replace(universe, regime_rates=((0.0, -1.0), (1.0, 0.0))).validate()
    bad_corr = ((1.0, 2.0, 0.0, 0.0), (2.0, 1.0, 0.0, 0.0), (0.0, 0.0, 1.0, 0.0), (0.0, 0.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="regime stressed: correlation"):
        dataclasses.replace(
            universe, regimes=(Regime("calm"), Regime("stressed", correlation=bad_corr))
        ).validate()
