"""Faults against the real servers while the engine runs: broker, database and cache outages, abrupt
kills, slow clients. Afterwards every generated tick is where it belongs, exactly once."""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis as redis_py
from serverproc import ServerFactory, ServerProcess
from services import Kafka, Postgres, Redis
from test_end_to_end import kafka_gseqs
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from marketfeed.engine import SimulatorState, Universe

pytestmark = pytest.mark.integration

SYMBOLS = Universe.default().symbols


def wait_health(server: ServerProcess, status: str, seconds: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while True:
        health: dict[str, Any] = httpx.get(server.url + "/health", timeout=5).json()
        if health["status"] == status or time.monotonic() > deadline:
            return health
        time.sleep(0.2)


def sqlite_steps(server: ServerProcess) -> int:
    with sqlite3.connect(server.workdir / "history.sqlite3") as conn:
        return SimulatorState.from_json(conn.execute("SELECT state FROM engine_state").fetchone()[0]).step


def assert_once_in_order(gseqs: list[int], generated: int) -> None:
    assert len(gseqs) == generated, f"{len(gseqs)} delivered for {generated} generated"
    assert sorted(gseqs) == list(range(1, generated + 1))
    per_symbol: dict[int, list[int]] = defaultdict(list)
    for g in gseqs:
        per_symbol[(g - 1) % len(SYMBOLS)].append(g)
    assert all(v == sorted(v) for v in per_symbol.values())


def test_kafka_down_for_ten_seconds_loses_nothing(server_factory: ServerFactory, kafka: Kafka) -> None:
    topic = f"fault-{uuid.uuid4().hex[:8]}"
    server = server_factory(kafka=kafka.bootstrap, kafka_topic=topic).start()
    time.sleep(2.0)
    kafka.stop()
    time.sleep(10.0)
    assert wait_health(server, "degraded")["backends"]["bus"]["status"] == "degraded"
    n_sse = len(read_sse(server, 20))  # clients are still served meanwhile
    assert n_sse == 20
    kafka.start()
    time.sleep(3.0)
    server.stop()
    generated = sqlite_steps(server) * len(SYMBOLS)
    assert_once_in_order(kafka_gseqs(kafka, topic, generated), generated)


def test_postgres_down_for_ten_seconds_loses_nothing(
    server_factory: ServerFactory, postgres: Postgres
) -> None:
    dsn = postgres.create_database(f"fault_{uuid.uuid4().hex[:10]}")
    server = server_factory(database=dsn).start()
    time.sleep(2.0)
    postgres.stop()
    try:
        time.sleep(10.0)
        health = wait_health(server, "degraded")
        assert health["backends"]["history"]["status"] == "degraded"
        metrics = httpx.get(server.url + "/metrics").text
        assert "marketfeed_history_backlog_rows" in metrics
    finally:
        postgres.start()
    assert wait_health(server, "ok")["status"] == "ok"
    server.stop()

    async def stored() -> tuple[list[int], int]:
        conn = await asyncpg.connect(dsn)
        try:
            rows = [r["gseq"] for r in await conn.fetch("SELECT gseq FROM ticks ORDER BY gseq")]
            return rows, SimulatorState.from_json(await conn.fetchval("SELECT state FROM engine_state")).step
        finally:
            await conn.close()

    rows, steps = asyncio.run(stored())
    assert steps > 20 * 14  # the engine never paused
    assert_once_in_order(rows, steps * len(SYMBOLS))


def test_redis_restart_degrades_then_recovers_and_rewrites_quotes(
    server_factory: ServerFactory, redis: Redis
) -> None:
    server = server_factory(redis=redis.url).start()
    time.sleep(1.0)
    redis.stop()  # no persistence: it comes back empty
    try:
        assert wait_health(server, "degraded")["backends"]["quotes"]["status"] == "degraded"
        assert len(read_sse(server, 40)) == 40
    finally:
        redis.start()
    assert wait_health(server, "ok")["status"] == "ok"
    time.sleep(0.5)
    with redis_py.Redis.from_url(redis.url) as r:
        quotes = r.hgetall("marketfeed:quotes")
    assert {k.decode() for k in quotes} == set(SYMBOLS)


def test_sigkill_then_restart_continues_without_gaps(server_factory: ServerFactory) -> None:
    server = server_factory().start()
    time.sleep(2.0)
    server.kill()  # no flush, no goodbye
    server.start()
    time.sleep(2.0)
    server.stop()
    with sqlite3.connect(server.workdir / "history.sqlite3") as conn:
        rows = conn.execute("SELECT symbol, seq, gseq FROM ticks ORDER BY gseq").fetchall()
    steps = sqlite_steps(server)
    assert steps > 20 * 3
    assert [r[2] for r in rows] == list(range(1, steps * len(SYMBOLS) + 1))  # no gap, no duplicate
    seqs: dict[str, list[int]] = defaultdict(list)
    for symbol, seq, _ in rows:
        seqs[symbol].append(seq)
    assert all(v == list(range(1, steps + 1)) for v in seqs.values())


def test_a_slow_websocket_client_is_closed_with_a_reason_others_unaffected(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    # 100 symbols at 50 steps a second: enough bytes that the kernel's socket buffers (megabytes on
    # loopback) fill within seconds and the server itself sees the client fall behind.
    data = Universe.default().to_dict()
    data["assets"] = [dict(data["assets"][i % 20], symbol=f"S{i:03d}") for i in range(100)]
    universe = tmp_path / "universe.json"
    universe.write_text(json.dumps(data))
    server = server_factory(tick_rate=50, client_queue=4, slow_client_seconds=2, universe=universe).start()

    async def healthy(stop: asyncio.Event) -> list[float]:
        lags: list[float] = []
        async with connect(server.ws_url, max_size=2**24) as ws:
            await ws.send(json.dumps({"action": "subscribe", "symbols": ["*"]}))
            while not stop.is_set():
                message = json.loads(await asyncio.wait_for(ws.recv(), 5))
                if message["type"] == "ticks":
                    lags.append((time.time_ns() - message["data"][0]["ts"]) / 1e9)
        return lags

    async def slow() -> tuple[int, str]:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # so the server feels it at once
        sock.connect(("127.0.0.1", server.port))
        sock.setblocking(False)
        async with connect(server.ws_url, sock=sock, max_queue=1, ping_interval=None, max_size=2**24) as ws:
            await ws.send(json.dumps({"action": "subscribe", "symbols": ["*"]}))
            with pytest.raises(ConnectionClosed) as closed:
                await read_slowly(ws)
            assert closed.value.rcvd is not None, "dropped without a close frame"
            return closed.value.rcvd.code, closed.value.rcvd.reason

    async def scenario() -> tuple[tuple[int, str], list[list[float]]]:
        stop = asyncio.Event()
        others = [asyncio.create_task(healthy(stop)) for _ in range(10)]
        code_reason = await asyncio.wait_for(slow(), 60)
        await asyncio.sleep(1.0)
        stop.set()
        return code_reason, list(await asyncio.gather(*others))

    (code, reason), lags = asyncio.run(scenario())
    assert code == 1008
    assert reason.startswith("slow consumer")
    worst = sorted(x for client in lags for x in client)[int(0.99 * sum(len(c) for c in lags))]
    assert worst < 0.5, f"the others' p99 latency was {worst:.3f} s"
    assert "marketfeed_slow_client_disconnects_total 1" in httpx.get(server.url + "/metrics").text


async def read_slowly(ws: ClientConnection) -> None:
    while True:
        await asyncio.wait_for(ws.recv(), 30)
        await asyncio.sleep(0.1)  # ten frames a second; the market makes fifty


def read_sse(server: ServerProcess, n: int) -> list[str]:
    lines: list[str] = []
    with httpx.stream("GET", server.url + "/stream/sse", timeout=10) as response:
        for line in response.iter_lines():
            if line.startswith("data:"):
                lines.append(line)
                if len(lines) == n:
                    break
    return lines
