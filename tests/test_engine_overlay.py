"""The scenario overlay: a variance multiplier on the prices and a factor-correlation override."""

from __future__ import annotations

import numpy as np
import pytest

from marketfeed.engine import Scheme, Simulator, Universe

DT = 1 / 25_200  # a hundredth of a trading day


@pytest.mark.parametrize("scheme", list(Scheme))
def test_the_neutral_overlay_is_bit_exact(scheme: Scheme) -> None:
    plain = Simulator(seed=3, scheme=scheme, dt=DT).paths(500)
    sim = Simulator(seed=3, scheme=scheme, dt=DT)
    sim.set_overlay(2.0)
    sim.paths(10)
    sim.set_overlay()  # back to the model for the remaining steps: the variance path never changed
    rest = sim.paths(490)
    assert np.array_equal(rest.variances, plain.variances[10:])
    np.testing.assert_array_equal(Simulator(seed=3, scheme=scheme, dt=DT).paths(500).prices, plain.prices)


@pytest.mark.parametrize("scheme", list(Scheme))
def test_var_scale_multiplies_return_variance_and_reported_variance(scheme: Scheme) -> None:
    base = Simulator(seed=4, scheme=scheme, dt=DT).paths(20_000)
    sim = Simulator(seed=4, scheme=scheme, dt=DT)
    sim.set_overlay(4.0)
    spiked = sim.paths(20_000)
    np.testing.assert_allclose(spiked.variances, 4.0 * base.variances, rtol=1e-12)
    ratio = spiked.log_returns.var(axis=0) / base.log_returns.var(axis=0)
    # Same random numbers: the ratio is 4 up to the drift terms' small contribution.
    np.testing.assert_allclose(ratio, 4.0, rtol=0.02)
    assert sim.var_scale == 4.0


def test_correlation_override_changes_cross_asset_correlation() -> None:
    u = Universe.default()
    k = len(u.factors)
    together = np.full((k, k), 0.95)
    np.fill_diagonal(together, 1.0)
    sim = Simulator(u, seed=6, scheme=Scheme.EULER, dt=DT)
    sim.set_overlay(1.0, together)
    p = sim.paths(40_000)
    z = p.log_returns[1:] / np.sqrt(p.variances[:-1] * DT)  # the price drivers, free of the vol levels
    observed = np.corrcoef(z.T)
    a, idio = u.driver_loadings()
    cov = a @ together @ a.T + np.diag(idio**2)  # the drivers' variances move with the correlation too
    expected = cov / np.sqrt(np.outer(np.diag(cov), np.diag(cov)))
    assert np.abs(observed - expected).max() < 0.03  # 40,000 draws: standard error < 0.005
    assert np.abs(observed - u.implied_correlation()).max() > 0.1  # and it differs from the model's


def test_bad_overlays_are_refused() -> None:
    sim = Simulator(seed=1)
    with pytest.raises(ValueError, match="var_scale"):
        sim.set_overlay(-1.0)
    with pytest.raises(ValueError, match="4x4"):
        sim.set_overlay(1.0, np.eye(3))
    with pytest.raises(ValueError, match="symmetric"):
        sim.set_overlay(1.0, np.tril(np.ones((4, 4))))
