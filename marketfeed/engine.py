"""The simulation engine's Python face: a typed universe, validation, and the `Simulator`.

The maths lives in C++ (`marketfeed._engine`); this module turns a readable configuration into the
arrays the kernel wants, checks every parameter with a message that names it, and hands results back
as NumPy arrays the kernel wrote into directly.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from marketfeed import _engine

FloatArray = npt.NDArray[np.float64]

#: Seconds in a simulated year: time in the models is in years (volatilities are annualised) and the
#: market is open around the clock by default.
SECONDS_PER_YEAR = 365.0 * 24.0 * 3600.0


class Scheme(StrEnum):
    """Discretisation of the Heston variance."""

    QE = "qe"  #: Andersen's quadratic-exponential scheme with martingale correction (default).
    EULER = "euler"  #: Full-truncation Euler (Lord, Koekkoek and van Dijk): cheap, biased at large dt.
    #: Abi Jaber's lifted Heston: rough volatility through a sum of fast and slow variance factors.
    #: Chosen automatically when an asset has hurst < 0.5.
    LIFTED = "lifted"


class FellerConditionWarning(UserWarning):
    """2 kappa theta < xi^2: the variance can touch zero. Allowed (real markets calibrate there)."""


@dataclass(frozen=True, slots=True)
class Asset:
    """One simulated instrument: Heston parameters, factor betas and optional Merton jumps."""

    symbol: str
    s0: float  #: initial price
    mu: float  #: drift per year: E[S_t] = S_0 exp(mu t)
    v0: float  #: initial variance (annualised; volatility = sqrt(v))
    kappa: float  #: mean-reversion speed of the variance
    theta: float  #: long-run variance
    xi: float  #: volatility of variance
    rho: float  #: correlation between the price driver and the variance shock (leverage when < 0)
    betas: tuple[float, ...]  #: exposure to each market factor
    idio_vol: float  #: weight of the idiosyncratic shock, in the same units as the betas
    name: str = ""
    sector: str = ""
    jump_intensity: float = 0.0  #: jumps per year (Bates); used only when the simulator enables jumps
    jump_mean: float = 0.0  #: mean of ln(1 + J)
    jump_std: float = 0.0  #: standard deviation of ln(1 + J)
    #: Hurst exponent of the variance: 0.5 is classical Heston; below 0.5 the variance is rough
    #: (rough Heston, El Euch and Rosenbaum's convention: the kernel t^(H-1/2) / Gamma(H+1/2) multiplies
    #: both kappa (theta - v) and xi sqrt(v)), simulated by the lifted scheme. Realised volatility
    #: data suggest H near 0.1.
    hurst: float = 0.5

    @property
    def rough(self) -> bool:
        return self.hurst < 0.5

    @property
    def feller(self) -> bool:
        """Whether 2 kappa theta >= xi^2 (the variance then stays strictly positive)."""
        return 2.0 * self.kappa * self.theta >= self.xi * self.xi


@dataclass(frozen=True, slots=True)
class Regime:
    """A market regime: factor volatility scaled by `vol_scale`, factors correlated by `correlation`
    (the universe's own when None). Regimes switch as a continuous-time Markov chain."""

    name: str
    vol_scale: float = 1.0
    correlation: tuple[tuple[float, ...], ...] | None = None


@dataclass(frozen=True, slots=True)
class Universe:
    """Market factors with their correlation matrix, and the assets that load on them.

    Optional regimes (e.g. calm and stressed): `regime_rates[i][j]` is the rate per year of switching
    from regime i to regime j (the diagonal is ignored); the market starts in the first regime.
    """

    factors: tuple[str, ...]
    correlation: tuple[tuple[float, ...], ...]
    assets: tuple[Asset, ...]
    regimes: tuple[Regime, ...] = ()
    regime_rates: tuple[tuple[float, ...], ...] = ()

    def regime_switch(self, dt: float) -> FloatArray:
        """Per-step transition probabilities exp(Q dt) of the regime chain (identity without regimes)."""
        r = max(1, len(self.regimes))
        if not self.regimes:
            return np.eye(1)
        q = np.array(self.regime_rates, dtype=np.float64).reshape(r, r)
        np.fill_diagonal(q, 0.0)
        np.fill_diagonal(q, -q.sum(axis=1))
        # exp(Q dt) by scaling and squaring a Taylor series: Q dt is tiny for real-time steps.
        a = q * dt
        squarings = max(0, int(np.ceil(np.log2(max(np.abs(a).sum(axis=1).max(), 1e-300)))) + 1)
        a = a / 2**squarings
        term, out = np.eye(r), np.eye(r)
        for k in range(1, 12):
            term = term @ a / k
            out = out + term
        for _ in range(squarings):
            out = out @ out
        out = np.clip(out, 0.0, None)
        result: FloatArray = out / out.sum(axis=1, keepdims=True)
        return result

    def regime_correlations(self) -> list[FloatArray]:
        base = self.correlation_matrix()
        if not self.regimes:
            return [base]
        k = len(self.factors)
        return [
            base if g.correlation is None else np.array(g.correlation, dtype=np.float64).reshape(k, k)
            for g in self.regimes
        ]

    @property
    def symbols(self) -> list[str]:
        return [a.symbol for a in self.assets]

    def with_hurst(self, hurst: float) -> Universe:
        """The same universe with every asset's Hurst exponent set to `hurst`."""
        return dataclasses.replace(
            self, assets=tuple(dataclasses.replace(a, hurst=hurst) for a in self.assets)
        )

    def __getitem__(self, symbol: str) -> Asset:
        for a in self.assets:
            if a.symbol == symbol:
                return a
        raise KeyError(symbol)

    @classmethod
    def default(cls) -> Universe:
        """Twenty fictitious symbols across six sectors, four factors (market, growth, value, energy)."""
        return _default_universe()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Universe:
        """Build from the JSON shape `to_dict` produces; missing keys raise ValueError naming them."""
        try:
            factors = tuple(str(f) for f in data["factors"])
            corr = tuple(tuple(float(x) for x in row) for row in data["correlation"])
            assets = tuple(
                Asset(**{**a, "betas": tuple(float(b) for b in a["betas"])}) for a in data["assets"]
            )
            regimes = tuple(
                Regime(
                    name=str(g["name"]),
                    vol_scale=float(g.get("vol_scale", 1.0)),
                    correlation=tuple(tuple(float(x) for x in row) for row in g["correlation"])
                    if g.get("correlation") is not None
                    else None,
                )
                for g in data.get("regimes", [])
            )
            rates = tuple(tuple(float(x) for x in row) for row in data.get("regime_rates", []))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"invalid universe definition: {exc}") from exc
        return cls(factors=factors, correlation=corr, assets=assets, regimes=regimes, regime_rates=rates)

    @classmethod
    def from_json(cls, path: str | Path) -> Universe:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read universe file {path}: {exc}") from exc
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return {
            "factors": list(self.factors),
            "correlation": [list(r) for r in self.correlation],
            "assets": [{**asdict(a), "betas": list(a.betas)} for a in self.assets],
            **(
                {
                    "regimes": [asdict(g) for g in self.regimes],
                    "regime_rates": [list(r) for r in self.regime_rates],
                }
                if self.regimes
                else {}
            ),
        }

    def correlation_matrix(self) -> FloatArray:
        return np.array(self.correlation, dtype=np.float64).reshape(len(self.factors), len(self.factors))

    def driver_loadings(self) -> tuple[FloatArray, FloatArray]:
        """Betas and idiosyncratic weights scaled so each asset's price driver has unit variance."""
        betas = np.array([a.betas for a in self.assets], dtype=np.float64).reshape(
            len(self.assets), len(self.factors)
        )
        idio = np.array([a.idio_vol for a in self.assets], dtype=np.float64)
        c = self.correlation_matrix()
        total = np.einsum("ik,kl,il->i", betas, c, betas) + idio**2
        scale = 1.0 / np.sqrt(total)
        return betas * scale[:, None], idio * scale

    def implied_correlation(self) -> FloatArray:
        """corr(W_i, W_j) of the price drivers, the factor model's cross-asset correlation."""
        a, _ = self.driver_loadings()
        out: FloatArray = a @ self.correlation_matrix() @ a.T
        np.fill_diagonal(out, 1.0)
        return out

    def _validate_regimes(self, k: int) -> None:
        if not self.regimes:
            if self.regime_rates:
                raise ValueError("regime_rates: given without regimes")
            return
        r = len(self.regimes)
        if len(self.regime_rates) != r or any(len(row) != r for row in self.regime_rates):
            raise ValueError(f"regime_rates: must be a {r}x{r} matrix (one row and column per regime)")
        for i, row in enumerate(self.regime_rates):
            for j, rate in enumerate(row):
                if i != j and not (math.isfinite(rate) and rate >= 0):
                    raise ValueError(f"regime_rates: rates must be finite and >= 0 (got {rate!r})")
        for g in self.regimes:
            if not (math.isfinite(g.vol_scale) and g.vol_scale > 0):
                raise ValueError(f"regime {g.name}: vol_scale must be > 0 (got {g.vol_scale!r})")
            if g.correlation is not None:
                if len(g.correlation) != k or any(len(row) != k for row in g.correlation):
                    raise ValueError(f"regime {g.name}: correlation must be a {k}x{k} matrix")
                _validate_correlation(
                    np.array(g.correlation, dtype=np.float64), f"regime {g.name}: correlation"
                )

    def validate(self) -> None:
        """Raise ValueError naming the first bad parameter; warn on Feller violations."""
        k = len(self.factors)
        if k == 0:
            raise ValueError("factors: at least one market factor is required")
        if not self.assets:
            raise ValueError("assets: the universe is empty")
        if len(self.correlation) != k or any(len(r) != k for r in self.correlation):
            raise ValueError(f"correlation: must be a {k}x{k} matrix (one row and column per factor)")
        _validate_correlation(self.correlation_matrix(), "correlation")
        self._validate_regimes(k)
        seen: set[str] = set()
        for a in self.assets:
            _validate_asset(a, k)
            if a.symbol in seen:
                raise ValueError(f"symbol: {a.symbol!r} appears twice")
            seen.add(a.symbol)
        for a in self.assets:
            if not a.feller:
                warnings.warn(
                    f"{a.symbol}: Feller condition 2*kappa*theta >= xi^2 violated "
                    f"({2 * a.kappa * a.theta:.4g} < {a.xi**2:.4g}); the variance can reach zero",
                    FellerConditionWarning,
                    stacklevel=3,
                )


def _validate_correlation(c: FloatArray, name: str) -> None:
    if not np.all(np.isfinite(c)):
        raise ValueError(f"{name}: entries must be finite")
    if not np.allclose(c, c.T, atol=1e-12):
        raise ValueError(f"{name}: must be symmetric")
    if not np.allclose(np.diag(c), 1.0, atol=1e-12):
        raise ValueError(f"{name}: diagonal entries must be 1")
    if np.any(np.abs(c) > 1.0 + 1e-12):
        raise ValueError(f"{name}: entries must lie in [-1, 1]")
    if float(np.linalg.eigvalsh(c).min()) < -1e-10:
        raise ValueError(f"{name}: must be positive semi-definite")


def _validate_asset(a: Asset, n_factors: int) -> None:
    def bad(name: str, rule: str, value: object) -> ValueError:
        return ValueError(f"{a.symbol}: {name} must be {rule} (got {value!r})")

    if not a.symbol or not a.symbol.replace(".", "").replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"symbol: {a.symbol!r} must be non-empty letters, digits, '.', '-' or '_'")
    for name in ("s0", "v0", "kappa", "theta", "xi"):
        value = getattr(a, name)
        if not (math.isfinite(value) and value > 0):
            raise bad(name, "> 0", value)
    for name in ("mu", "jump_mean"):
        value = getattr(a, name)
        if not math.isfinite(value):
            raise bad(name, "finite", value)
    if not (math.isfinite(a.hurst) and 0.0 < a.hurst <= 0.5):
        raise bad("hurst", "in (0, 0.5]", a.hurst)
    if not (math.isfinite(a.rho) and abs(a.rho) <= 1.0):
        raise bad("rho", "in [-1, 1]", a.rho)
    if len(a.betas) != n_factors:
        raise bad("betas", f"{n_factors} values, one per factor", a.betas)
    if not all(math.isfinite(b) for b in a.betas):
        raise bad("betas", "finite", a.betas)
    if not (math.isfinite(a.idio_vol) and a.idio_vol >= 0):
        raise bad("idio_vol", ">= 0", a.idio_vol)
    if a.idio_vol == 0 and not any(a.betas):
        raise bad("betas/idio_vol", "not all zero (the price driver needs some variance)", a.betas)
    for name in ("jump_intensity", "jump_std"):
        value = getattr(a, name)
        if not (math.isfinite(value) and value >= 0):
            raise bad(name, ">= 0", value)


@dataclass(frozen=True, slots=True)
class Step:
    """The state after `Simulator.step(n)`: arrays of shape (n_assets,)."""

    step: int  #: index of the next step to be simulated (steps taken so far)
    prices: FloatArray
    variances: FloatArray
    log_returns: FloatArray  #: ln(S_after / S_before) over the n steps


@dataclass(frozen=True, slots=True)
class Paths:
    """`Simulator.paths(n)`: arrays of shape (n, n_assets), one row per step."""

    prices: FloatArray
    variances: FloatArray
    log_returns: FloatArray


@dataclass(frozen=True, slots=True)
class SimulatorState:
    """Everything needed to continue a path exactly where it stopped (JSON-serialisable)."""

    step: int
    log_prices: list[float]
    variances: list[float]
    factor_levels: list[float]
    seed: int
    scheme: str
    dt: float
    symbols: list[str] = field(default_factory=list)
    regime: int = 0  #: index of the current market regime (0 without regimes)
    lift_factors: list[float] = field(default_factory=list)  #: lifted scheme: U_l of every asset, L x N
    #: The tick layer's own state (`Market.state`: tick counts, trade-arrival excitation), saved and
    #: restored with the path it belongs to; the Simulator ignores it.
    market: dict[str, Any] = field(default_factory=dict)
    #: The server's controls in force (parameters changed over /admin/params, active scenarios),
    #: saved and restored by `Runtime` so a restart carries on with them; the Simulator ignores it.
    control: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        # Called every step (the history store keeps the state that goes with its newest ticks):
        # orjson and no deep copy take it from 6.9 ms to 0.07 ms at 1,000 assets, 34 to 0.6 ms with the
        # lifted scheme's factors; json.dumps(asdict(...)) cost more than the step. Floats round-trip.
        return orjson.dumps({f.name: getattr(self, f.name) for f in fields(self)}).decode()

    @classmethod
    def from_json(cls, text: str) -> SimulatorState:
        try:
            return cls(**orjson.loads(text))
        except (TypeError, orjson.JSONDecodeError) as exc:
            raise ValueError(f"invalid simulator state: {exc}") from exc


class Simulator:
    """Simulates every asset of a universe at once, reproducibly from a seed.

    Random numbers are keyed by (seed, asset, step), so the same seed gives the same bits whatever
    the chunking of `step`/`paths` calls and whatever the thread count.
    """

    def __init__(
        self,
        universe: Universe | None = None,
        *,
        dt: float = 1.0 / SECONDS_PER_YEAR,
        seed: int = 0,
        scheme: Scheme | str = Scheme.QE,
        jumps: bool = False,
        threads: int = 1,
        rough_factors: int = 20,
    ) -> None:
        self.universe = universe if universe is not None else Universe.default()
        if not (isinstance(dt, int | float) and math.isfinite(dt) and dt > 0):
            raise ValueError(f"dt must be > 0 (got {dt!r})")
        if not isinstance(seed, int) or not 0 <= seed < 2**64:
            raise ValueError(f"seed must be an integer in [0, 2**64) (got {seed!r})")
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
            raise ValueError(f"threads must be an integer >= 0, 0 meaning one per core (got {threads!r})")
        try:
            self.scheme = Scheme(scheme)
        except ValueError:
            raise ValueError(f"scheme must be one of {[s.value for s in Scheme]} (got {scheme!r})") from None
        if (
            isinstance(rough_factors, bool)
            or not isinstance(rough_factors, int)
            or not 1 <= rough_factors <= 200
        ):
            raise ValueError(f"rough_factors must be an integer in [1, 200] (got {rough_factors!r})")
        self.universe.validate()
        if any(a.rough for a in self.universe.assets):
            self.scheme = Scheme.LIFTED
        self.dt = float(dt)
        self.seed = seed
        self.jumps = jumps
        u = self.universe

        def col(name: str) -> FloatArray:
            return np.array([getattr(a, name) for a in u.assets], dtype=np.float64)

        loadings, idio = u.driver_loadings()
        eye = 1e-14 * np.eye(len(u.factors))
        chol = np.stack([np.linalg.cholesky(c + eye) for c in u.regime_correlations()])
        scales = np.array([g.vol_scale for g in u.regimes] or [1.0], dtype=np.float64)
        zero = np.zeros(len(u.assets))
        lift_weight, lift_speed = np.zeros((0, len(u.assets))), np.zeros((0, len(u.assets)))
        if self.scheme is Scheme.LIFTED:
            kernels = [lifted_kernel(a.hurst, rough_factors, 0.5 / self.dt) for a in u.assets]
            lift_weight = np.ascontiguousarray(np.array([c for c, _ in kernels]).T)
            lift_speed = np.ascontiguousarray(np.array([x for _, x in kernels]).T)
        self._engine = _engine.Engine(
            log_s0=np.log(col("s0")),
            mu=col("mu"),
            v0=col("v0"),
            kappa=col("kappa"),
            theta=col("theta"),
            xi=col("xi"),
            rho=col("rho"),
            loadings=np.ascontiguousarray(loadings.T),
            idio=idio,
            factor_chol=np.ascontiguousarray(chol),
            regime_scale=scales,
            regime_switch=np.ascontiguousarray(u.regime_switch(float(dt))),
            jump_lambda=col("jump_intensity") if jumps else zero,
            jump_mean=col("jump_mean") if jumps else zero,
            jump_std=col("jump_std") if jumps else zero,
            lift_weight=lift_weight,
            lift_speed=lift_speed,
            dt=self.dt,
            seed=seed,
            scheme=list(Scheme).index(self.scheme),
            threads=threads,
        )

    @property
    def symbols(self) -> list[str]:
        return self.universe.symbols

    @property
    def n_assets(self) -> int:
        return len(self.universe.assets)

    @property
    def regime(self) -> int:
        """Index of the current market regime in `universe.regimes` (0 without regimes)."""
        return int(self._engine.state()[4])

    @property
    def step_index(self) -> int:
        """Steps simulated so far (the index of the next step)."""
        return int(self._engine.step_index)

    @property
    def threads(self) -> int:
        return int(self._engine.threads)

    @threads.setter
    def threads(self, value: int) -> None:
        self._engine.threads = value

    @property
    def prices(self) -> FloatArray:
        out: FloatArray = np.exp(np.array(self._engine.state()[1], dtype=np.float64))
        return out

    @property
    def variances(self) -> FloatArray:
        out: FloatArray = np.maximum(np.array(self._engine.state()[2], dtype=np.float64), 0.0)
        return out

    def step(self, n: int = 1) -> Step:
        """Advance n steps; return the final prices and variances and the log-return over the n steps."""
        _check_count(n)
        out = np.empty((3, 1, self.n_assets))
        self._engine.run(n, out[0], out[1], out[2])
        return Step(step=self.step_index, prices=out[0, 0], variances=out[1, 0], log_returns=out[2, 0])

    def paths(self, n: int) -> Paths:
        """Advance n steps recording every one: arrays of shape (n, n_assets)."""
        _check_count(n)
        out = np.empty((3, n, self.n_assets))
        self._engine.run(n, out[0], out[1], out[2])
        return Paths(prices=out[0], variances=out[1], log_returns=out[2])

    def state(self) -> SimulatorState:
        step, x, v, f, regime, lift = self._engine.state()
        return SimulatorState(
            step=int(step),
            log_prices=list(x),
            variances=list(v),
            factor_levels=list(f),
            regime=int(regime),
            lift_factors=list(lift),
            seed=self.seed,
            scheme=self.scheme.value,
            dt=self.dt,
            symbols=self.symbols,
        )

    def restore(self, state: SimulatorState) -> None:
        """Continue from a saved state. The universe, seed, scheme and dt must be the same."""
        if state.symbols and state.symbols != self.symbols:
            raise ValueError("state: its symbols differ from this simulator's universe")
        mine = {"seed": self.seed, "scheme": self.scheme.value, "dt": self.dt}
        theirs = {"seed": state.seed, "scheme": state.scheme, "dt": state.dt}
        differ = [f"{k} {theirs[k]!r}, not {mine[k]!r}" for k in mine if theirs[k] != mine[k]]
        if differ:
            raise ValueError(
                f"state: seed, scheme and dt must match the simulator's (it has {'; '.join(differ)})"
            )
        if len(state.log_prices) != self.n_assets or len(state.variances) != self.n_assets:
            raise ValueError("state: one log-price and one variance per asset are required")
        self._engine.set_state(
            state.step,
            state.log_prices,
            state.variances,
            state.factor_levels,
            state.regime,
            state.lift_factors,
        )

    def set_overlay(self, var_scale: float = 1.0, correlation: FloatArray | None = None) -> None:
        """Scenario overlay from the next step on: prices see `var_scale` times the model's variance,
        and the factor shocks use `correlation` (K x K) instead of the regime's. The variance process
        itself runs on untouched, so `set_overlay()` (no arguments) returns to the model exactly."""
        if not (math.isfinite(var_scale) and var_scale >= 0):
            raise ValueError(f"var_scale must be >= 0 (got {var_scale!r})")
        chol: list[float] = []
        if correlation is not None:
            k = len(self.universe.factors)
            c = np.asarray(correlation, dtype=np.float64)
            if c.shape != (k, k):
                raise ValueError(f"correlation: must be a {k}x{k} matrix")
            _validate_correlation(c, "correlation")
            chol = list(np.linalg.cholesky(c + 1e-14 * np.eye(k)).ravel())
        self._engine.set_overlay(float(var_scale), chol)

    @property
    def var_scale(self) -> float:
        """The overlay's variance multiplier (1.0 without one)."""
        return float(self._engine.var_scale)

    def draw_only(self, n: int) -> float:
        """Draw the random numbers n steps would use, and nothing else (the benchmark's floor)."""
        _check_count(n)
        return float(self._engine.draw_only(n))


#: Below this speed (per year: time scales beyond ten years) one cell of the lifted kernel holds all
#: the slow mass.
X_SLOW = 0.1


def build_info() -> dict[str, Any]:
    """Which compiled code runs here: the native or the portable build, the copy of the hot loops the
    portable build dispatched to, and the copy of the random-number generator this CPU runs (all of
    them compute the same bits)."""
    return {"native": _engine.native, "isa": _engine.isa, "generator": _engine.philox_isas()[0]}


def lifted_kernel(hurst: float, n: int, x_fast: float) -> tuple[FloatArray, FloatArray]:
    """Weights c and speeds x with sum_l c_l exp(-x_l t) ~ t^(H-1/2) / Gamma(H+1/2) (n >= 2 factors).

    The fractional kernel is the Laplace transform of mu(dx) = x^-alpha dx / (Gamma(alpha)
    Gamma(1-alpha)), alpha = H + 1/2. As in Abi Jaber and El Euch (2019), each factor is one cell of a
    partition of the speeds: c_l = mu(cell), x_l = the mean speed under mu in the cell. Their grid is
    centred on one year and stops at a few days, so its paths are smooth below that; ours runs
    geometrically from X_SLOW to `x_fast`, with a first cell [0, X_SLOW] that keeps the slow mass the
    cut-off grid loses (about 13 % of the kernel at one year for H = 0.1). The simulator puts x_fast
    at half a step's rate, so paths are rough down to about two steps: faster factors would change
    within a step, which the scheme cannot follow (Monte Carlo prices then drift several standard
    errors high). At 20 factors, H = 0.1, calls are within 0.02 of rough Heston's and the variogram
    of the variance gives back H (tests/test_engine_rough.py).
    H = 0.5 gives one factor with c = 1, x = 0 (classical Heston), the others zero.
    """
    if hurst >= 0.5:
        c, x = np.zeros(n), np.zeros(n)
        c[0] = 1.0
        return c, x
    if n < 2:
        raise ValueError("rough_factors: at least 2 factors are needed for a rough kernel")
    a = hurst + 0.5
    edges = np.concatenate([[0.0], np.geomspace(X_SLOW, max(x_fast, 10 * X_SLOW), n)])
    norm = math.gamma(a) * math.gamma(1 - a)
    mass = (edges[1:] ** (1 - a) - edges[:-1] ** (1 - a)) / ((1 - a) * norm)
    first_moment = (edges[1:] ** (2 - a) - edges[:-1] ** (2 - a)) / ((2 - a) * norm)
    out: tuple[FloatArray, FloatArray] = (mass, first_moment / mass)
    return out


def _check_count(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer (got {n!r})")


def _default_universe() -> Universe:
    # Factors: broad market, growth (tech tilt), value (financials/industrials tilt), energy.
    factors = ("market", "growth", "value", "energy")
    corr = (
        (1.0, 0.3, 0.2, 0.25),
        (0.3, 1.0, -0.4, -0.1),
        (0.2, -0.4, 1.0, 0.3),
        (0.25, -0.1, 0.3, 1.0),
    )
    # (symbol, name, sector, s0, mu, vol, kappa, xi, rho, betas, idio, jump intensity/mean/std)
    rows: list[tuple[str, str, str, float, float, float, float, float, float, tuple[float, ...], float]] = [
        (
            "NOVA",
            "Nova Systems",
            "Technology",
            182.40,
            0.10,
            0.32,
            3.0,
            0.55,
            -0.70,
            (1.1, 0.8, -0.2, 0.0),
            0.5,
        ),
        ("QBIT", "Qubit Labs", "Technology", 64.15, 0.14, 0.48, 2.5, 0.80, -0.60, (1.3, 1.1, -0.3, 0.0), 0.8),
        ("CHIP", "Chipworks", "Technology", 412.90, 0.12, 0.38, 3.0, 0.65, -0.65, (1.2, 0.9, -0.1, 0.1), 0.6),
        ("CLDX", "Cloudex", "Technology", 95.30, 0.11, 0.35, 3.0, 0.60, -0.65, (1.1, 1.0, -0.2, 0.0), 0.6),
        (
            "BNKR",
            "Bankers Trust Co",
            "Financials",
            48.72,
            0.07,
            0.26,
            4.0,
            0.45,
            -0.75,
            (1.0, -0.2, 0.9, 0.1),
            0.5,
        ),
        ("INSR", "Insurex", "Financials", 121.05, 0.06, 0.22, 4.0, 0.40, -0.70, (0.8, -0.2, 0.7, 0.0), 0.5),
        ("PYMT", "Paymentum", "Financials", 233.60, 0.09, 0.28, 3.5, 0.50, -0.70, (1.0, 0.4, 0.4, 0.0), 0.5),
        ("OILX", "Oilex Energy", "Energy", 78.44, 0.05, 0.34, 2.0, 0.55, -0.50, (0.9, -0.3, 0.4, 1.2), 0.6),
        ("GASP", "Gasport", "Energy", 33.10, 0.05, 0.38, 2.0, 0.60, -0.45, (0.8, -0.3, 0.3, 1.3), 0.7),
        ("SOLR", "Solaria", "Energy", 21.87, 0.08, 0.52, 2.5, 0.85, -0.55, (1.2, 0.7, -0.2, 0.4), 0.9),
        ("MEDI", "Medicor", "Healthcare", 156.20, 0.07, 0.21, 4.0, 0.40, -0.60, (0.7, 0.1, 0.1, 0.0), 0.5),
        ("GENE", "Genexa Bio", "Healthcare", 42.66, 0.10, 0.45, 2.5, 0.75, -0.50, (1.0, 0.6, -0.2, 0.0), 1.0),
        ("PHRM", "Pharmagen", "Healthcare", 88.90, 0.06, 0.20, 4.0, 0.38, -0.60, (0.6, 0.0, 0.2, 0.0), 0.5),
        ("SHOP", "Shopwell", "Consumer", 67.35, 0.08, 0.27, 3.5, 0.48, -0.70, (1.0, 0.3, 0.1, 0.0), 0.6),
        (
            "BRWY",
            "Brewery Group",
            "Consumer",
            54.10,
            0.05,
            0.19,
            4.0,
            0.35,
            -0.60,
            (0.6, -0.1, 0.3, 0.0),
            0.5,
        ),
        (
            "AUTO",
            "Autonomo Motors",
            "Consumer",
            244.80,
            0.12,
            0.55,
            2.5,
            0.90,
            -0.55,
            (1.4, 1.0, -0.3, 0.2),
            0.9,
        ),
        ("RAIL", "Railco", "Industrials", 139.50, 0.06, 0.23, 4.0, 0.42, -0.70, (0.9, -0.1, 0.6, 0.2), 0.5),
        ("AERO", "Aerodyne", "Industrials", 198.75, 0.07, 0.29, 3.5, 0.50, -0.70, (1.0, 0.1, 0.5, 0.2), 0.6),
        ("STEL", "Steelmark", "Industrials", 27.40, 0.05, 0.33, 3.0, 0.55, -0.60, (1.1, -0.2, 0.7, 0.5), 0.7),
        ("UTIL", "Utilico", "Utilities", 71.20, 0.04, 0.16, 5.0, 0.30, -0.50, (0.5, -0.2, 0.3, 0.2), 0.4),
    ]
    assets = tuple(
        Asset(
            symbol=sym,
            name=name,
            sector=sector,
            s0=s0,
            mu=mu,
            v0=vol * vol,
            theta=vol * vol,
            kappa=kappa,
            xi=xi,
            rho=rho,
            betas=betas,
            idio_vol=idio,
            # Rare downward jumps, more often for the volatile names.
            jump_intensity=round(2.0 * vol / 0.3, 2),
            jump_mean=-0.03,
            jump_std=0.05,
        )
        for sym, name, sector, s0, mu, vol, kappa, xi, rho, betas, idio in rows
    )
    return Universe(factors=factors, correlation=corr, assets=assets)
