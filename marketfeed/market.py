"""From model prices to market ticks: quotes on a tick grid, a spread, trade arrivals and sizes, sequence
numbers, trading sessions.

Random numbers are keyed by (seed, step), like the engine's, and the little state the tick layer keeps
(each symbol's tick count, the Hawkes excitation) is saved with the engine state, so a restarted server
that resumes at step k emits the same ticks, with the same sequence numbers, that it emitted the first
time (only the wall-clock timestamps differ, and with them what the session calendar says).
"""

from __future__ import annotations

import dataclasses
import math
import time
from enum import StrEnum
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import orjson

from marketfeed._engine import TickMaker, untrack_ticks
from marketfeed.calendar import ALWAYS, Session, parse_session, seasonal_factor, session_fraction
from marketfeed.engine import SECONDS_PER_YEAR, Simulator, SimulatorState
from marketfeed.ticks import Tick, TickBatch, iso_time

#: Price grid of every symbol (one cent).
TICK_SIZE = 0.01

# Constants that key the (seed, step) random generators, one per use, so the streams never overlap.
_SIZES_KEY = 0x7369_7A65  # "size"
_ARRIVALS_KEY = 0x6172_7276  # "arrv"

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


class Arrivals(StrEnum):
    """How trades arrive."""

    EVERY_STEP = "every_step"  #: each symbol trades once per engine step (the classic feed)
    POISSON = "poisson"  #: a Poisson number of trades per step at `trade_rate` per simulated second
    HAWKES = "hawkes"  #: self-exciting: each trade raises the rate for a while (clustered trading)


@dataclasses.dataclass(frozen=True, slots=True)
class TradeModel:
    """When and how much trades: the tick layer's settings (see `Settings` for their meaning)."""

    arrivals: Arrivals = Arrivals.EVERY_STEP
    trade_rate: float = 2.0  #: base trades per simulated second per symbol
    hawkes_decay: float = 1.0  #: per simulated second
    hawkes_jump: float = 0.5  #: intensity added per trade (trades per second)
    seasonality: float = 0.0  #: amplitude of the U-shaped intraday rate, 0 = flat, at most 3
    session: Session = dataclasses.field(default_factory=lambda: parse_session(ALWAYS))

    def __post_init__(self) -> None:
        check_trade_model(self)

    @property
    def branching_ratio(self) -> float:
        return self.hawkes_jump / self.hawkes_decay


def check_trade_model(m: TradeModel) -> None:
    """Raise ValueError, naming the setting, for values the arrival process cannot run with."""
    for name in ("trade_rate", "hawkes_decay"):
        value = getattr(m, name)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0 (got {value!r})")
    if not (math.isfinite(m.hawkes_jump) and m.hawkes_jump >= 0):
        raise ValueError(f"hawkes_jump must be a finite number >= 0 (got {m.hawkes_jump!r})")
    if m.branching_ratio >= 1:
        raise ValueError(
            "hawkes_jump / hawkes_decay (the branching ratio: trades each trade triggers on average) must "
            f"be < 1, or the trade rate explodes (got {m.hawkes_jump:g} / {m.hawkes_decay:g} = "
            f"{m.branching_ratio:g})"
        )
    if not (math.isfinite(m.seasonality) and 0 <= m.seasonality <= 3):
        raise ValueError(f"seasonality must lie between 0 (flat) and 3 (got {m.seasonality!r})")
    if m.seasonality > 0 and m.arrivals is Arrivals.EVERY_STEP:
        raise ValueError("seasonality shapes trade arrival rates: it needs arrivals poisson or hawkes")


class Market:
    """Steps a simulator and dresses its prices as ticks. Blocking: call `step` off the event loop."""

    def __init__(
        self, simulator: Simulator, *, spread_bps: float = 2.0, trades: TradeModel | None = None
    ) -> None:
        self.sim = simulator
        self.spread_bps = spread_bps
        self.trades = trades if trades is not None else TradeModel()
        self.symbols = simulator.symbols
        self._n = len(self.symbols)
        self._dt_seconds = simulator.dt * SECONDS_PER_YEAR
        # Ticks emitted so far per symbol (the last seq): every step ticked before a state knew this.
        self._counts: IntArray = np.full(self._n, simulator.step_index, dtype=np.int64)
        self._excitation: FloatArray = np.zeros(self._n)
        self._maker = TickMaker(Tick, list(self.symbols), [orjson.dumps(s).decode() for s in self.symbols])

    @property
    def next_step(self) -> int:
        return self.sim.step_index

    def gseq(self, step: int, asset: int) -> int:
        """Global sequence number of asset `asset`'s tick in step `step` (1-based, unique)."""
        return step * self._n + asset + 1

    def step(self, ts: int | None = None) -> TickBatch:
        """One engine step as ticks stamped `ts` (default: now), which also decides the session."""
        step = self.sim.step_index
        out = self.sim.step(1)
        return self.ticks(step, out.prices, out.variances, time.time_ns() if ts is None else ts)

    def ticks(self, step: int, prices: np.ndarray, variances: np.ndarray, ts: int) -> TickBatch:
        """The ticks of step `step`. Advances the tick counters: call once per step, in order."""
        counts = self.trade_counts(step, ts)
        vol = np.sqrt(np.maximum(variances, 0.0))
        # Spread widens with volatility: a floor in basis points, doubled at 40 % annualised vol.
        half = prices * (self.spread_bps * 0.5e-4) * (1.0 + vol / 0.4)
        bid = np.floor((prices - half) / TICK_SIZE) * TICK_SIZE
        ask = np.maximum(np.ceil((prices + half) / TICK_SIZE) * TICK_SIZE, bid + TICK_SIZE)
        last = np.clip(np.round(prices / TICK_SIZE) * TICK_SIZE, bid, ask)
        size = self._sizes(step, counts)
        seq = self._counts + 1
        self._counts += counts > 0
        # The ticks and their JSON are made from the columns of the symbols that trade in C++
        # (TickMaker): nine lists zipped into named tuples, a dict and orjson.dumps per tick cost
        # 2-4 us a tick. Prices are whole cents / 100, the doubles round(price, 2) gives.
        idx = np.flatnonzero(counts)
        gseq = idx + (step * self._n + 1)
        last_c, bid_c, ask_c = (np.rint(a[idx] / TICK_SIZE) for a in (last, bid, ask))
        made, encoded, left = self._maker.make(
            idx, seq[idx], gseq, ts, iso_time(ts), last_c, bid_c, ask_c, size[idx], vol[idx]
        )
        ticks = cast(list[Tick], made)
        for i in left:  # outside what the C++ writer covers (never within the cent grid's range)
            ticks[i] = ticks[i]._replace(vol=round(float(vol[idx[i]]), 6))
            encoded[i] = ticks[i].to_json()
        # Tuples, untracked by the cyclic collector (untrack_ticks; CPython untracks the tuple of bytes
        # itself), so that the batches a server keeps cost its full collections nothing per tick.
        frozen = tuple(ticks)
        untrack_ticks(frozen)
        return TickBatch(step=step, ticks=frozen, encoded=tuple(encoded))

    # --- trade arrivals ----------------------------------------------------------------------------
    def trade_counts(self, step: int, ts: int) -> IntArray:
        """Trades per symbol in step `step` at `ts`: 0 (no tick), or how many trades its tick sums up.

        Advances the Hawkes excitation: `ticks` calls it once per step, in order.
        """
        m = self.trades
        fraction = session_fraction(m.session, ts)
        if m.arrivals is Arrivals.EVERY_STEP:
            return np.full(self._n, 0 if fraction is None else 1, dtype=np.int64)
        season = 0.0 if fraction is None else seasonal_factor(fraction, m.seasonality)
        rate = m.trade_rate * season + (self._excitation if m.arrivals is Arrivals.HAWKES else 0.0)
        rng = np.random.default_rng([self.sim.seed, step, _ARRIVALS_KEY])
        counts = rng.poisson(np.broadcast_to(rate * self._dt_seconds, (self._n,))).astype(np.int64)
        if fraction is None:
            counts[:] = 0  # closed: the excitation still decays overnight, but nobody trades
        if m.arrivals is Arrivals.HAWKES:
            self._excite(counts)
        return counts

    def _excite(self, counts: IntArray) -> None:
        # Discrete-time Hawkes: the intensity is held over a step and decays by `keep` per step. Each
        # trade's jump is scaled by (1 - keep) / (decay * dt) so that the total intensity it adds over
        # all later steps, sum_k jump * c * keep^k * dt, is exactly jump / decay trades, as in
        # continuous time: the stationary rate is then base / (1 - jump / decay) for any dt.
        m = self.trades
        keep = math.exp(-m.hawkes_decay * self._dt_seconds)
        scale = (1.0 - keep) / (m.hawkes_decay * self._dt_seconds)
        self._excitation = self._excitation * keep + m.hawkes_jump * scale * counts

    def _sizes(self, step: int, counts: IntArray) -> IntArray:
        """Each tick's size: the total of its trades' lognormal sizes (around ~50 shares each)."""
        rng = np.random.default_rng([self.sim.seed, step, _SIZES_KEY])
        if self.trades.arrivals is Arrivals.EVERY_STEP:
            # One draw per symbol even when closed, so the classic feed's sizes are what they were.
            return np.maximum(1, np.rint(rng.lognormal(mean=3.9, sigma=1.0, size=self._n))).astype(np.int64)
        each = np.maximum(1, np.rint(rng.lognormal(mean=3.9, sigma=1.0, size=int(counts.sum()))))
        owner = np.repeat(np.arange(self._n), counts)
        return np.bincount(owner, weights=each, minlength=self._n).astype(np.int64)

    # --- state -------------------------------------------------------------------------------------
    def state(self) -> SimulatorState:
        market: dict[str, Any] = {"ticks": self._counts.tolist(), "excitation": self._excitation.tolist()}
        return dataclasses.replace(self.sim.state(), market=market)

    def restore(self, state: SimulatorState) -> None:
        """Continue from a saved state; one saved before the tick layer had state continues the
        classic feed's numbering (every symbol ticked every step)."""
        counts, excitation = self._read_market_state(state)
        self.sim.restore(state)
        self._counts, self._excitation = counts, excitation

    def _read_market_state(self, state: SimulatorState) -> tuple[IntArray, FloatArray]:
        saved = state.market or {}
        counts = np.asarray(saved.get("ticks", [state.step] * self._n), dtype=np.int64)
        excitation = np.asarray(saved.get("excitation", [0.0] * self._n), dtype=np.float64)
        if counts.shape != (self._n,) or excitation.shape != (self._n,):
            raise ValueError("state: the market's tick counts and excitation need one value per asset")
        if (counts < 0).any() or not np.isfinite(excitation).all() or (excitation < 0).any():
            raise ValueError("state: tick counts and excitation must be >= 0")
        return counts, excitation

    def replace_simulator(self, simulator: Simulator) -> None:
        """Carry on with another simulator (new model parameters) from this one's state."""
        if simulator.symbols != self.symbols:
            raise ValueError("replace_simulator: the new simulator must have the same symbols")
        simulator.restore(self.sim.state())
        self.sim = simulator

    def step_of_gseq(self, gseq: int) -> int:
        return max(0, math.ceil(gseq / self._n) - 1)
