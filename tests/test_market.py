"""The tick layer: trade arrivals (every step, Poisson, Hawkes), seasonality, sessions, gap-free seq,
and a restart from a saved state that continues exactly."""

from __future__ import annotations

import gc
import itertools
import json
from dataclasses import replace
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from pydantic import ValidationError

from marketfeed.calendar import parse_session
from marketfeed.config import Settings
from marketfeed.engine import SECONDS_PER_YEAR, Simulator, SimulatorState
from marketfeed.market import Arrivals, Market, TradeModel
from marketfeed.scenarios import Scenario, apply_crash
from marketfeed.ticks import Tick

NS = 1_000_000_000
MONDAY_JAN = int(datetime(2026, 1, 5, tzinfo=UTC).timestamp()) * NS  # 00:00 UTC, a Monday
NEW_YORK = ZoneInfo("America/New_York")


def market(dt_seconds: float = 0.1, seed: int = 0, **trades: object) -> Market:
    sim = Simulator(dt=dt_seconds / SECONDS_PER_YEAR, seed=seed)
    return Market(sim, trades=TradeModel(**trades))  # type: ignore[arg-type]


def counts(m: Market, steps: int, ts: int = MONDAY_JAN) -> np.ndarray:
    """(steps, n_assets) trade counts, without stepping the engine (arrivals do not depend on prices)."""
    return np.stack([m.trade_counts(k, ts) for k in range(steps)])


def run(m: Market, steps: int, ts0: int = MONDAY_JAN, ts_step: int = NS) -> list[Tick]:
    return [t for _ in range(steps) for t in m.step(ts0 + m.next_step * ts_step).ticks]


def lag1_autocorrelation(x: np.ndarray) -> float:
    """Of each column's series, pooled over the columns."""
    d = x - x.mean(axis=0)
    return float((d[1:] * d[:-1]).sum() / (d * d).sum())


# --- the default: every symbol, every step, as before -------------------------------------------------
def test_every_step_is_the_classic_feed() -> None:
    m = market()
    ticks = run(m, 50)
    n = len(m.symbols)
    assert len(ticks) == 50 * n
    assert [t.seq for t in ticks] == [k + 1 for k in range(50) for _ in range(n)]
    assert [t.gseq for t in ticks] == list(range(1, 50 * n + 1))
    # Sizes are the same draws as before arrivals existed: one lognormal per symbol and step.
    for k in (0, 49):
        rng = np.random.default_rng([0, k, 0x7369_7A65])
        expected = np.maximum(1, np.rint(rng.lognormal(mean=3.9, sigma=1.0, size=n))).astype(int)
        assert [t.size for t in ticks[k * n : (k + 1) * n]] == expected.tolist()


def test_quotes_are_the_element_wise_formula_and_the_json_is_each_ticks_own() -> None:
    # The tick layer converts whole columns at once; it must give what rounding each element did.
    m = market()
    n = len(m.symbols)
    rng = np.random.default_rng(5)
    for step in range(200):
        prices = np.concatenate([[2.675, 100.005, 0.015, 99_999.995, 1.0], 10 ** rng.uniform(-1, 5, n - 5)])
        variances = np.concatenate([[0.0, -1e-9, 1e-12, 4.0, 0.04], rng.uniform(0, 1, n - 5)])
        batch = m.ticks(step, prices, variances, MONDAY_JAN)
        assert len(batch.ticks) == n
        vol = np.sqrt(np.maximum(variances, 0.0))
        half = prices * (m.spread_bps * 0.5e-4) * (1.0 + vol / 0.4)
        bid = np.floor((prices - half) / 0.01) * 0.01
        ask = np.maximum(np.ceil((prices + half) / 0.01) * 0.01, bid + 0.01)
        last = np.clip(np.round(prices / 0.01) * 0.01, bid, ask)
        for i, t in enumerate(batch.ticks):
            cents = [round(float(a[i]), 2) for a in (last, bid, ask)]
            assert (t.price, t.bid, t.ask, t.vol) == (*cents, round(float(vol[i]), 6))
            assert all(
                type(v) is type(f) for v, f in zip(t, Tick("", 0, 0, 0, 0.0, 0.0, 0.0, 0, 0.0), strict=True)
            )
        assert list(batch.encoded) == [t.to_json() for t in batch.ticks]


def test_a_tick_the_json_writer_does_not_cover_is_encoded_by_orjson() -> None:
    m = market()
    n = len(m.symbols)
    prices, variances = np.full(n, 100.0), np.full(n, 0.04)
    prices[1], variances[2] = 1e14, np.nan  # beyond the cent writer's range; a volatility it cannot write
    batch = m.ticks(0, prices, variances, MONDAY_JAN)
    assert list(batch.encoded) == [t.to_json() for t in batch.ticks]
    assert b'"vol":null' in batch.encoded[2]
    assert b'"price":100000000000000.0' in batch.encoded[1]

    # A tick made in Python (_replace) is left untracked too, so the batch's tuple is.
    assert not any(gc.is_tracked(t) for t in batch.ticks)
    assert not gc.is_tracked(batch.ticks)


def test_a_steps_ticks_and_their_tuple_are_left_to_no_garbage_collection() -> None:
    m = market()
    batches = [m.step(MONDAY_JAN + k * NS) for k in range(3)]
    for b in batches:
        assert isinstance(b.ticks, tuple)
        assert not gc.is_tracked(b.ticks)
        assert not any(gc.is_tracked(t) for t in b.ticks)
    gc.collect()  # and they are whole after a collection
    assert [t.gseq for b in batches for t in b.ticks] == list(range(1, 3 * len(m.symbols) + 1))
    assert [Tick.from_json(e) for e in batches[2].encoded] == list(batches[2].ticks)


# --- arrivals ---------------------------------------------------------------------------------------
def test_poisson_counts_have_mean_and_variance_rate_times_dt() -> None:
    m = market(dt_seconds=0.1, arrivals=Arrivals.POISSON, trade_rate=2.0)
    c = counts(m, 5000)
    assert c.mean() == pytest.approx(0.2, rel=0.03)
    assert c.var() == pytest.approx(0.2, rel=0.04)
    assert abs(lag1_autocorrelation(c)) < 0.02


def test_poisson_ticks_only_when_a_trade_arrived_and_their_size_sums_the_trades() -> None:
    m = market(dt_seconds=0.1, arrivals=Arrivals.POISSON, trade_rate=2.0)
    ticks = run(m, 2000)
    share = len(ticks) / (2000 * len(m.symbols))
    assert share == pytest.approx(1 - np.exp(-0.2), rel=0.05)
    big = market(dt_seconds=1.0, arrivals=Arrivals.POISSON, trade_rate=20.0)
    sizes = np.array([t.size for t in run(big, 200)])
    per_trade = np.exp(3.9 + 0.5)  # the lognormal's mean: a tick of ~20 trades is ~20 times that
    assert sizes.mean() == pytest.approx(20 * per_trade, rel=0.1)


def test_hawkes_rate_is_base_over_one_minus_the_branching_ratio() -> None:
    m = market(dt_seconds=1.0, arrivals=Arrivals.HAWKES, trade_rate=2.0, hawkes_decay=1.0, hawkes_jump=0.5)
    c = counts(m, 5000)[500:]  # past the start-up transient
    assert c.mean() == pytest.approx(2.0 / (1 - 0.5), rel=0.05)


def test_hawkes_counts_are_over_dispersed_and_clustered_unlike_poisson() -> None:
    hawkes = counts(market(dt_seconds=1.0, arrivals=Arrivals.HAWKES, hawkes_decay=1.0, hawkes_jump=0.6), 4000)
    poisson = counts(market(dt_seconds=1.0, arrivals=Arrivals.POISSON, trade_rate=5.0), 4000)
    assert hawkes.var() / hawkes.mean() > 1.2  # ~1.3 in theory at this branching ratio and dt
    assert poisson.var() / poisson.mean() == pytest.approx(1.0, abs=0.05)
    assert lag1_autocorrelation(hawkes) > 0.15
    assert abs(lag1_autocorrelation(poisson)) < 0.03


def test_seasonality_puts_more_trades_at_the_open_and_close_than_mid_session() -> None:
    session = parse_session("09:30-16:00", "America/New_York")
    m = market(dt_seconds=1.0, arrivals=Arrivals.POISSON, trade_rate=1.0, seasonality=1.5, session=session)
    open_ = int(datetime(2026, 1, 5, 9, 30, tzinfo=NEW_YORK).timestamp()) * NS
    minutes = np.array([m.trade_counts(k, open_ + k * 60 * NS).sum() for k in range(390)])
    first, middle, last = minutes[:30].sum(), minutes[180:210].sum(), minutes[-30:].sum()
    assert first > 1.5 * middle
    assert last > 1.5 * middle
    # Mean 1 over the session: the day's trades are what a flat rate would give.
    assert minutes.mean() == pytest.approx(len(m.symbols) * 1.0, rel=0.05)


# --- sessions -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("month", "monday"), [(1, 5), (7, 6)], ids=["january", "july"])
def test_no_ticks_outside_the_session_or_at_weekends(month: int, monday: int) -> None:
    session = parse_session("09:30-16:00", "America/New_York")
    m = market(dt_seconds=60.0, session=session)  # every_step: each symbol ticks each open minute
    start = int(datetime(2026, month, monday - 2, tzinfo=UTC).timestamp()) * NS  # the Saturday before
    ticks = run(m, 9 * 24 * 60, ts0=start, ts_step=60 * NS)  # Saturday to the next Sunday, minutely
    local = [datetime.fromtimestamp(t.ts / NS, NEW_YORK) for t in ticks]
    assert all(d.weekday() < 5 and (9, 30) <= (d.hour, d.minute) < (16, 0) for d in local)
    per_symbol_day = 390  # 09:30 to 16:00, one tick a minute
    assert len(ticks) == 5 * per_symbol_day * len(m.symbols)
    first = datetime.fromtimestamp(ticks[0].ts / NS, UTC)
    assert (first.hour, first.minute) == ((14, 30) if month == 1 else (13, 30))  # EST / EDT
    # Overnight the engine kept stepping: the first tick of Tuesday is many steps after Monday's last.
    nova = [t for t in ticks if t.symbol == "NOVA"]
    jumps = [b.gseq - a.gseq for a, b in itertools.pairwise(nova)]
    assert max(jumps) == (24 * 60 - 390 + 1) * len(m.symbols)
    assert [t.seq for t in nova] == list(range(1, len(nova) + 1))


def test_seq_is_gap_free_per_symbol_with_irregular_arrivals() -> None:
    for arrivals in (Arrivals.POISSON, Arrivals.HAWKES):
        m = market(dt_seconds=0.5, arrivals=arrivals, trade_rate=1.0)
        ticks = run(m, 500)
        for symbol in m.symbols:
            seqs = [t.seq for t in ticks if t.symbol == symbol]
            assert seqs == list(range(1, len(seqs) + 1))
            assert 0 < len(seqs) < 500
        gseqs = [t.gseq for t in ticks]
        assert gseqs == sorted(set(gseqs))


# --- state -------------------------------------------------------------------------------------------
def settings_market(seed: int = 7) -> Market:
    session = parse_session("09:30-16:00", "America/New_York")
    trades = TradeModel(arrivals=Arrivals.HAWKES, trade_rate=1.0, seasonality=1.0, session=session)
    return Market(Simulator(dt=30.0 / SECONDS_PER_YEAR, seed=seed), trades=trades)


def test_a_restart_from_the_saved_state_continues_exactly() -> None:
    # Monday 15:00 New York, a step per 30 s: the run crosses the close, so the state carries on
    # through a closed market too.
    ts0 = int(datetime(2026, 7, 6, 15, 0, tzinfo=NEW_YORK).timestamp()) * NS
    straight = run(settings_market(), 200, ts0=ts0, ts_step=30 * NS)
    first = settings_market()
    before = run(first, 100, ts0=ts0, ts_step=30 * NS)
    saved = first.state().to_json()
    assert json.loads(saved)["market"]["ticks"]  # the tick layer's state travels with the engine's
    second = settings_market()
    second.restore(SimulatorState.from_json(saved))
    after = run(second, 100, ts0=ts0, ts_step=30 * NS)
    assert before + after == straight
    assert before
    assert after
    assert len(straight) < 200 * len(first.symbols)  # the market was closed part of the time


def test_a_state_saved_before_the_tick_layer_had_state_continues_the_numbering() -> None:
    m = market()
    run(m, 10)
    old = json.loads(m.state().to_json())
    del old["market"]
    again = market()
    again.restore(SimulatorState.from_json(json.dumps(old)))
    assert {t.seq for t in again.step(MONDAY_JAN).ticks} == {11}


def test_a_state_with_a_malformed_market_part_is_refused() -> None:
    m = market()
    bad = replace(m.state(), market={"ticks": [1, 2], "excitation": [0.0, 0.0]})
    with pytest.raises(ValueError, match="one value per asset"):
        m.restore(bad)


def test_a_scenario_keeps_the_tick_counters() -> None:
    m = market(dt_seconds=0.5, arrivals=Arrivals.POISSON, trade_rate=2.0)
    ticks = run(m, 100)
    apply_crash(m, Scenario(kind="crash", factor="market", size=-0.1))
    ticks += run(m, 100)
    seqs = [t.seq for t in ticks if t.symbol == "NOVA"]
    assert seqs == list(range(1, len(seqs) + 1))


# --- settings ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"arrivals": "hawkes", "hawkes_jump": 1.0, "hawkes_decay": 1.0}, "branching ratio"),
        ({"arrivals": "sometimes"}, "every_step"),
        ({"seasonality": 1.0}, "needs arrivals poisson or hawkes"),
        ({"arrivals": "poisson", "seasonality": 4.0}, "less than or equal to 3"),
        ({"session": "9-5"}, "HH:MM-HH:MM"),
        ({"session_tz": "Europe/Atlantis"}, "unknown time zone"),
    ],
)
def test_bad_trade_settings_are_refused_with_a_clear_message(
    settings: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(**settings)  # type: ignore[arg-type]


def test_settings_build_the_trade_model() -> None:
    s = Settings(arrivals=Arrivals.HAWKES, trade_rate=3.0, session="09:00-17:30", session_tz="Europe/London")
    m = s.trade_model
    assert (m.arrivals, m.trade_rate) == (Arrivals.HAWKES, 3.0)
    assert str(m.session) == "09:00-17:30 Europe/London Mon-Fri"
    assert Settings().trade_model == TradeModel()
