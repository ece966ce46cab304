"""Analytics on simulated data: stylized facts, latent-variance filtering, reference strategies.

Everything takes NumPy arrays (from `Simulator.paths`, or from the history API) and returns plain
numbers, so it serves notebooks, the CLI (`marketfeed facts`) and the REST API alike.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]


# --- stylized facts (Cont 2001) --------------------------------------------------------------------------
def autocorrelation(x: Array, lags: int) -> Array:
    """Sample autocorrelation of a 1-D series at lags 1..lags."""
    x = x - x.mean()
    denom = float(np.dot(x, x))
    return np.array([np.dot(x[:-k], x[k:]) / denom for k in range(1, lags + 1)])


def stylized_facts(log_returns: Array, lags: int = 20) -> dict[str, Any]:
    """How realistic a set of return paths (steps x assets) looks, fact by fact.

    Real markets show: no linear autocorrelation of returns, heavy tails (positive excess kurtosis),
    slowly decaying autocorrelation of |returns| (volatility clustering), a negative correlation of
    returns with later squared returns (leverage), and one market eigenvalue far above the
    Marchenko-Pastur bound of the return correlation matrix.
    """
    r = np.atleast_2d(log_returns.T).T
    steps, assets = r.shape
    z = (r - r.mean(axis=0)) / r.std(axis=0)
    kurtosis = (z**4).mean(axis=0) - 3.0
    skew = (z**3).mean(axis=0)
    acf_r = np.mean([autocorrelation(r[:, i], lags) for i in range(assets)], axis=0)
    acf_abs = np.mean([autocorrelation(np.abs(r[:, i]), lags) for i in range(assets)], axis=0)
    leverage = np.mean(
        [[np.corrcoef(r[:-k, i], r[k:, i] ** 2)[0, 1] for k in range(1, lags + 1)] for i in range(assets)],
        axis=0,
    )
    facts: dict[str, Any] = {
        "steps": steps,
        "assets": assets,
        "excess_kurtosis": float(kurtosis.mean()),
        "skewness": float(skew.mean()),
        "acf_returns": acf_r.round(4).tolist(),
        "acf_abs_returns": acf_abs.round(4).tolist(),
        "leverage": leverage.round(4).tolist(),
    }
    if assets > 1:
        eig = np.linalg.eigvalsh(np.corrcoef(r.T))
        facts["largest_eigenvalue"] = float(eig[-1])
        facts["marchenko_pastur_bound"] = float((1 + math.sqrt(assets / steps)) ** 2)
    return facts


# --- latent variance ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HestonParams:
    mu: float
    kappa: float
    theta: float
    xi: float
    rho: float


def particle_filter_variance(
    log_returns: Array, dt: float, p: HestonParams, v0: float, particles: int = 2000, seed: int = 0
) -> Array:
    """Filtered E[v_t | returns up to t] for one asset, by a bootstrap particle filter on Heston.

    Each step weighs particles by the likelihood of the observed return, N((mu - v/2) dt, v dt),
    resamples, then moves them with the full-truncation Euler step, using the price shock the return
    implies so the leverage correlation rho carries information from prices to variance.
    """
    rng = np.random.default_rng(seed)
    v = np.full(particles, v0)
    out = np.empty(len(log_returns))
    for t, r in enumerate(log_returns):
        vp = np.maximum(v, 1e-10)
        mean, var = (p.mu - 0.5 * vp) * dt, vp * dt
        logw = -0.5 * ((r - mean) ** 2 / var + np.log(var))
        w = np.exp(logw - logw.max())
        w /= w.sum()
        out[t] = float(np.dot(w, vp))
        # Systematic resampling: lower variance than multinomial, same expectation.
        positions = (rng.random() + np.arange(particles)) / particles
        idx = np.minimum(np.searchsorted(np.cumsum(w), positions), particles - 1)
        vp = vp[idx]
        zs = (r - (p.mu - 0.5 * vp) * dt) / np.sqrt(vp * dt)
        zv = p.rho * zs + math.sqrt(1 - p.rho**2) * rng.standard_normal(particles)
        v = vp + p.kappa * (p.theta - vp) * dt + p.xi * np.sqrt(vp * dt) * zv
    return out


def rolling_variance(log_returns: Array, dt: float, window: int) -> Array:
    """The naive estimator: mean squared return over a trailing window, annualised."""
    csum = np.concatenate([[0.0], np.cumsum(log_returns**2)])
    upto = np.arange(1, len(log_returns) + 1)
    since = np.maximum(upto - window, 0)
    out: Array = (csum[upto] - csum[since]) / ((upto - since) * dt)
    return out


# --- reference strategies --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Backtest:
    strategy: str
    total_return: float  #: sum of per-bar log-returns earned
    sharpe: float  #: annualised, from per-bar returns
    max_drawdown: float  #: worst peak-to-trough fall of the equity curve, as a fraction
    turnover: float  #: position changes per bar
    bars: int
    equity: list[float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _run(strategy: str, position: Array, returns: Array, bars_per_year: float) -> Backtest:
    # The position decided at the close of bar t earns bar t+1's return: no look-ahead.
    earned = position[:-1] * returns[1:]
    equity = np.exp(np.cumsum(earned))
    peak = np.maximum.accumulate(np.concatenate([[1.0], equity]))[1:]
    drawdown = float(np.max(1 - equity / peak)) if len(equity) else 0.0
    sd = float(earned.std())
    return Backtest(
        strategy=strategy,
        total_return=float(earned.sum()),
        sharpe=float(earned.mean() / sd * math.sqrt(bars_per_year)) if sd > 0 else 0.0,
        max_drawdown=drawdown,
        turnover=float(np.abs(np.diff(position)).mean()) if len(position) > 1 else 0.0,
        bars=len(returns),
        equity=equity.round(6).tolist(),
    )


def moving_average_crossover(closes: Array, fast: int, slow: int, bars_per_year: float) -> Backtest:
    if not 0 < fast < slow:
        raise ValueError("moving average windows: 0 < fast < slow is required")
    logp = np.log(closes)

    def average(n: int) -> Array:
        out: Array = np.convolve(logp, np.ones(n) / n, mode="full")[: len(logp)]
        return out

    position = np.where(np.arange(len(logp)) >= slow - 1, np.sign(average(fast) - average(slow)), 0.0)
    return _run(f"ma_crossover({fast},{slow})", position, np.diff(logp, prepend=logp[0]), bars_per_year)


def momentum(closes: Array, lookback: int, bars_per_year: float) -> Backtest:
    if lookback < 1:
        raise ValueError("momentum lookback must be >= 1")
    logp = np.log(closes)
    past = np.concatenate([np.full(lookback, np.nan), logp[:-lookback]])
    position = np.nan_to_num(np.sign(logp - past))
    return _run(f"momentum({lookback})", position, np.diff(logp, prepend=logp[0]), bars_per_year)


def pair_mean_reversion(a: Array, b: Array, window: int, entry: float, bars_per_year: float) -> Backtest:
    """Long the spread ln a - beta ln b when its z-score is below -entry, short above +entry."""
    if window < 2:
        raise ValueError("pair window must be >= 2")
    la, lb = np.log(a), np.log(b)
    beta = float(np.polyfit(lb, la, 1)[0])
    spread = la - beta * lb
    position = np.zeros(len(spread))
    for t in range(window, len(spread)):
        hist = spread[t - window : t]
        z = (spread[t] - hist.mean()) / (hist.std() or 1.0)
        position[t] = -1.0 if z > entry else 1.0 if z < -entry else position[t - 1] * (abs(z) > 0.5)
    returns = np.diff(spread, prepend=spread[0])
    return _run(f"pair_mean_reversion({window},{entry})", position, returns, bars_per_year)
