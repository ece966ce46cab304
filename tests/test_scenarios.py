"""Scenario overlays and live parameter changes, driven through the runtime's own engine-step code."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path

import numpy as np
import pytest

from marketfeed import scenarios
from marketfeed.config import Settings
from marketfeed.engine import Universe
from marketfeed.market import Market
from marketfeed.runtime import Event, Runtime
from marketfeed.scenarios import Scenario, ScenarioBook, target_matrix

HALF_LIFE = 10.0  # simulated seconds: ten steps at one simulated second per step


def make_runtime(tmp_path: Path) -> Runtime:
    rt = Runtime(Settings(history_path=tmp_path / "h.sqlite3", tick_rate=20, speed=20))
    rt.market = Market(rt.simulator_for(rt.universe))
    return rt


def steps(rt: Runtime, n: int) -> None:
    """What the engine loop does each step, minus the pacing and the I/O."""
    assert rt.market is not None
    for _ in range(n):
        _, done = rt._step(rt.market)
        rt._record_events(done)


async def applied(rt: Runtime, change: Awaitable[Event]) -> Event:
    """Send a change, run the step that applies it, and return its event."""
    task = asyncio.ensure_future(change)
    await asyncio.sleep(0)  # the request is queued before the engine steps
    steps(rt, 1)
    return await task


def var_scale(rt: Runtime) -> float:
    assert rt.market is not None
    return rt.market.sim.var_scale


def test_a_vol_spike_halves_its_excess_in_one_half_life_and_expires(tmp_path: Path) -> None:
    rt = make_runtime(tmp_path)
    assert rt.book.dt_seconds == pytest.approx(1.0)

    async def body() -> None:
        record = await applied(rt, rt.inject(Scenario("vol_spike", multiplier=4.0, half_life=HALF_LIFE)))
        assert (record["type"], record["kind"], record["at_step"]) == ("scenario", "vol_spike", 0)
        assert var_scale(rt) == pytest.approx(4.0)  # the step right after the injection: full strength
        steps(rt, 10)  # the overlay of step 10, one half-life on
        assert var_scale(rt) == pytest.approx(1.0 + 3.0 / 2)
        assert rt.active_scenarios[0]["strength"] == pytest.approx(0.5)
        steps(rt, 10)
        assert var_scale(rt) == pytest.approx(1.0 + 3.0 / 4)
        # 3 * 2^-t/10 < 0.001 from t = 116 s on: the scenario is dropped and the model is exact again.
        steps(rt, 95)
        assert rt.book.active
        steps(rt, 1)
        assert not rt.book.active
        assert rt.active_scenarios == []
        assert var_scale(rt) == 1.0

    asyncio.run(body())


def test_a_correlation_breakdown_blends_towards_the_model() -> None:
    u = Universe.default()
    model = u.correlation_matrix()
    book = ScenarioBook(dt_seconds=1.0)
    book.add(Scenario("correlation", correlation=0.9, half_life=HALF_LIFE), step=5)
    start = book.overlay(5, model)
    assert start.var_scale == 1.0
    assert start.correlation is not None
    np.testing.assert_allclose(start.correlation, target_matrix(0.9, 4))
    half = book.overlay(15, model).correlation
    assert half is not None
    np.testing.assert_allclose(half, 0.5 * target_matrix(0.9, 4) + 0.5 * model)
    assert half[0, 1] == pytest.approx((0.9 + 0.3) / 2)
    np.testing.assert_allclose(np.diag(half), 1.0)


def test_scenarios_combine_vol_multipliers_multiply_and_the_newest_correlation_wins() -> None:
    model = Universe.default().correlation_matrix()
    book = ScenarioBook(dt_seconds=1.0)
    book.add(Scenario("vol_spike", multiplier=3.0, half_life=HALF_LIFE), step=0)
    book.add(Scenario("correlation", correlation=0.8, half_life=1e6), step=0)
    book.add(Scenario("vol_spike", multiplier=0.5, half_life=20.0), step=10)
    book.add(Scenario("correlation", correlation=-0.2, half_life=1e6), step=10)
    at = book.overlay(10, model)
    assert at.var_scale == pytest.approx((1 + 2 * 0.5) * 0.5)
    assert at.correlation is not None
    assert at.correlation[0, 1] == pytest.approx(-0.2)
    assert [a.scenario.kind for a in book.active] == ["vol_spike", "correlation", "vol_spike", "correlation"]


def test_crash_with_a_spike_and_clearing_the_overlays(tmp_path: Path) -> None:
    rt = make_runtime(tmp_path)
    assert rt.market is not None
    before = rt.market.sim.prices[0]
    nova_beta = rt.universe.assets[0].betas[0]

    async def body() -> None:
        crash = Scenario("crash", factor="market", size=-0.1, multiplier=2.0, half_life=HALF_LIFE)
        await applied(rt, rt.inject(crash))
        assert var_scale(rt) == pytest.approx(2.0)
        await applied(rt, rt.inject(Scenario("correlation", correlation=0.5)))
        cleared = await applied(rt, rt.clear_scenarios())
        assert (cleared["type"], cleared["cleared"]) == ("scenarios_cleared", 2)
        assert var_scale(rt) == 1.0
        assert rt.overlay == {"var_scale": 1.0, "correlation": None}
        assert [e["type"] for e in rt.scenario_log] == ["scenario", "scenario", "scenarios_cleared"]

    asyncio.run(body())
    assert rt.market.sim.prices[0] / before == pytest.approx(np.exp(nova_beta * -0.1), rel=0.03)


def test_a_parameter_change_continues_the_path_with_the_new_model(tmp_path: Path) -> None:
    rt = make_runtime(tmp_path)
    assert rt.market is not None
    steps(rt, 5)
    state = rt.market.state()
    universe = scenarios.changed_universe(rt.universe, {"NOVA": {"theta": 0.2, "rho": -0.3}}, None)

    async def body() -> Event:
        return await applied(rt, rt.change_params(universe, rt.simulator_for(universe), {"x": 1}))

    record = asyncio.run(body())
    assert (record["type"], record["at_step"], record["changes"]) == ("params", 5, {"x": 1})
    assert rt.market.sim.universe["NOVA"].theta == 0.2
    assert rt.market.sim.universe["NOVA"].rho == -0.3
    assert rt.market.sim.universe["QBIT"] == Universe.default()["QBIT"]
    assert rt.market.next_step == 6  # the same path, one step on from the state it had
    assert abs(rt.market.sim.prices[1] / np.exp(state.log_prices[1]) - 1) < 0.05


@pytest.mark.parametrize(
    ("assets", "correlation", "needle"),
    [
        ({"NOVA": {"rho": 2.0}}, None, "NOVA: rho must be in [-1, 1]"),
        ({"QBIT": {"theta": -0.1}}, None, "QBIT: theta must be > 0"),
        ({"QBIT": {"betas": [1.0]}}, None, "QBIT: betas must be 4 values"),
        ({"QBIT": {"s0": 1.0}}, None, "QBIT: cannot change s0"),
        ({}, [[1.0, 0.5], [0.5, 1.0]], "correlation: must be a 4x4 matrix"),
    ],
)
def test_bad_parameter_changes_name_the_symbol_and_field(
    assets: dict[str, dict[str, object]], correlation: list[list[float]] | None, needle: str
) -> None:
    with pytest.raises(ValueError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        scenarios.changed_universe(Universe.default(), assets, correlation)


@pytest.mark.parametrize(
    ("scenario", "needle"),
    [
        (Scenario("vol_spike", multiplier=2.0, half_life=0.0), "half_life"),
        (Scenario("correlation", correlation=-0.5), r"correlation must lie in \[-0.3333, 1\)"),
        (Scenario("correlation", correlation=1.0), "correlation must lie"),
        (Scenario("correlation"), "correlation must lie"),
        (Scenario("vol_spike", multiplier=1000.0), "multiplier"),
        (Scenario("crash", factor="moon"), "factor"),
    ],
)
def test_bad_scenarios_name_the_field(scenario: Scenario, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        scenarios.validate(scenario, list(Universe.default().factors))
