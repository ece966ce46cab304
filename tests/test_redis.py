"""The Redis quote cache against a real Redis: quotes, bounded streams, hot symbols, outages."""

from __future__ import annotations

import asyncio

import pytest
import redis as redis_py
from services import Redis

from marketfeed.health import Status
from marketfeed.streams.redis import PREFIX, RedisQuoteCache
from marketfeed.ticks import Tick, TickBatch

pytestmark = pytest.mark.integration

SYMBOLS = ["AAA", "BBB", "CCC"]


def batch(step: int) -> TickBatch:
    n = len(SYMBOLS)
    ticks = [
        Tick(s, step + 1, step * n + i + 1, step * 10**9, 10.0 + step, 9.99, 10.01, 5, 0.2)
        for i, s in enumerate(SYMBOLS)
    ]
    return TickBatch(step=step, ticks=ticks)


@pytest.fixture
def flushed(redis: Redis) -> Redis:
    with redis_py.Redis.from_url(redis.url) as client:
        client.flushall()
    return redis


def test_latest_quotes_streams_and_hot_symbols(flushed: Redis) -> None:
    async def scenario() -> None:
        cache = RedisQuoteCache(flushed.url, stream_len=50)
        await cache.start()
        try:
            for step in range(400):
                await cache.update(batch(step))
            await cache.update(batch(399))  # a re-delivered step is refused, not duplicated
            latest = await cache.latest(["AAA", "CCC", "ZZZ"])
            assert sorted(latest) == ["AAA", "CCC"]
            assert latest["CCC"] == batch(399).ticks[2]
            recent = await cache.recent("BBB", after_gseq=batch(390).ticks[1].gseq)
            assert [t.seq for t in recent] == list(range(392, 401))
            length = await cache.client.xlen(PREFIX + "ticks:AAA")
            assert 50 <= length < 400  # capped (approximately, as Redis trims whole nodes)
            await cache.set_watchers({"BBB": 3, "AAA": 1})
            other = RedisQuoteCache(flushed.url)
            await other.start()
            await other.set_watchers({"AAA": 5})
            assert await cache.hot(2) == [("AAA", 6), ("BBB", 3)]
            await other.close()
            assert await cache.hot(5) == [("BBB", 3), ("AAA", 1)]  # a closed process stops counting
            assert cache.health().status is Status.OK
        finally:
            await cache.close()

    asyncio.run(scenario())


def test_an_outage_degrades_health_and_recovery_rewrites_the_quotes(flushed: Redis) -> None:
    async def scenario() -> None:
        cache = RedisQuoteCache(flushed.url)
        await cache.start()
        try:
            await cache.update(batch(0))
            flushed.stop()
            for step in range(1, 5):
                await cache.update(batch(step))  # must not raise
            assert cache.health().status is Status.DEGRADED
            assert (await cache.latest(["AAA"]))["AAA"].seq == 5  # served from memory meanwhile
            flushed.start()  # no persistence: Redis comes back empty
            await cache.update(batch(5))
            assert cache.health().status is Status.OK
            latest = await cache.latest(SYMBOLS)
            assert {s: t.seq for s, t in latest.items()} == dict.fromkeys(SYMBOLS, 6)
            assert cache.metrics()["redis_errors_total"] >= 4
        finally:
            await cache.close()

    asyncio.run(scenario())
