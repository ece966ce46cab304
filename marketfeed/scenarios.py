"""Scenarios injected into the running market (admin endpoints): a crash on a factor, a volatility
spike. Applied between two engine steps by editing the simulator's state, so the model then carries
on from the shocked state with its own dynamics."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from marketfeed.market import Market


@dataclass(frozen=True)
class Scenario:
    kind: Literal["crash", "vol_spike"]
    factor: str | None = None  #: crash: the factor that falls
    size: float = 0.0  #: crash: the factor's log-return, e.g. -0.1 (each asset moves by beta times it)
    multiplier: float = 1.0  #: vol_spike: variances are multiplied by this

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def validate(s: Scenario, factors: list[str]) -> None:
    if s.kind == "crash":
        if s.factor not in factors:
            raise ValueError(f"factor must be one of {factors} (got {s.factor!r})")
        if not (math.isfinite(s.size) and -3.0 <= s.size <= 3.0):
            raise ValueError("size must be a log-return between -3 and 3")
    elif s.kind == "vol_spike":
        if not (math.isfinite(s.multiplier) and 0.01 <= s.multiplier <= 100):
            raise ValueError("multiplier must lie between 0.01 and 100")
    else:
        raise ValueError("kind must be crash or vol_spike")


def apply_scenario(market: Market, s: Scenario) -> None:
    state = market.state()
    universe = market.sim.universe
    log_prices, variances = list(state.log_prices), list(state.variances)
    if s.kind == "crash":
        k = universe.factors.index(s.factor or "")
        log_prices = [x + a.betas[k] * s.size for x, a in zip(log_prices, universe.assets, strict=True)]
    else:
        variances = [v * s.multiplier for v in variances]
    # replace(), not a new state: the regime and the tick layer's counters must carry on unchanged.
    market.restore(replace(state, log_prices=log_prices, variances=variances))
