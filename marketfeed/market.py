"""From model prices to market ticks: quotes on a tick grid, a spread, a trade size, sequence numbers.

Everything here is a pure function of (seed, step), like the engine's random numbers, so a restarted
server that resumes the engine at step k emits the same ticks, with the same sequence numbers, that
it emitted the first time (only the wall-clock timestamps differ).
"""

from __future__ import annotations

import math
import time

import numpy as np

from marketfeed.engine import Simulator, SimulatorState
from marketfeed.ticks import Tick, TickBatch

#: Price grid of every symbol (one cent).
TICK_SIZE = 0.01


class Market:
    """Steps a simulator and dresses its prices as ticks. Blocking: call `step` off the event loop."""

    def __init__(self, simulator: Simulator, *, spread_bps: float = 2.0) -> None:
        self.sim = simulator
        self.spread_bps = spread_bps
        self.symbols = simulator.symbols
        self._n = len(self.symbols)

    @property
    def next_step(self) -> int:
        return self.sim.step_index

    def gseq(self, step: int, asset: int) -> int:
        """Global sequence number of asset `asset`'s tick in step `step` (1-based, unique)."""
        return step * self._n + asset + 1

    def step(self) -> TickBatch:
        step = self.sim.step_index
        out = self.sim.step(1)
        return self.ticks(step, out.prices, out.variances, time.time_ns())

    def ticks(self, step: int, prices: np.ndarray, variances: np.ndarray, ts: int) -> TickBatch:
        vol = np.sqrt(np.maximum(variances, 0.0))
        # Spread widens with volatility: a floor in basis points, doubled at 40 % annualised vol.
        half = prices * (self.spread_bps * 0.5e-4) * (1.0 + vol / 0.4)
        bid = np.floor((prices - half) / TICK_SIZE) * TICK_SIZE
        ask = np.maximum(np.ceil((prices + half) / TICK_SIZE) * TICK_SIZE, bid + TICK_SIZE)
        last = np.clip(np.round(prices / TICK_SIZE) * TICK_SIZE, bid, ask)
        # Trade sizes: lognormal around ~50 shares, drawn from a generator keyed by (seed, step).
        rng = np.random.default_rng([self.sim.seed, step, 0x7369_7A65])
        size = np.maximum(1, np.rint(rng.lognormal(mean=3.9, sigma=1.0, size=self._n))).astype(np.int64)
        ticks = [
            Tick(
                symbol=sym,
                seq=step + 1,
                gseq=step * self._n + i + 1,
                ts=ts,
                price=round(float(last[i]), 2),
                bid=round(float(bid[i]), 2),
                ask=round(float(ask[i]), 2),
                size=int(size[i]),
                vol=round(float(vol[i]), 6),
            )
            for i, sym in enumerate(self.symbols)
        ]
        return TickBatch(step=step, ticks=ticks)

    def state(self) -> SimulatorState:
        return self.sim.state()

    def restore(self, state: SimulatorState) -> None:
        self.sim.restore(state)

    def replace_simulator(self, simulator: Simulator) -> None:
        """Carry on with another simulator (new model parameters) from this one's state."""
        if simulator.symbols != self.symbols:
            raise ValueError("replace_simulator: the new simulator must have the same symbols")
        simulator.restore(self.sim.state())
        self.sim = simulator

    def step_of_gseq(self, gseq: int) -> int:
        return max(0, math.ceil(gseq / self._n) - 1)
