"""Redis quote cache: latest quotes, a bounded recent-tick stream per symbol, hot symbols.

Keys (prefix `marketfeed:`):
  quotes                  hash   symbol -> latest tick JSON
  ticks:{symbol}          stream entry id `{gseq}-0`, field `t` = tick JSON, capped near `stream_len`
  watchers:{instance}     zset   symbol -> live subscribers of one server process (expires if it dies)
  watchers                set    the instances reporting watchers

Every write of an engine step goes in one pipelined round trip. Entry ids are the gseq, so a tick
written twice (a restarted engine regenerating it) is refused by Redis instead of duplicated. An
outage degrades health and is retried on the next step; it never raises into the streams.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from marketfeed.health import Health
from marketfeed.ticks import Tick, TickBatch

log = logging.getLogger(__name__)

PREFIX = "marketfeed:"
WATCHERS_TTL_S = 10


class RedisQuoteCache:
    name = "redis"

    def __init__(self, url: str, *, stream_len: int = 10_000) -> None:
        self.url = url
        self.stream_len = stream_len
        self.instance = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._client: aioredis.Redis | None = None
        self._latest: dict[str, Tick] = {}  # served when Redis is down
        self._error: str | None = None
        self.updates = 0
        self.errors = 0

    @property
    def client(self) -> aioredis.Redis:
        if self._client is None:
            raise RuntimeError("RedisQuoteCache used before start()")
        return self._client

    async def start(self) -> None:
        # Short timeouts: a stalled Redis must cost the cache writer a second, not the streams anything.
        self._client = aioredis.Redis.from_url(
            self.url, socket_timeout=1.0, socket_connect_timeout=1.0, retry_on_timeout=False
        )
        try:
            await self.client.ping()
        except RedisError as exc:
            self._fail(exc)

    async def close(self) -> None:
        if self._client is not None:
            try:
                await self._client.srem(PREFIX + "watchers", self.instance)
                await self._client.delete(PREFIX + "watchers:" + self.instance)
            except RedisError:
                pass
            await self._client.aclose()
            self._client = None

    def _fail(self, exc: Exception) -> None:
        if self._error is None:
            log.warning("redis unavailable, quotes kept in memory until it returns: %s", exc)
        self._error = str(exc) or type(exc).__name__
        self.errors += 1

    async def update(self, batch: TickBatch) -> None:
        for t in batch.ticks:
            self._latest[t.symbol] = t
        if not batch.ticks:
            return
        # After an outage, write every symbol's latest quote, not only this step's.
        recovering = self._error is not None
        quotes = self._latest.values() if recovering else batch.ticks
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(PREFIX + "quotes", mapping={t.symbol: t.to_json() for t in quotes})
        for t, encoded in zip(batch.ticks, batch.encoded, strict=True):
            pipe.xadd(
                PREFIX + "ticks:" + t.symbol,
                {"t": encoded},
                id=f"{t.gseq}-0",
                maxlen=self.stream_len,
                approximate=True,
            )
        try:
            results = await pipe.execute(raise_on_error=False)
        except RedisError as exc:
            self._fail(exc)
            return
        if isinstance(results[0], Exception):
            self._fail(results[0])
            return
        # Later entries may be refused as duplicates (same gseq written again): that is the point.
        if self._error is not None:
            log.info("redis is back")
        self._error = None
        self.updates += 1

    async def latest(self, symbols: Iterable[str]) -> dict[str, Tick]:
        names = list(symbols)
        if not names:
            return {}
        try:
            raw = await self.client.hmget(PREFIX + "quotes", names)
        except RedisError as exc:
            self._fail(exc)
            return {s: self._latest[s] for s in names if s in self._latest}
        return {s: Tick.from_json(r) for s, r in zip(names, raw, strict=True) if r is not None}

    async def recent(self, symbol: str, after_gseq: int, limit: int = 1000) -> list[Tick]:
        """Ticks of `symbol` newer than `after_gseq` still held in its stream (for resumes)."""
        entries: Any = await self.client.xrange(
            PREFIX + "ticks:" + symbol, min=f"({after_gseq}-0", count=limit
        )
        return [Tick.from_json(fields[b"t"]) for _, fields in entries or []]

    async def set_watchers(self, counts: Mapping[str, int]) -> None:
        key = PREFIX + "watchers:" + self.instance
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(key)
        if counts:
            pipe.zadd(key, {s: n for s, n in counts.items() if n > 0})
        pipe.expire(key, WATCHERS_TTL_S)
        pipe.sadd(PREFIX + "watchers", self.instance)
        try:
            await pipe.execute()
        except RedisError as exc:
            self._fail(exc)

    async def hot(self, n: int) -> list[tuple[str, int]]:
        """Most-watched symbols across every server process that reports to this Redis."""
        try:
            members = [_text(m) for m in await self.client.smembers(PREFIX + "watchers")]
            alive = [m for m in members if await self.client.exists(PREFIX + "watchers:" + m)]
            gone = [m for m in members if m not in alive]
            if gone:
                await self.client.srem(PREFIX + "watchers", *gone)
            if not alive:
                return []
            ranked: Any = await self.client.zunion([PREFIX + "watchers:" + m for m in alive], withscores=True)
        except RedisError as exc:
            self._fail(exc)
            return []
        ordered = sorted(((_text(m), int(score)) for m, score in ranked), key=lambda kv: (-kv[1], kv[0]))
        return ordered[:n]

    def health(self) -> Health:
        if self._error is not None:
            return Health.degraded(f"redis: {self._error}")
        return Health.ok(self.url.split("@")[-1])  # never print a password from the URL

    def metrics(self) -> dict[str, float]:
        return {"redis_updates_total": self.updates, "redis_errors_total": self.errors}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
