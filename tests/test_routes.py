"""REST endpoints against a real server: reference data, quotes, history pages, candles, errors."""

from __future__ import annotations

import csv
import io
import time
from collections import defaultdict
from typing import Any

import httpx
import pytest
from serverproc import ServerFactory, ServerProcess

from marketfeed import _engine


def get(server: ServerProcess, path: str, **params: Any) -> httpx.Response:
    return httpx.get(server.url + path, params=params, timeout=10.0)


def all_ticks(server: ServerProcess, symbol: str, page: int = 50) -> list[dict[str, Any]]:
    """Every stored tick of `symbol`, through cursor pagination."""
    ticks: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"symbol": symbol, "limit": page}
        if cursor:
            params["cursor"] = cursor
        body = get(server, "/history/ticks", **params).json()
        ticks.extend(body["ticks"])
        cursor = body["next_cursor"]
        if cursor is None:
            return ticks


def test_reference_data_and_quotes(server: ServerProcess) -> None:
    symbols = get(server, "/symbols").json()
    assert len(symbols) == 20
    assert {"symbol", "name", "sector", "s0"} <= set(symbols[0])
    model = get(server, "/model").json()
    assert model["scheme"] == "qe"
    # The server's own module, and the generator copy this CPU runs (the fastest it has).
    assert model["engine_build"] == {
        "native": _engine.native,
        "isa": _engine.isa,
        "generator": _engine.philox_isas()[0],
    }
    assert len(model["assets"]) == 20
    assert len(model["implied_correlation"]) == 20
    time.sleep(0.3)
    quotes = get(server, "/quotes/latest", symbols="NOVA,util").json()["quotes"]
    assert [q["symbol"] for q in quotes] == ["NOVA", "UTIL"]
    assert len(get(server, "/quotes/latest").json()["quotes"]) == 20
    health = get(server, "/health").json()
    assert health["status"] == "ok"
    assert health["backends"]["history"]["name"] == "sqlite"
    metrics = get(server, "/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    generated = [
        line for line in metrics.text.splitlines() if line.startswith("marketfeed_ticks_generated_total")
    ]
    assert int(generated[0].split()[1]) > 0


def test_openapi_documents_the_tick_schema(server: ServerProcess) -> None:
    spec = get(server, "/openapi.json").json()
    tick = spec["components"]["schemas"]["TickModel"]["properties"]
    assert {"symbol", "seq", "gseq", "ts", "time", "price", "bid", "ask", "size", "vol"} <= set(tick)
    assert get(server, "/docs").status_code == 200


def test_tick_pages_cover_the_history_without_overlap(server: ServerProcess) -> None:
    time.sleep(1.5)
    ticks = all_ticks(server, "NOVA", page=7)
    seqs = [t["seq"] for t in ticks]
    assert len(seqs) >= 20
    assert seqs == list(range(1, len(seqs) + 1))
    start, end = ticks[3]["time"], ticks[9]["time"]
    window = get(server, "/history/ticks", symbol="NOVA", start=start, end=end).json()["ticks"]
    assert [t["seq"] for t in window] == seqs[3:9]
    text = get(server, "/history/ticks", symbol="NOVA", limit=5, format="csv").text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [int(r["seq"]) for r in rows] == [1, 2, 3, 4, 5]


def test_candles_agree_with_the_raw_ticks(server: ServerProcess) -> None:
    time.sleep(3.0)
    ticks = all_ticks(server, "QBIT", page=1000)
    buckets: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for t in ticks:
        buckets[t["ts"] // 1_000_000_000 * 1_000_000_000].append(t)
    # Only seconds that were over when the ticks were read: later ticks may still join the newer ones.
    end = ticks[-1]["time"][:19] + "Z"
    candles = get(server, "/history/candles", symbol="QBIT", interval="1s", end=end).json()["candles"]
    assert len(candles) >= 2
    assert [c["start"] for c in candles] == sorted(buckets)[: len(candles)]
    for c in candles:
        group = buckets[c["start"]]
        prices = [t["price"] for t in group]
        assert c["trades"] == len(group)
        assert (c["open"], c["close"]) == (prices[0], prices[-1])
        assert (c["high"], c["low"]) == (max(prices), min(prices))
        assert c["volume"] == sum(t["size"] for t in group)
        assert c["low"] <= min(c["open"], c["close"])
        assert c["high"] >= max(c["open"], c["close"])
    minute = get(server, "/history/candles", symbol="QBIT", interval="1m", format="csv")
    assert minute.headers["content-type"].startswith("text/csv")


def test_history_survives_a_restart_and_the_path_continues(server: ServerProcess) -> None:
    time.sleep(1.0)
    before = all_ticks(server, "SOLR", page=1000)
    server.stop()  # graceful: everything pending is flushed, with the engine state
    server.start()
    time.sleep(1.0)
    after = all_ticks(server, "SOLR", page=1000)
    assert after[: len(before)] == before
    assert len(after) > len(before) + 10
    assert [t["seq"] for t in after] == list(range(1, len(after) + 1)), "seq continues without gap or reuse"


@pytest.mark.parametrize(
    ("path", "params", "status", "needle"),
    [
        ("/history/ticks", {}, 422, "symbol"),
        ("/history/ticks", {"symbol": "NOPE"}, 404, "NOPE"),
        ("/history/ticks", {"symbol": "NOVA'; DROP TABLE ticks; --"}, 404, "unknown symbol"),
        ("/history/ticks", {"symbol": "NOVA", "limit": 0}, 422, "limit"),
        ("/history/ticks", {"symbol": "NOVA", "cursor": "abc"}, 400, "cursor"),
        ("/history/ticks", {"symbol": "NOVA", "start": "yesterday"}, 422, "start"),
        ("/history/ticks", {"symbol": "NOVA", "start": "2030-01-02", "end": "2030-01-01"}, 400, "before"),
        ("/history/candles", {"symbol": "NOVA", "interval": "7m"}, 422, "interval"),
        ("/quotes/latest", {"symbols": "NOVA,,XX"}, 404, "XX"),
    ],
)
def test_bad_parameters_get_clear_errors(
    server: ServerProcess, path: str, params: dict[str, Any], status: int, needle: str
) -> None:
    r = get(server, path, **params)
    assert r.status_code == status, r.text
    assert needle.lower() in r.text.lower()


def test_future_ranges_are_empty_and_impossible_ones_are_errors(server: ServerProcess) -> None:
    r = get(server, "/history/candles", symbol="NOVA", interval="1h", start="2200-01-01T00:00:00Z")
    assert r.status_code == 200
    assert r.json()["candles"] == []
    r = get(server, "/history/candles", symbol="NOVA", interval="1h", start="2999-01-01T00:00:00Z")
    assert r.status_code == 400
    assert "2262" in r.json()["detail"]
    r = get(server, "/history/ticks", symbol="NOVA", end="1900-01-01T00:00:00Z")
    assert r.status_code == 400
    assert "1970" in r.json()["detail"]


def test_a_history_file_from_another_market_is_refused(server_factory: ServerFactory) -> None:
    first = server_factory(seed=1).start()
    time.sleep(0.3)
    first.stop()
    second = server_factory(seed=2)
    second.workdir = first.workdir  # same history file, another seed
    with pytest.raises(RuntimeError, match="another market"):
        second.start(timeout=10)


def test_a_rough_market_runs_the_lifted_scheme_and_resumes_it(server_factory: ServerFactory) -> None:
    server = server_factory(hurst=0.1, tick_rate=20).start()
    model = httpx.get(server.url + "/model").json()
    assert model["scheme"] == "lifted"
    assert model["rough_factors"] == 20
    assert {a["hurst"] for a in model["assets"]} == {0.1}
    time.sleep(1.0)
    first = all_ticks(server, "NOVA")
    assert len(first) >= 10
    assert all(t["vol"] > 0 for t in first)
    server.stop()
    server.start()  # the lifted factors were stored with the engine state: the path carries on
    time.sleep(0.5)
    seqs = [t["seq"] for t in all_ticks(server, "NOVA", page=1000)]
    assert seqs == list(range(1, len(seqs) + 1))
    assert len(seqs) > len(first)
    # The same history opened as a classical Heston market is refused, naming the mismatch.
    server.stop()
    classical = ServerProcess(workdir=server.workdir)
    with pytest.raises(RuntimeError, match="lifted"):
        classical.start(timeout=10)
