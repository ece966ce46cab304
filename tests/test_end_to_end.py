"""End to end with every real backend: after a graceful stop, the ticks generated equal the rows in
PostgreSQL equal the messages in Kafka (no duplicate, no gap), and Redis holds every last quote."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import defaultdict

import asyncpg
import httpx
import pytest
import redis as redis_py
from confluent_kafka import Consumer
from serverproc import ServerFactory
from services import Kafka, Postgres, Redis

from marketfeed.engine import SimulatorState, Universe

pytestmark = pytest.mark.integration


def kafka_gseqs(kafka: Kafka, topic: str, expected: int) -> list[int]:
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": f"e2e-{uuid.uuid4()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})  # fmt: skip
    consumer.subscribe([topic])
    gseqs: list[int] = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            batch = consumer.consume(5000, timeout=1.0)
            gseqs += [json.loads(m.value() or b"{}")["gseq"] for m in batch if m.error() is None]
            if len(gseqs) >= expected and not batch:
                break
    finally:
        consumer.close()
    return gseqs


def test_generated_equals_stored_equals_published(
    server_factory: ServerFactory, kafka: Kafka, postgres: Postgres, redis: Redis
) -> None:
    dsn = postgres.create_database(f"e2e_{uuid.uuid4().hex[:10]}")
    topic = f"e2e-{uuid.uuid4().hex[:8]}"
    with redis_py.Redis.from_url(redis.url) as r:
        r.flushall()
    server = server_factory(kafka=kafka.bootstrap, kafka_topic=topic, redis=redis.url, database=dsn).start()
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok", health
    assert {b["name"] for b in health["backends"].values()} == {"kafka", "redis", "postgres"}
    time.sleep(4.0)
    server.stop()  # graceful: the history, the bus and the cache flush what they hold

    async def stored() -> tuple[list[int], str]:
        conn = await asyncpg.connect(dsn)
        try:
            rows = [r["gseq"] for r in await conn.fetch("SELECT gseq FROM ticks ORDER BY gseq")]
            state = await conn.fetchval("SELECT state FROM engine_state")
            return rows, str(state)
        finally:
            await conn.close()

    rows, state = asyncio.run(stored())
    steps = SimulatorState.from_json(state).step
    symbols = Universe.default().symbols
    generated = steps * len(symbols)
    assert generated >= 20 * 3 * 20  # about 4 s at 20 steps a second, 20 symbols
    assert rows == list(range(1, generated + 1))  # every generated tick stored once, no gap
    published = kafka_gseqs(kafka, topic, generated)
    assert sorted(published) == rows  # and published once
    per_symbol: dict[int, list[int]] = defaultdict(list)
    for g in published:
        per_symbol[(g - 1) % len(symbols)].append(g)
    assert all(v == sorted(v) for v in per_symbol.values())  # each symbol in order
    with redis_py.Redis.from_url(redis.url) as r:
        quotes = {k.decode(): json.loads(v) for k, v in r.hgetall("marketfeed:quotes").items()}
    assert set(quotes) == set(symbols)
    assert {q["seq"] for q in quotes.values()} == {steps}  # the last quote of each symbol
