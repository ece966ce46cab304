"""The one place that turns settings into backends. Optional dependencies are imported only here,
and only when their backend is configured, so the embedded default needs none of them."""

from __future__ import annotations

from marketfeed.config import Settings
from marketfeed.history.store import HistoryStore
from marketfeed.streams.bus import Bus
from marketfeed.streams.quotes import QuoteCache


def make_bus(settings: Settings) -> Bus:
    if settings.kafka:
        from marketfeed.streams.kafka import KafkaBus

        return KafkaBus(
            settings.kafka,
            topic=settings.kafka_topic,
            partitions=settings.kafka_partitions,
            messages=settings.kafka_messages,
        )
    from marketfeed.streams.memory import MemoryBus

    return MemoryBus()


def make_quote_cache(settings: Settings) -> QuoteCache:
    if settings.redis:
        from marketfeed.streams.redis import RedisQuoteCache

        return RedisQuoteCache(settings.redis)
    from marketfeed.streams.memory import MemoryQuoteCache

    return MemoryQuoteCache()


def make_history(settings: Settings) -> HistoryStore:
    if settings.database:
        from marketfeed.history.postgres import PostgresHistory

        return PostgresHistory(
            settings.database,
            flush_ms=settings.flush_ms,
            flush_rows=settings.flush_rows,
            retention_days=settings.retention_days,
            max_backlog_rows=settings.backlog_rows,
            spill_path=settings.history_path.parent / "postgres-spill.jsonl",
        )
    from marketfeed.history.sqlite import SQLiteHistory

    return SQLiteHistory(settings.history_path, flush_ms=settings.flush_ms, flush_rows=settings.flush_rows)
