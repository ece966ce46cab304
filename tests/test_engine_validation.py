"""Bad parameters are refused with a ValueError that names the parameter and the rule it breaks; a
Feller violation is allowed but warned about, and the parameters are used exactly as given."""

from __future__ import annotations

import dataclasses
import math
import re
import warnings

import numpy as np
import pytest

from marketfeed.engine import Asset, FellerConditionWarning, Scheme, Simulator, Universe

BASE = Universe.default()
FIRST = BASE.assets[0]  # NOVA, four factors


def with_first_asset(**change: object) -> Universe:
    return dataclasses.replace(BASE, assets=(dataclasses.replace(FIRST, **change), *BASE.assets[1:]))  # type: ignore[arg-type]


def on_factors(correlation: tuple[tuple[float, ...], ...]) -> Universe:
    k = len(correlation[0])
    factors = tuple(f"f{i}" for i in range(k))
    return Universe(factors, correlation, (dataclasses.replace(FIRST, betas=(1.0,) * k),))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"v0": 0.0}, "NOVA: v0 must be > 0 (got 0.0)"),
        ({"v0": -0.01}, "NOVA: v0 must be > 0"),
        ({"theta": 0.0}, "NOVA: theta must be > 0"),
        ({"theta": -0.01}, "NOVA: theta must be > 0"),
        ({"xi": 0.0}, "NOVA: xi must be > 0"),
        ({"xi": -0.3}, "NOVA: xi must be > 0"),
        ({"kappa": 0.0}, "NOVA: kappa must be > 0"),
        ({"kappa": -1.0}, "NOVA: kappa must be > 0"),
        ({"kappa": math.nan}, "NOVA: kappa must be > 0"),
        ({"v0": math.inf}, "NOVA: v0 must be > 0"),
        ({"rho": -1.2}, "NOVA: rho must be in [-1, 1]"),
        ({"rho": 1.0000001}, "NOVA: rho must be in [-1, 1]"),
        ({"rho": math.nan}, "NOVA: rho must be in [-1, 1]"),
        ({"betas": (1.0, 0.5)}, "NOVA: betas must be 4 values, one per factor"),
        ({"betas": (1.0,) * 5}, "NOVA: betas must be 4 values, one per factor"),
        ({"s0": -5.0}, "NOVA: s0 must be > 0"),
        ({"mu": math.inf}, "NOVA: mu must be finite"),
        ({"idio_vol": -0.1}, "NOVA: idio_vol must be >= 0"),
        ({"jump_intensity": -1.0}, "NOVA: jump_intensity must be >= 0"),
        ({"jump_std": -0.1}, "NOVA: jump_std must be >= 0"),
    ],
    ids=lambda value: str(value) if isinstance(value, dict) else "",
)
def test_invalid_asset_parameters_name_the_parameter_and_rule(
    change: dict[str, object], message: str
) -> None:
    universe = with_first_asset(**change)
    with pytest.raises(ValueError, match=re.escape(message)):
        Simulator(universe)
    with pytest.raises(ValueError, match=re.escape(message)):
        universe.validate()


@pytest.mark.parametrize("rho", [-1.0, 1.0])
@pytest.mark.parametrize("scheme", list(Scheme))
def test_perfect_leverage_is_allowed(rho: float, scheme: Scheme) -> None:
    # |rho| <= 1 includes the ends, where the variance's independent shock has zero weight.
    paths = Simulator(with_first_asset(rho=rho), scheme=scheme, dt=1 / 252).paths(500)
    assert np.all(np.isfinite(paths.prices))
    assert np.all(paths.variances >= 0)


@pytest.mark.parametrize(
    ("correlation", "message"),
    [
        (((1.0, 0.5), (0.4, 1.0)), "correlation: must be symmetric"),
        (((1.0, 1.5), (1.5, 1.0)), "correlation: entries must lie in [-1, 1]"),
        (((2.0, 0.0), (0.0, 1.0)), "correlation: diagonal entries must be 1"),
        (((1.0, math.nan), (math.nan, 1.0)), "correlation: entries must be finite"),
        # Every entry in range, yet the matrix has a negative eigenvalue (-0.8).
        (
            ((1.0, 0.9, 0.9), (0.9, 1.0, -0.9), (0.9, -0.9, 1.0)),
            "correlation: must be positive semi-definite",
        ),
        (((1.0, 0.0),), "correlation: must be a 2x2 matrix"),
        (((1.0, 0.0), (0.0,)), "correlation: must be a 2x2 matrix"),
    ],
    ids=["asymmetric", "out-of-range", "diagonal", "nan", "indefinite", "short", "ragged"],
)
def test_invalid_correlation_is_refused(correlation: tuple[tuple[float, ...], ...], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Simulator(on_factors(correlation))


@pytest.mark.parametrize(
    "correlation",
    [((1.0, 1.0), (1.0, 1.0)), ((1.0, -0.5, -0.5), (-0.5, 1.0, -0.5), (-0.5, -0.5, 1.0))],
    ids=["identical-factors", "three-factors-summing-to-zero"],
)
def test_singular_but_semidefinite_correlation_is_allowed(correlation: tuple[tuple[float, ...], ...]) -> None:
    # Semi-definite means a zero eigenvalue is fine: the Cholesky factor must still be found.
    assert np.all(np.isfinite(Simulator(on_factors(correlation)).paths(10).prices))


def test_shapes_must_agree() -> None:
    no_factors = Universe((), (), (dataclasses.replace(FIRST, betas=()),))
    with pytest.raises(ValueError, match="factors: at least one market factor"):
        Simulator(no_factors)
    with pytest.raises(ValueError, match="assets: the universe is empty"):
        Simulator(dataclasses.replace(BASE, assets=()))
    with pytest.raises(ValueError, match="symbol: 'NOVA' appears twice"):
        Simulator(dataclasses.replace(BASE, assets=(FIRST, FIRST)))
    with pytest.raises(ValueError, match=re.escape("NOVA: betas/idio_vol must be not all zero")):
        Simulator(with_first_asset(betas=(0.0,) * 4, idio_vol=0.0))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dt": 0.0}, "dt must be > 0 (got 0.0)"),
        ({"dt": -1.0}, "dt must be > 0"),
        ({"dt": math.nan}, "dt must be > 0"),
        ({"dt": math.inf}, "dt must be > 0"),
        ({"seed": -1}, "seed must be an integer in [0, 2**64)"),
        ({"seed": 2**64}, "seed must be an integer in [0, 2**64)"),
        ({"scheme": "milstein"}, "scheme must be one of ['qe', 'euler', 'lifted']"),
        ({"threads": -2}, "threads must be an integer >= 0"),
    ],
    ids=lambda value: str(value) if isinstance(value, dict) else "",
)
def test_invalid_simulator_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Simulator(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("n", [0, -3, True, 2.0])
def test_step_counts_must_be_positive_integers(n: object) -> None:
    sim = Simulator()
    with pytest.raises(ValueError, match="n must be a positive integer"):
        sim.step(n)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n must be a positive integer"):
        sim.paths(n)  # type: ignore[arg-type]


def rough_universe(n: int) -> Universe:
    """n beta-0 copies of an asset with 2 kappa theta = 0.04 < xi^2 = 1."""
    rough = Asset("R0", 100.0, 0.0, 0.04, 0.5, 0.04, 1.0, -0.5, (0.0,), 1.0)
    return Universe(("f",), ((1.0,),), tuple(dataclasses.replace(rough, symbol=f"R{i}") for i in range(n)))


def test_feller_violation_warns_and_changes_nothing() -> None:
    universe = rough_universe(2000)
    violated = r"R\d+: Feller condition 2\*kappa\*theta >= xi\^2 violated \(0.04 < 1\)"
    with pytest.warns(FellerConditionWarning, match=violated) as caught:
        sim = Simulator(universe, dt=0.25, scheme=Scheme.QE)
    assert len(caught) == 2000  # one per asset, each naming it
    assert sim.universe is universe
    assert sim.universe.assets[0] == rough_universe(1).assets[0]  # reported, never silently repaired
    assert np.all(sim.variances == 0.04)
    # With xi = 1 as given, QE's exponential branch puts a large share of the paths at exactly zero
    # variance within a year; a variance kept away from zero (xi shrunk, a floor) would not.
    assert np.mean(sim.step(4).variances == 0.0) > 0.3


def test_feller_condition_met_means_no_warning() -> None:
    calm = Universe(("f",), ((1.0,),), (dataclasses.replace(rough_universe(1).assets[0], xi=0.15),))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FellerConditionWarning)
        Simulator(calm)
        Simulator()  # the default universe keeps to the condition
