"""Analytics: stylized facts, the variance filter against the naive estimator, reference strategies,
and their REST endpoints on a real server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from serverproc import ServerFactory, ServerProcess
from websockets.asyncio.client import connect

from marketfeed import analytics
from marketfeed.engine import Asset, Scheme, Simulator, Universe

ASSET = Asset("X", 100.0, 0.05, 0.04, 3.0, 0.04, 0.8, -0.7, (0.0,), 1.0)
DT = 1 / (252 * 78)  # five-minute bars


def one_asset_paths(steps: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # this asset violates the Feller condition, deliberately
        sim = Simulator(Universe(("f",), ((1.0,),), (ASSET,)), dt=DT, seed=seed, scheme=Scheme.QE)
    p = sim.paths(steps)
    true_v = np.concatenate([[ASSET.v0], p.variances[:-1, 0]])  # the variance each return was drawn with
    return p.log_returns[:, 0], true_v, p.prices[:, 0]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_filter_beats_every_rolling_window(seed: int) -> None:
    returns, true_v, _ = one_asset_paths(4000, seed)
    params = analytics.HestonParams(ASSET.mu, ASSET.kappa, ASSET.theta, ASSET.xi, ASSET.rho)
    filtered = analytics.particle_filter_variance(returns, DT, params, ASSET.v0, particles=1000, seed=seed)

    def rmse(v: np.ndarray) -> float:
        return float(np.sqrt(np.mean((np.sqrt(v[200:]) - np.sqrt(true_v[200:])) ** 2)))

    best_rolling = min(rmse(analytics.rolling_variance(returns, DT, w)) for w in (20, 50, 100, 200, 400))
    assert rmse(filtered) < best_rolling


def test_stylized_facts_of_the_default_universe() -> None:
    facts = analytics.stylized_facts(Simulator(seed=1, dt=1 / 252).paths(2000).log_returns, lags=5)
    assert facts["excess_kurtosis"] > 0.3  # heavy tails from stochastic volatility
    assert max(abs(x) for x in facts["acf_returns"]) < 0.1  # no linear predictability
    assert min(facts["acf_abs_returns"]) > 0.05  # volatility clustering
    assert np.mean(facts["leverage"]) < 0  # leverage: falls are followed by higher volatility
    assert facts["largest_eigenvalue"] > 5 * facts["marchenko_pastur_bound"]  # one market mode


def test_strategies_have_no_look_ahead_and_sane_statistics() -> None:
    flat = np.full(500, 100.0)
    assert analytics.moving_average_crossover(flat, 5, 20, 252).total_return == 0.0
    _, _, prices = one_asset_paths(3000, 4)
    for result in (
        analytics.moving_average_crossover(prices, 10, 50, 252 * 78),
        analytics.momentum(prices, 20, 252 * 78),
        analytics.pair_mean_reversion(prices, prices * 1.01, 50, 1.5, 252 * 78),
    ):
        assert 0.0 <= result.max_drawdown < 1.0
        assert 0.0 <= result.turnover <= 2.0
        assert len(result.equity) == result.bars - 1
    with pytest.raises(ValueError, match="fast < slow"):
        analytics.moving_average_crossover(prices, 50, 10, 252)


def test_analytics_endpoints(server: ServerProcess) -> None:
    time.sleep(4.0)
    r = httpx.get(server.url + "/analytics/strategy", params={"symbol": "NOVA", "fast": 2, "slow": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["strategy"] == "ma_crossover(2,3)"
    assert {"sharpe", "max_drawdown", "turnover", "equity"} <= set(body)
    pair = httpx.get(
        server.url + "/analytics/strategy", params={"symbol": "NOVA", "kind": "pair", "window": 2}
    )
    assert pair.status_code == 400
    assert "other" in pair.json()["detail"]
    bad = httpx.get(server.url + "/analytics/strategy", params={"symbol": "NOVA", "fast": 9, "slow": 3})
    assert bad.status_code == 400
    vol = httpx.get(server.url + "/analytics/volatility", params={"symbol": "QBIT", "window": 20})
    assert vol.status_code == 200, vol.text
    v = vol.json()
    assert len(v["true"]) == len(v["filter"]) == len(v["rolling"]) == v["ticks"] - 1
    assert v["rmse_filter"] > 0


def test_facts_command_writes_a_report_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = subprocess.run(
        [sys.executable, "-m", "marketfeed", "facts", "--out", str(out), "--steps", "2000", "--lags", "10"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    facts = json.loads((out / "facts.json").read_text())
    assert len(facts["acf_abs_returns"]) == 10
    assert facts["excess_kurtosis"] > 0
    assert (out / "facts.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = subprocess.run(
        [sys.executable, "-m", "marketfeed", "facts", "--out", str(out), "--steps", "ten"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.startswith("marketfeed: error:")
    assert len(bad.stderr.strip().splitlines()) == 1


def test_scenarios_move_the_market_and_need_the_admin_key(server_factory: ServerFactory) -> None:
    server = server_factory(admin_keys="admin-secret").start()
    admin = {"X-API-Key": "admin-secret"}
    crash = {"kind": "crash", "factor": "market", "size": -0.2}
    assert httpx.post(server.url + "/admin/scenario", json=crash).status_code == 401
    before = {q["symbol"]: q["price"] for q in httpx.get(server.url + "/quotes/latest").json()["quotes"]}
    accepted = httpx.post(server.url + "/admin/scenario", json=crash, headers=admin)
    assert accepted.status_code == 202, accepted.text
    time.sleep(0.5)
    after = {q["symbol"]: q["price"] for q in httpx.get(server.url + "/quotes/latest").json()["quotes"]}
    # NOVA's market beta is 1.1: about exp(-0.22) = -20%; UTIL's is 0.5: about -10%.
    assert 0.75 < after["NOVA"] / before["NOVA"] < 0.85
    assert 0.85 < after["UTIL"] / before["UTIL"] < 0.95
    vol_before = {q["symbol"]: q["vol"] for q in httpx.get(server.url + "/quotes/latest").json()["quotes"]}
    spike = httpx.post(
        server.url + "/admin/scenario", json={"kind": "vol_spike", "multiplier": 4}, headers=admin
    )
    assert spike.status_code == 202
    time.sleep(0.5)
    vol_after = {q["symbol"]: q["vol"] for q in httpx.get(server.url + "/quotes/latest").json()["quotes"]}
    assert 1.8 < vol_after["QBIT"] / vol_before["QBIT"] < 2.2  # variance x4 is volatility x2
    bad = httpx.post(server.url + "/admin/scenario", json={"kind": "crash", "factor": "moon"}, headers=admin)
    assert bad.status_code == 400
    assert "factor" in bad.json()["detail"]
    log = httpx.get(server.url + "/admin/scenarios", headers=admin).json()["scenarios"]
    assert [s["kind"] for s in log] == ["crash", "vol_spike"]


def test_scenarios_are_announced_on_both_streams(server: ServerProcess) -> None:
    async def scenario() -> tuple[dict[str, Any], str]:
        async with connect(server.ws_url) as ws:
            await ws.send(json.dumps({"action": "subscribe", "symbols": ["NOVA"]}))
            with httpx.stream("GET", server.url + "/stream/sse?symbols=NOVA", timeout=10) as sse:
                lines = sse.iter_lines()
                next(lines)  # the stream is open before the scenario is posted
                body = {"kind": "vol_spike", "multiplier": 2.0}
                await asyncio.to_thread(httpx.post, server.url + "/admin/scenario", json=body)
                sse_event = next(line for line in lines if line.startswith("event: scenario"))
            while True:
                message = json.loads(await asyncio.wait_for(ws.recv(), 5))
                if message["type"] == "scenario":
                    return message, sse_event

    message, sse_event = asyncio.run(scenario())
    assert message["data"]["kind"] == "vol_spike"
    assert message["data"]["multiplier"] == 2.0
    assert sse_event == "event: scenario"
