"""The history store contract. Backends: `sqlite` (embedded default) and `postgres` (TimescaleDB).

Writes are fire-and-forget from the engine loop (`write` only enqueues); a background writer in each
backend batches them (flush every `flush_ms` or `flush_rows`, whichever first) and `close` flushes
everything pending. Re-delivered ticks (same gseq) never duplicate rows.

The engine's state is stored with the ticks, in the same transaction, so a restarted server resumes
the path exactly after the last tick it stored. Market events (scenarios, parameter changes) are
stored the same way: in the transaction of the first batch written after them (or an earlier one),
so an event of step k is visible no later than the ticks of step k.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from marketfeed.health import Health
from marketfeed.history.candles import Candle, Interval
from marketfeed.ticks import SymbolSet, Tick, TickBatch


class HistoryStore(Protocol):
    name: str

    async def start(self) -> None:
        """Open connections, apply the schema, start the background writer."""

    async def close(self) -> None:
        """Flush everything pending, then release connections."""

    def write(self, batch: TickBatch, state: str | None = None) -> None:
        """Enqueue a batch (and the engine state after it) for the background writer. Never blocks."""

    def write_event(self, record: Mapping[str, Any]) -> None:
        """Enqueue an event `{"type", "at_step", "ts", ...}`, written with the next batch. Never blocks."""

    async def flush(self) -> None:
        """Write everything enqueued so far before returning."""

    async def ticks(
        self,
        *,
        symbols: SymbolSet,
        start_ns: int | None = None,
        end_ns: int | None = None,
        after_gseq: int = 0,
        limit: int = 1000,
    ) -> list[Tick]:
        """Ticks in gseq order with gseq > after_gseq and start_ns <= ts < end_ns."""
        ...

    async def candles(
        self, *, symbol: str, interval: Interval, start_ns: int | None, end_ns: int | None, limit: int
    ) -> list[Candle]:
        """OHLCV buckets of one symbol, oldest first, computed from the stored ticks."""
        ...

    async def events(
        self, *, start_ns: int | None = None, end_ns: int | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Event records in the order they happened, with start_ns <= ts < end_ns."""
        ...

    async def load_state(self) -> str | None:
        """The engine state stored with the newest ticks, if any."""
        ...

    def health(self) -> Health: ...

    def metrics(self) -> dict[str, float]:
        """Counters for `/metrics`, e.g. rows written, backlog, write lag."""
        ...
