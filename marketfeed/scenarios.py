"""Scenarios injected into the running market (admin endpoints).

A crash edits the simulator's state once (the factor's log-return lands on every asset through its
beta). A volatility spike and a correlation breakdown are overlays that fade with a half-life in
simulated time: the book of active scenarios computes the engine's overlay before every step, and
the model's own variance and correlation are never edited, so a faded scenario leaves the market
exactly as the model would have it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from marketfeed.engine import FloatArray, Universe
from marketfeed.market import Market

Kind = Literal["crash", "vol_spike", "correlation"]
KINDS: tuple[Kind, ...] = ("crash", "vol_spike", "correlation")

#: A scenario whose remaining effect is below this (0.1 %) is dropped: its overlay is then exact again.
EXPIRED = 1e-3

DEFAULT_HALF_LIFE = 300.0


@dataclass(frozen=True)
class Scenario:
    kind: Kind
    factor: str | None = None  #: crash: the factor that falls
    size: float = 0.0  #: crash: the factor's log-return, e.g. -0.1 (each asset moves by beta times it)
    multiplier: float = 1.0  #: vol_spike (and optionally crash): prices see this times the variance
    correlation: float | None = None  #: correlation: every pair of factors starts at this value
    half_life: float = DEFAULT_HALF_LIFE  #: simulated seconds for the overlay's effect to halve

    @property
    def has_overlay(self) -> bool:
        return self.kind == "correlation" or self.multiplier != 1.0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        if self.kind == "crash":
            out |= {"factor": self.factor, "size": self.size}
        if self.kind == "correlation":
            out["correlation"] = self.correlation
        if self.multiplier != 1.0 or self.kind == "vol_spike":
            out["multiplier"] = self.multiplier
        if self.has_overlay:
            out["half_life"] = self.half_life
        return out


def validate(s: Scenario, factors: list[str]) -> None:
    """Raise ValueError naming the first bad field."""
    if s.kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)} (got {s.kind!r})")
    if not (math.isfinite(s.half_life) and 0 < s.half_life <= 1e9):
        raise ValueError(f"half_life must be > 0 simulated seconds (got {s.half_life!r})")
    if not (math.isfinite(s.multiplier) and 0.01 <= s.multiplier <= 100):
        raise ValueError(f"multiplier must lie between 0.01 and 100 (got {s.multiplier!r})")
    if s.kind == "crash":
        if s.factor not in factors:
            raise ValueError(f"factor must be one of {factors} (got {s.factor!r})")
        if not (math.isfinite(s.size) and -3.0 <= s.size <= 3.0):
            raise ValueError(f"size must be a log-return between -3 and 3 (got {s.size!r})")
    elif s.kind == "correlation":
        _validate_target(s.correlation, len(factors))


def _validate_target(c: float | None, k: int) -> None:
    if k < 2:
        raise ValueError("correlation: the universe has a single factor, there is no pair to correlate")
    # Equal off-diagonals c form a valid correlation matrix only for c >= -1/(K-1).
    lowest = -1.0 / (k - 1)
    if c is None or not (math.isfinite(c) and lowest <= c < 1.0):
        raise ValueError(
            f"correlation must lie in [{lowest:.4g}, 1) for {k} factors, the value every pair of "
            f"factors moves to (got {c!r})"
        )


def apply_crash(market: Market, s: Scenario) -> None:
    """The instantaneous part of a crash: every log-price moves by its beta times the factor's move."""
    state = market.state()
    universe = market.sim.universe
    k = universe.factors.index(s.factor or "")
    moved = [x + a.betas[k] * s.size for x, a in zip(state.log_prices, universe.assets, strict=True)]
    # replace() keeps every other field, including any the state gains later.
    market.restore(dataclasses.replace(state, log_prices=moved))


#: What PATCH /admin/params may change per asset; s0 and v0 are initial values, the state has moved on.
ASSET_PARAMS = frozenset(
    {"mu", "kappa", "theta", "xi", "rho", "jump_intensity", "jump_mean", "jump_std", "betas", "idio_vol"}
)


def changed_universe(
    universe: Universe, assets: dict[str, dict[str, Any]], correlation: list[list[float]] | None
) -> Universe:
    """`universe` with some assets' parameters and/or the factor correlation replaced, validated
    (ValueError naming the symbol and parameter)."""
    for symbol, change in assets.items():
        extra = sorted(set(change) - ASSET_PARAMS)
        if extra:
            raise ValueError(f"{symbol}: cannot change {', '.join(extra)}; only {sorted(ASSET_PARAMS)}")
    new_assets = tuple(
        dataclasses.replace(a, **_typed(assets[a.symbol])) if a.symbol in assets else a
        for a in universe.assets
    )
    corr = universe.correlation if correlation is None else tuple(tuple(r) for r in correlation)
    out = dataclasses.replace(universe, assets=new_assets, correlation=corr)
    out.validate()
    return out


def _typed(change: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if k == "betas" else float(v) for k, v in change.items()}


@dataclass
class Active:
    """A scenario whose overlay is in force since step `start_step`."""

    id: int
    scenario: Scenario
    start_step: int

    def weight(self, step: int, dt_seconds: float) -> float:
        """2^(-t / half_life), t the simulated time from the injection to step `step`."""
        t = max(0, step - self.start_step) * dt_seconds
        return float(2.0 ** (-t / self.scenario.half_life))


@dataclass
class Overlay:
    var_scale: float = 1.0
    correlation: FloatArray | None = None

    @property
    def neutral(self) -> bool:
        return self.var_scale == 1.0 and self.correlation is None


def target_matrix(c: float, k: int) -> FloatArray:
    out = np.full((k, k), c, dtype=np.float64)
    np.fill_diagonal(out, 1.0)
    return out


@dataclass
class ScenarioBook:
    """The active overlays. Owned by the engine thread: only `_step` mutates it."""

    dt_seconds: float
    active: list[Active] = field(default_factory=list)
    _next_id: int = 1

    def add(self, s: Scenario, step: int) -> int:
        ident = self._next_id
        self._next_id += 1
        if s.has_overlay:
            self.active.append(Active(ident, s, step))
        return ident

    def clear(self) -> int:
        n = len(self.active)
        self.active = []
        return n

    def to_dict(self) -> dict[str, Any]:
        """What `restore` needs to carry on after a restart: the active overlays and the next id."""
        active = [
            {"id": a.id, "at_step": a.start_step, "scenario": a.scenario.to_dict()} for a in self.active
        ]
        return {"next_id": self._next_id, "active": active}

    def restore(self, saved: Mapping[str, Any]) -> None:
        """Carry on from `to_dict`'s output (ValueError if it is not that)."""
        try:
            active = [
                Active(int(a["id"]), Scenario(**a["scenario"]), int(a["at_step"])) for a in saved["active"]
            ]
            self._next_id, self.active = int(saved["next_id"]), active
        except (KeyError, TypeError) as exc:
            raise ValueError(f"invalid saved scenarios: {exc!r}") from exc

    @property
    def used(self) -> bool:
        """Whether any scenario was ever added (its ids must then go on after a restart)."""
        return self._next_id > 1

    def overlay(self, step: int, model: FloatArray) -> Overlay:
        """The overlay for step `step` against the model's factor correlation `model`; drops what has
        faded below `EXPIRED`. Vol multipliers multiply; the newest correlation scenario wins."""
        self.active = [a for a in self.active if _effect(a, step, self.dt_seconds, model) >= EXPIRED]
        out = Overlay()
        for a in self.active:
            w = a.weight(step, self.dt_seconds)
            out.var_scale *= 1.0 + (a.scenario.multiplier - 1.0) * w
            if a.scenario.kind == "correlation" and a.scenario.correlation is not None:
                target = target_matrix(a.scenario.correlation, len(model))
                out.correlation = w * target + (1.0 - w) * model
        return out

    def report(self, step: int) -> list[dict[str, Any]]:
        """The active scenarios with their remaining strength (1 at injection, 0.5 one half-life on)."""
        out = []
        for a in self.active:
            w = a.weight(step, self.dt_seconds)
            item: dict[str, Any] = {"id": a.id, **a.scenario.to_dict(), "at_step": a.start_step}
            item["strength"] = round(w, 6)
            if a.scenario.multiplier != 1.0:
                item["var_scale"] = round(1.0 + (a.scenario.multiplier - 1.0) * w, 6)
            out.append(item)
        return out


def _effect(a: Active, step: int, dt_seconds: float, model: FloatArray) -> float:
    """How far the scenario still moves the market: relative variance change, or the largest
    correlation change."""
    w = a.weight(step, dt_seconds)
    effect = abs(a.scenario.multiplier - 1.0) * w
    if a.scenario.kind == "correlation" and a.scenario.correlation is not None:
        target = target_matrix(a.scenario.correlation, len(model))
        effect = max(effect, w * float(np.abs(target - model).max()))
    return effect
