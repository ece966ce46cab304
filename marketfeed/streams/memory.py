"""In-process backends: the bus and the quote cache of the embedded default (no servers needed)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping

from marketfeed.health import Health
from marketfeed.ticks import Tick, TickBatch


class MemoryBus:
    """Delivers batches to subscribers in the same process (tests, and `--role all`)."""

    name = "memory"

    def __init__(self, buffer: int = 1024) -> None:
        self._buffer = buffer
        self._queues: set[asyncio.Queue[TickBatch | None]] = set()
        self.published = 0
        self.dropped = 0

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        for q in self._queues:
            q.put_nowait(None)

    async def publish(self, batch: TickBatch) -> None:
        self.published += 1
        for q in self._queues:
            if q.full():  # a stalled consumer loses its oldest batch, never blocks the engine
                q.get_nowait()
                self.dropped += 1
            q.put_nowait(batch)

    async def subscribe(self) -> AsyncIterator[TickBatch]:
        q: asyncio.Queue[TickBatch | None] = asyncio.Queue(self._buffer + 1)
        self._queues.add(q)
        try:
            while (batch := await q.get()) is not None:
                yield batch
        finally:
            self._queues.discard(q)

    def health(self) -> Health:
        return Health.ok("in-process")

    def metrics(self) -> dict[str, float]:
        return {"bus_published_batches_total": self.published, "bus_dropped_batches_total": self.dropped}


class MemoryQuoteCache:
    name = "memory"

    def __init__(self) -> None:
        self._latest: dict[str, Tick] = {}
        self._watchers: dict[str, int] = {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def update(self, batch: TickBatch) -> None:
        for t in batch.ticks:
            self._latest[t.symbol] = t

    async def latest(self, symbols: Iterable[str]) -> dict[str, Tick]:
        return {s: self._latest[s] for s in symbols if s in self._latest}

    async def set_watchers(self, counts: Mapping[str, int]) -> None:
        self._watchers = dict(counts)

    async def hot(self, n: int) -> list[tuple[str, int]]:
        return sorted(self._watchers.items(), key=lambda kv: (-kv[1], kv[0]))[:n]

    def health(self) -> Health:
        return Health.ok("in-memory")

    def metrics(self) -> dict[str, float]:
        return {}
