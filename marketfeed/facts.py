"""`marketfeed facts`: how realistic a configuration is, as numbers (facts.json) and plots (PNG)."""

from __future__ import annotations

import argparse
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from marketfeed.analytics import stylized_facts
from marketfeed.engine import SECONDS_PER_YEAR, Scheme, Simulator, Universe


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "facts",
        help="report the stylized facts of a configuration",
        description="Simulate a configuration offline and report its stylized facts (Cont 2001): excess "
        "kurtosis, autocorrelation of returns and of absolute returns, the leverage correlation and the "
        "market eigenvalue; writes OUT/facts.json and, with matplotlib installed (marketfeed[facts]), "
        "OUT/facts.png.",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="directory for facts.json and facts.png")
    p.add_argument("--steps", default="5000", help="engine steps (default 5000)")
    p.add_argument("--dt-seconds", default="3600", help="simulated seconds per step (default 3600)")
    p.add_argument("--seed", default="0", help="random seed (default 0)")
    p.add_argument("--scheme", default="qe", help="qe | euler (default qe)")
    p.add_argument("--jumps", action="store_true", help="add Merton jumps (Bates model)")
    p.add_argument("--universe", default=None, metavar="FILE", help="JSON universe file (default: built-in)")
    p.add_argument("--lags", default="30", help="autocorrelation lags (default 30)")


def run(args: argparse.Namespace, usage_error: type[Exception]) -> int:
    try:
        steps, lags, seed = int(args.steps), int(args.lags), int(args.seed)
        dt = float(args.dt_seconds) / SECONDS_PER_YEAR
        scheme = Scheme(args.scheme)
    except ValueError as exc:
        raise usage_error(f"facts: {exc}") from None
    if steps < 100 or not 1 <= lags < steps // 2 or not math.isfinite(dt) or dt <= 0:
        raise usage_error("facts: --steps >= 100, 1 <= --lags < steps/2 and --dt-seconds > 0 are required")
    try:
        universe = Universe.from_json(args.universe) if args.universe else Universe.default()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a Feller violation is part of what is being described
            paths = Simulator(universe, dt=dt, seed=seed, scheme=scheme, jumps=args.jumps).paths(steps)
    except ValueError as exc:
        raise usage_error(str(exc)) from None
    facts = stylized_facts(paths.log_returns, lags=lags)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "facts.json").write_text(json.dumps(facts, indent=2))
    plotted = _plot(facts, paths.log_returns, out / "facts.png")
    summary = (
        f"excess kurtosis {facts['excess_kurtosis']:.2f}, |r| autocorrelation at lag 1 "
        f"{facts['acf_abs_returns'][0]:.3f}, leverage at lag 1 {facts['leverage'][0]:.3f}"
    )
    print(f"marketfeed facts: {summary}; wrote {out / 'facts.json'}" + (" and facts.png" if plotted else ""))
    return 0


def _plot(facts: dict[str, Any], returns: np.ndarray, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    lags = np.arange(1, len(facts["acf_returns"]) + 1)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    axes[0].bar(lags - 0.2, facts["acf_returns"], width=0.4, label="returns")
    axes[0].bar(lags + 0.2, facts["acf_abs_returns"], width=0.4, label="|returns|")
    axes[0].set_title("autocorrelation")
    axes[0].legend()
    axes[1].bar(lags, facts["leverage"], color="tab:red")
    axes[1].set_title("leverage: corr(r_t, r_{t+k}^2)")
    z = (returns - returns.mean(axis=0)) / returns.std(axis=0)
    axes[2].hist(z.ravel(), bins=120, density=True, log=True, alpha=0.7, label="standardised returns")
    grid = np.linspace(-6, 6, 200)
    axes[2].plot(grid, np.exp(-(grid**2) / 2) / math.sqrt(2 * math.pi), label="normal")
    axes[2].set_title(f"tails (excess kurtosis {facts['excess_kurtosis']:.2f})")
    axes[2].legend()
    for ax in axes[:2]:
        ax.set_xlabel("lag")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True
