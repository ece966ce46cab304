"""History in PostgreSQL, or TimescaleDB when its extension is available (asyncpg).

Start-up applies the versioned migrations in db/migrations idempotently (under an advisory lock, so
processes starting together do not race): `NNNN_name.timescale.sql` when the extension is usable,
`NNNN_name.postgres.sql` otherwise, `NNNN_name.sql` for both. A database keeps the flavour its first
migration chose. Ticks are stored in blocks (history/blocks.py: a row of arrays per symbol, flush and
minute) in `tick_blocks`; `ticks` is a view of them, a row per tick. A background writer batches ticks
and writes each flush in one transaction: its blocks by binary COPY, then the engine state and the
events that go with them. Ticks already stored (same gseq) are left out, so nothing is duplicated. If
the database is down it retries with capped exponential backoff, keeping a bounded backlog; rows
beyond the bound go to a spill file when one is configured, else they are counted and logged as
dropped.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import io
import itertools
import logging
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import asyncpg
import numpy as np
import orjson

from marketfeed.health import Health
from marketfeed.history.blocks import BLOCK_COLUMNS, BLOCK_TICKS, MINUTE_NS, SPAN, BlockEncoder, Columns
from marketfeed.history.candles import Bucket, Candle, Interval, merge_buckets
from marketfeed.ticks import SymbolSet, Tick, TickBatch

log = logging.getLogger(__name__)


def migrations_dir() -> Path:
    """db/migrations in a checkout, or the copy CMake installs into the package of a wheel."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package.parent / "db" / "migrations", package / "db" / "migrations"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("db/migrations not found beside or inside the marketfeed package")


DAY_NS = 86_400 * 1_000_000_000
MIGRATION_LOCK = 0x6D66_6462  # "mfdb": any constant shared by every marketfeed process
PARTITION_LOCK = 0x6D66_7074  # "mfpt": partition DDL, taken by start-up and by the writer
# "mfwr": one flush at a time across processes, so the duplicate check of one sees what another wrote.
WRITE_LOCK = 0x6D66_7772
DROP_LOG_EVERY_S = 10.0  # an outage drops a batch per engine step: summarise instead of one line each
COMPACT_EVERY_S = 60.0  # how often the writer merges the blocks of closed minutes
COMPACT_MINUTES = 10  # how many closed minutes back it looks each time
#: Symbol-minutes merged per statement (each holds the writer's lock), and how long a round of merging
#: may go on: it runs in the writer's task, so no flush happens meanwhile. A statement costs the
#: database about 10 us a tick it merges, plus 0.6 s to find the minutes at 1,000 symbols (docs/
#: performance.md, section 3): the default universe's minute (20 symbols at 10 steps a second, 12,000
#: ticks) merges in one short statement, but 1,000 symbols at 25 steps a second make 1,500,000 ticks
#: a minute, 15-20 s of merging, a tenth of it in a round. A round that runs out of time with minutes
#: left is followed by the next COMPACT_AGAIN_S later rather than a minute later: about a fifth of
#: the writer's time, and what a round does not reach stays unmerged (read more slowly, never
#: wrongly) rather than the writer falling behind.
COMPACT_GROUPS = 100
COMPACT_BUDGET_S = 2.0
COMPACT_AGAIN_S = 10.0

EventRow = tuple[int, int, str, str]
INSERT_EVENT = "INSERT INTO events (ts, at_step, type, record) VALUES ($1, $2, $3, $4::jsonb)"
Conn = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy

#: What a lost or restarting database raises; the writer retries on any of them.
DB_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)

#: How far before its last tick a block may start: the widest stored block's last_gseq - first_gseq,
#: which the blocks' trigger keeps (at most blocks.SPAN - 1). A live server's blocks span tens of gseqs:
#: a read that looked SPAN back read thousands of blocks it then left out.
WIDEST = "(SELECT span FROM tick_blocks_span)"
#: A block's ticks, a row each, in Tick's field order (Tick(*row) is the cheapest way to 10,000 of them).
UNNEST = (
    "SELECT b.symbol, t.seq, t.gseq, t.ts, t.price, t.bid, t.ask, t.size, t.vol FROM {blocks} b, "
    "unnest(b.gseq, b.seq, b.ts, b.price, b.bid, b.ask, b.size, b.vol)"
    " AS t(gseq, seq, ts, price, bid, ask, size, vol)"
)
#: One symbol's blocks holding ticks past a gseq, in order, with their ticks' columns in Tick's order.
SYMBOL_BLOCKS = (
    "SELECT symbol, seq, gseq, ts, price, bid, ask, size, vol FROM tick_blocks WHERE symbol = $1"
    f" AND first_gseq >= $2::bigint - {WIDEST} AND last_gseq > $2 ORDER BY first_gseq LIMIT $3"
)
#: Each symbol's blocks of the minutes in [$1, $2), merged into blocks of up to BLOCK_TICKS (cut where
#: gseq // SPAN changes, as the writer cuts them) in one statement, $3 symbol-minutes at most, oldest
#: first: the old blocks deleted, candles_1m less their volume, trades and pv (the trigger adds those
#: back for the merged blocks; the rest of a minute's row is a min or max, the same either way), the
#: merged blocks inserted. A symbol-minute with a block of another minute of its symbol between its
#: first and last gseq (a clock set back) is left as it is: merged, it would overlap that block.
#: `whole` is MATERIALIZED so that this test runs once per symbol-minute: inlined, the planner ran it
#: once per block against every block of its symbol (6,600,000 comparisons for 100 symbols' minute,
#: 0.7 of its 1.7 s; for 1,000 symbols' two minutes the statement passed its 60 s timeout).
COMPACT = f"""
WITH minutes AS (
    SELECT symbol, minute, min(first_gseq) AS g0, max(last_gseq) AS g1, array_agg(first_gseq) AS starts
    FROM tick_blocks WHERE minute >= $1 AND minute < $2
    GROUP BY symbol, minute
    -- more blocks than merging could leave (full ones, and one more at each multiple of SPAN crossed)
    HAVING count(*) > (sum(trades)::bigint + {BLOCK_TICKS} - 1) / {BLOCK_TICKS}
                      + max(last_gseq) / {SPAN} - min(first_gseq) / {SPAN}
), whole AS MATERIALIZED (
    SELECT m.* FROM minutes m WHERE NOT EXISTS (
        SELECT 1 FROM tick_blocks o
        WHERE o.symbol = m.symbol AND o.first_gseq BETWEEN m.g0 AND m.g1 AND o.minute <> m.minute)
    ORDER BY m.minute, m.symbol LIMIT $3
), keys AS (
    SELECT symbol, minute, unnest(starts) AS first_gseq FROM whole
), old AS (
    -- By whole keys: joined on (symbol, minute) alone, the planner without statistics probed the
    -- (minute, first_gseq) index and read the whole minute's blocks for each symbol (15 s a statement).
    DELETE FROM tick_blocks b USING keys k
    WHERE b.symbol = k.symbol AND b.first_gseq = k.first_gseq AND b.minute = k.minute
      AND b.minute >= $1 AND b.minute < $2
    RETURNING b.*
), uncounted AS (
    UPDATE candles_1m c SET volume = c.volume - o.volume, trades = c.trades - o.trades, pv = c.pv - o.pv
    FROM (SELECT symbol, minute, sum(volume) AS volume, sum(trades) AS trades, sum(pv) AS pv
          FROM old GROUP BY 1, 2) o
    WHERE c.symbol = o.symbol AND c.start = o.minute
)
INSERT INTO tick_blocks
SELECT symbol, minute, min(gseq), max(gseq), min(ts), max(ts),
       (array_agg(price ORDER BY gseq))[1], max(price), min(price), (array_agg(price ORDER BY gseq DESC))[1],
       sum(size), count(*), sum(price * size),
       array_agg(gseq ORDER BY gseq), array_agg(seq ORDER BY gseq), array_agg(ts ORDER BY gseq),
       array_agg(price ORDER BY gseq), array_agg(bid ORDER BY gseq), array_agg(ask ORDER BY gseq),
       array_agg(size ORDER BY gseq), array_agg(vol ORDER BY gseq)
FROM (SELECT t.*, (row_number() OVER (PARTITION BY t.symbol, t.minute, t.gseq / {SPAN} ORDER BY t.gseq) - 1)
                  / {BLOCK_TICKS} AS part
      FROM (SELECT o.symbol, o.minute, u.*
            FROM old o, unnest(o.gseq, o.seq, o.ts, o.price, o.bid, o.ask, o.size, o.vol)
                AS u(gseq, seq, ts, price, bid, ask, size, vol)) t) x
GROUP BY symbol, minute, gseq / {SPAN}, part
"""
#: The gseqs stored in blocks that may hold any of (lo, hi]: the writer's duplicate check.
STORED_GSEQS = (
    f"SELECT unnest(gseq) FROM tick_blocks WHERE first_gseq >= $1::bigint - {WIDEST} AND first_gseq <= $2"
    " AND last_gseq > $1"
)


#: The gseq range of the ticks of some symbols in the minutes starting in [$2, $3): candles_1m keeps
#: each symbol-minute's first and last gseq in the blocks' own transaction. It turns a time range
#: into a range of the (symbol, first_gseq) key. Asked on its own: inside a larger query the planner
#: took max(last_gseq) from the last_gseq index, filtering 135,000 minutes to find one (50 ms).
SYMBOL_MINUTES = (
    "SELECT min(first_gseq), max(last_gseq) FROM candles_1m"
    " WHERE symbol = ANY($1::text[]) AND start >= $2 AND start < $3"
)
#: The same for every symbol, from the blocks' (minute, first_gseq) index.
ALL_MINUTES = "SELECT min(first_gseq), max(last_gseq) FROM tick_blocks WHERE minute >= $1 AND minute < $2"


def first_minute(ns: int) -> int:
    """The start of the minute that holds `ns`: the first minute overlapping a range from `ns`."""
    return max(ns // MINUTE_NS * MINUTE_NS, -(2**63))


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path


def plan(directory: Path, *, timescale: bool) -> list[Migration]:
    """The migration files to apply, in version order, for one flavour of the database."""
    chosen: dict[int, Migration] = {}
    flavour = "timescale" if timescale else "postgres"
    for path in sorted(directory.glob("*.sql")):
        stem = path.name.removesuffix(".sql")
        parts = stem.split(".")
        if len(parts) == 2 and parts[1] != flavour:
            continue
        version = int(stem.split("_", 1)[0])
        if version in chosen and len(parts) == 1:
            continue  # a flavour-specific file wins over a shared one of the same version
        chosen[version] = Migration(version, path.name, path)
    return [chosen[v] for v in sorted(chosen)]


def choose_timescale(*, applied: Iterable[str], available: bool, installed: bool, preloaded: bool) -> bool:
    """Whether a database gets (or has) the TimescaleDB schema.

    Once a migration is recorded the flavour is fixed: a plain database whose server later gains the
    extension must not start applying TimescaleDB migrations to tables that are not hypertables. A
    fresh database uses TimescaleDB when it is installed, or available and preloaded (CREATE EXTENSION
    of a library that is not in shared_preload_libraries is a FATAL error that drops the connection).
    """
    flavours = {name.split(".")[1] for name in applied if name.count(".") == 2}
    if len(flavours) > 1:
        raise RuntimeError(f"schema_migrations mixes flavours {sorted(flavours)}: fix it by hand")
    if flavours:
        return flavours == {"timescale"}
    return installed or (available and preloaded)


def partition_name(day: int) -> str:
    """The partition of one UTC day (days since the epoch): tick_blocks_YYYYMMDD."""
    return "tick_blocks_" + time.strftime("%Y%m%d", time.gmtime(day * 86_400))


def partition_day(name: str) -> int | None:
    """The UTC day a partition name stands for; None for tick_blocks_default or anything else."""
    m = re.fullmatch(r"tick_blocks_(\d{8})", name)
    return calendar.timegm(time.strptime(m[1], "%Y%m%d")) // 86_400 if m else None


def event_row(record: Mapping[str, Any]) -> EventRow:
    return (int(record["ts"]), int(record["at_step"]), str(record["type"]), orjson.dumps(record).decode())


class PostgresHistory:
    name = "postgres"

    def __init__(
        self,
        dsn: str,
        *,
        flush_ms: int = 250,
        flush_rows: int = 10_000,
        max_backlog_rows: int = 2_000_000,
        partitions_ahead: int = 2,
        retention_days: int | None = None,
        migrations: Path | None = None,
        spill_path: Path | None = None,
        close_timeout_s: float = 30.0,
    ) -> None:
        self.dsn = dsn
        self._flush_s = flush_ms / 1000
        self._flush_rows = flush_rows
        self._max_backlog = max_backlog_rows
        self._ahead = partitions_ahead
        self._retention_days = retention_days
        self._migrations = migrations if migrations is not None else migrations_dir()
        self._pool: asyncpg.Pool | None = None
        self._pending: list[TickBatch] = []
        self._pending_rows = 0
        self._inflight_rows = 0
        self._state: str | None = None
        self._events: list[EventRow] = []  # few and small: kept in memory through any outage
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._flush_lock = asyncio.Lock()
        self._partitions: set[int] = set()  # days (ts // DAY_NS) known to have a partition
        self._encoder = BlockEncoder()
        self._error: str | None = None
        self.timescale = False
        # Every tick up to this gseq is stored (the engine is the only writer and gseq only grows): what
        # is not newer is a re-delivery or a regeneration, and skipped.
        self._max_gseq = 0
        self.rows_written = 0
        self.rows_dropped = 0
        self.rows_spilled = 0
        self._spill_path = spill_path
        self._spill_file: BinaryIO | None = None
        self._spill_rows = 0
        self._close_timeout = close_timeout_s
        self._drops_logged = 0  # rows_dropped at the last log line
        self._drop_logged_at = 0.0
        self.flushes = 0
        self._newest_ts: int | None = None  # of the ticks written: which minutes are closed
        self._compact_at = time.monotonic() + COMPACT_EVERY_S
        self.merge_left = False  # the last round of merging ran out of time with minutes left
        self.write_errors = 0
        self.write_lag_s = 0.0

    # --- lifecycle -------------------------------------------------------------------------------
    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("PostgresHistory used before start()")
        return self._pool

    async def start(self) -> None:
        # A short connect timeout: an unreachable host (not a refused port) shows as degraded in
        # seconds, not after the 60 s default.
        # The writer's connection and three for queries.
        self._pool = await asyncpg.create_pool(
            self.dsn, min_size=1, max_size=4, command_timeout=60, timeout=10
        )
        try:
            async with self.pool.acquire() as conn:
                await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
                try:
                    await self._migrate(conn)
                    if not self.timescale:
                        today = time.time_ns() // DAY_NS
                        await self._ensure_partitions(conn, range(today - 1, today + 1 + self._ahead))
                        await self._apply_retention(conn)
                finally:
                    await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
            self._max_gseq = await self._stored_gseq()
        except BaseException:
            self._pool.terminate()  # a failed start must not leave connections behind
            self._pool = None
            raise
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="postgres-writer")

    async def _stored_gseq(self) -> int:
        """The gseq up to which every tick is stored: the watermark the writer commits with each flush
        (0007_stored_gseq.sql). A database without one has its newest gseq for that: every stored tick
        lies inside its minute's gseq range, so it is the newest last_gseq of candles_1m (an index)."""
        mark = await self.pool.fetchval("SELECT stored_gseq FROM engine_state WHERE id = 1")
        if mark is not None:
            return int(mark)
        return int(await self.pool.fetchval("SELECT max(last_gseq) FROM candles_1m") or 0)

    async def _migrate(self, conn: Conn) -> None:
        """Apply what is missing; the caller holds the migration lock."""
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY,"
            " name text NOT NULL, applied timestamptz NOT NULL DEFAULT now())"
        )
        applied = {
            r["version"]: r["name"] for r in await conn.fetch("SELECT version, name FROM schema_migrations")
        }
        ext = await conn.fetchrow(
            "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') AS available,"
            " EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') AS installed,"
            " current_setting('shared_preload_libraries') ~ 'timescaledb' AS preloaded"
        )
        if ext is None:
            raise RuntimeError("could not read the server's extensions")
        self.timescale = choose_timescale(
            applied=applied.values(),
            available=ext["available"],
            installed=ext["installed"],
            preloaded=ext["preloaded"],
        )
        if self.timescale and not (ext["available"] or ext["installed"]):
            raise RuntimeError("this database was set up with TimescaleDB, which this server does not have")
        if not self.timescale and ext["available"] and not applied:
            log.warning(
                "timescaledb is installed on the server but not in shared_preload_libraries: "
                "using plain PostgreSQL partitions for this database (the choice is permanent)"
            )
        if self.timescale:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        for m in plan(self._migrations, timescale=self.timescale):
            if m.version in applied:
                continue
            async with conn.transaction():
                await conn.execute(m.path.read_text())
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", m.version, m.name
                )
            log.info("applied migration %s", m.name)
        if self.timescale:
            await self._timescale_retention(conn)

    async def _timescale_retention(self, conn: Conn) -> None:
        """Make the hypertable's one retention policy match the setting (none when unset: keep all)."""
        current = await conn.fetchval(
            "SELECT (config->>'drop_after')::bigint FROM timescaledb_information.jobs"
            " WHERE proc_name = 'policy_retention' AND hypertable_name = 'tick_blocks'"
        )
        wanted = self._retention_days * DAY_NS if self._retention_days else None
        if current == wanted:
            return
        # add_retention_policy(if_not_exists) keeps an old policy with another drop_after: replace it.
        await conn.execute("SELECT remove_retention_policy('tick_blocks', if_exists => TRUE)")
        if wanted is not None:
            await conn.execute("SELECT add_retention_policy('tick_blocks', drop_after => $1::bigint)", wanted)
        log.info("TimescaleDB retention: %s", f"{self._retention_days} days" if wanted else "keep all")

    async def _ensure_partitions(self, conn: Conn, days: Iterable[int]) -> None:
        missing = sorted(set(days) - self._partitions)
        for day in missing:
            await self._create_partition(conn, day)
            self._partitions.add(day)
        if missing:
            # New partitions appear once a day as time moves on: the moment to drop the old ones too.
            await self._apply_retention(conn)

    async def _create_partition(self, conn: Conn, day: int) -> None:
        # Names and bounds are computed here from integers, never from input: safe to format into DDL.
        name, lo, hi = partition_name(day), day * DAY_NS, (day + 1) * DAY_NS
        # A block row stays in its page as it is, uncompressed (history/blocks.py, BLOCK_TICKS).
        bounds, storage = f"FOR VALUES FROM ({lo}) TO ({hi})", "WITH (toast_tuple_target = 8160)"
        async with conn.transaction():
            # One creator at a time across processes: two concurrent CREATE TABLE IF NOT EXISTS of one
            # name can still fail (on pg_type's unique index).
            await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK)
            if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name):
                return
            stranded = await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM tick_blocks_default WHERE minute >= $1 AND minute < $2)", lo, hi
            )
            if not stranded:
                await conn.execute(f"CREATE TABLE {name} PARTITION OF tick_blocks {bounds} {storage}")
                return
            # Rows of that day already sit in the DEFAULT partition, and PostgreSQL refuses a partition
            # that would leave rows of its range there: without this the writer would fail forever.
            # Move them into a new table and attach it, in one transaction.
            await conn.execute(
                f"CREATE TABLE {name} (LIKE tick_blocks INCLUDING DEFAULTS INCLUDING CONSTRAINTS) {storage}"
            )
            moved = await conn.execute(
                f"WITH moved AS (DELETE FROM tick_blocks_default WHERE minute >= {lo} AND minute < {hi}"
                f" RETURNING *) INSERT INTO {name} SELECT * FROM moved"
            )
            await conn.execute(f"ALTER TABLE tick_blocks ATTACH PARTITION {name} {bounds}")
            log.warning("moved %s blocks of %s out of the default partition", moved.split()[-1], name)

    async def _apply_retention(self, conn: Conn) -> None:
        if not self._retention_days:
            return
        cutoff = time.time_ns() // DAY_NS - self._retention_days  # keep this many whole days and today
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK)
            rows = await conn.fetch(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                " WHERE i.inhparent = 'tick_blocks'::regclass"
            )
            for r in rows:
                day = partition_day(r["relname"])
                if day is not None and day < cutoff:
                    await conn.execute(f'DROP TABLE IF EXISTS "{r["relname"]}"')
                    self._partitions.discard(day)
                    log.info("retention: dropped partition %s", r["relname"])
            await conn.execute("DELETE FROM tick_blocks_default WHERE minute < $1", cutoff * DAY_NS)
            await conn.execute("DELETE FROM candles_1m WHERE start < $1", cutoff * DAY_NS)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._flush_until_empty(), self._close_timeout)
            except DB_ERRORS as exc:
                # Never lost silently: spilled for the next start, or counted and logged as dropped. The
                # engine state that goes with them was not stored either, so a restarted engine resumes
                # before them and generates them again.
                log.error("could not flush %d pending rows at shutdown: %s", self._pending_rows, exc)
                if self._events:
                    log.error("lost %d market events at shutdown: %s", len(self._events), self._events)
                batches, self._pending, self._pending_rows = self._pending, [], 0
                for b in batches:
                    self._spill_or_drop(b)
                self._log_drops(force=True)
            if self._spill_file is not None:
                self._spill_file.close()  # what could not be written stays there for the next start
                self._spill_file = None
            try:
                await asyncio.wait_for(self._pool.close(), 10)
            except DB_ERRORS:
                self._pool.terminate()
            self._pool = None

    async def _flush_until_empty(self) -> None:
        while self._pending or self._events:
            try:
                await self.flush()
            except DB_ERRORS:
                await asyncio.sleep(0.5)

    # --- writing ---------------------------------------------------------------------------------
    def write(self, batch: TickBatch, state: str | None = None) -> None:
        self._pending.append(batch)
        self._pending_rows += len(batch)
        if state is not None:
            self._state = state
        while self._pending_rows > self._max_backlog and len(self._pending) > 1:
            oldest = self._pending.pop(0)
            self._pending_rows -= len(oldest)
            self._spill_or_drop(oldest)
        if self._pending_rows >= self._flush_rows and self._wake is not None:
            self._wake.set()

    def write_event(self, record: Mapping[str, Any]) -> None:
        # Pending events are committed with the batches written after them, never later.
        self._events.append(event_row(record))

    def _spill_or_drop(self, batch: TickBatch) -> None:
        """Past the in-memory bound, the oldest ticks go to a local file (replayed first when the
        database is back); without a spill file they are counted and logged as dropped."""
        if self._spill_path is None:
            self.rows_dropped += len(batch)
            self._log_drops()
            return
        if self._spill_file is None:
            self._spill_path.parent.mkdir(parents=True, exist_ok=True)
            self._spill_file = self._spill_path.open("ab")
            log.warning("history backlog over %d rows: spilling to %s", self._max_backlog, self._spill_path)
        self._spill_file.write(b"\n".join(batch.encoded) + b"\n")
        self._spill_file.flush()
        self.rows_spilled += len(batch)
        self._spill_rows += len(batch)

    def _log_drops(self, *, force: bool = False) -> None:
        new = self.rows_dropped - self._drops_logged
        now = time.monotonic()
        if new and (force or now - self._drop_logged_at >= DROP_LOG_EVERY_S):
            log.error(
                "history backlog over %d rows and no spill file: dropped %d ticks (%d in all)",
                self._max_backlog, new, self.rows_dropped,
            )  # fmt: skip
            self._drops_logged, self._drop_logged_at = self.rows_dropped, now

    async def _replay_spill(self) -> None:
        """Write the spilled ticks (older than anything pending) before the pending ones."""
        if self._spill_path is None or not self._spill_path.exists() or self._spill_path.stat().st_size == 0:
            return
        if self._spill_file is not None:
            self._spill_file.close()
            self._spill_file = None
        lines = await asyncio.to_thread(self._spill_path.read_bytes)
        ticks = [Tick.from_json(line) for line in lines.splitlines() if line]
        for i in range(0, len(ticks), 100_000):
            chunk = self._encoder.columns(ticks[i : i + 100_000])
            # A retry after a partial replay re-sends rows already stored: the gseq check skips them.
            # The spill is older than anything pending, in gseq order: all up to this chunk is stored.
            mark = max(self._max_gseq, int(chunk.gseq.max()))
            self.rows_written += await self._commit(chunk, None, stored_gseq=mark)
            self._max_gseq = mark
        self._spill_path.unlink()
        self._spill_rows = 0
        log.info("replayed %d spilled ticks into the history", len(ticks))

    async def _run(self) -> None:
        if self._wake is None:
            raise RuntimeError("PostgresHistory._run before start()")
        backoff = self._flush_s
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), backoff)
            self._wake.clear()
            try:
                await self.flush()
                backoff = self._flush_s
            except DB_ERRORS as exc:
                if self._error is None:
                    log.warning("history database unavailable, retrying with backoff: %s", exc)
                backoff = min(max(2 * backoff, 0.25), 5.0)
            self._log_drops()  # a summary of what the outage dropped since the last line
            if time.monotonic() >= self._compact_at:
                self.merge_left = False
                try:
                    await self.compact()
                except DB_ERRORS as exc:  # the blocks stay as they are; the next round tries again
                    log.warning("history: merging the blocks of closed minutes failed: %s", exc)
                    self.merge_left = False  # not sooner: the database is having trouble
                wait = COMPACT_AGAIN_S if self.merge_left else COMPACT_EVERY_S
                self._compact_at = time.monotonic() + wait

    async def compact(self) -> int:
        """Merge each symbol's blocks of the closed minutes (COMPACT_MINUTES of them, up to the one
        before the newest flushed tick's) into blocks of up to BLOCK_TICKS: a live server's 250 ms
        flushes leave blocks of a few ticks, which cost a row each to store and to read. candles_1m
        stays as it was (COMPACT subtracts what its trigger adds back). Oldest first, for at most
        COMPACT_BUDGET_S: what is left waits for the next round (`merge_left`). The number of blocks
        made."""
        if self.timescale or self._newest_ts is None:  # TimescaleDB compresses old chunks instead
            return 0
        hi = first_minute(self._newest_ts) - MINUTE_NS
        made, until = 0, time.monotonic() + COMPACT_BUDGET_S
        self.merge_left = True  # until a statement finds nothing left to merge
        while time.monotonic() < until:  # COMPACT_GROUPS symbol-minutes at a time, each its own transaction
            async with self._flush_lock, self.pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK)
                # Its sort of the unnested ticks spilled to disk at the default 4 MB.
                await conn.execute("SET LOCAL work_mem = '64MB'")
                status = await conn.execute(COMPACT, hi - COMPACT_MINUTES * MINUTE_NS, hi, COMPACT_GROUPS)
            if (blocks := int(status.split()[-1])) == 0:  # every symbol-minute merged leaves a block
                self.merge_left = False
                break
            made += blocks
        return made

    async def flush(self) -> None:
        async with self._flush_lock:
            try:
                await self._replay_spill()
            except BaseException as exc:
                self.write_errors += 1
                self._error = str(exc) or type(exc).__name__
                raise
            if not self._pending and not self._events:
                return
            batches, state, events = self._pending, self._state, self._events
            self._pending, self._pending_rows, self._state, self._events = [], 0, None, []
            # Rows being written still count as backlog until their transaction commits.
            self._inflight_rows = sum(len(b) for b in batches)
            # Only what is newer than the newest stored row, once per gseq: a re-delivered tick, or one
            # regenerated after a restart, keeps the original. Made into columns in a thread: a flush of
            # 50,000 ticks takes milliseconds.
            ticks = [t for b in batches for t in b.ticks]
            try:
                columns = await asyncio.to_thread(self._encoder.columns, ticks, self._max_gseq)
                mark = max(self._max_gseq, int(columns.gseq.max())) if len(columns) else self._max_gseq
                written = await self._commit(columns, state, events, stored_gseq=mark)
            except BaseException as exc:
                self.write_errors += 1
                self._error = str(exc) or type(exc).__name__
                self._pending[:0] = batches  # keep them, in order, for the next attempt
                self._events[:0] = events
                self._pending_rows += sum(len(b) for b in batches)
                if self._state is None:
                    self._state = state
                raise
            finally:
                self._inflight_rows = 0
            self._error = None
            self.rows_written += written
            self._max_gseq = mark
            if len(columns):
                newest = int(columns.arrays["ts"].max())
                self._newest_ts = newest if self._newest_ts is None else max(self._newest_ts, newest)
            self.flushes += 1
            oldest = min((b.ticks[0].ts for b in batches if b.ticks), default=time.time_ns())
            self.write_lag_s = max(0.0, (time.time_ns() - oldest) / 1e9)

    async def _commit(
        self, columns: Columns, state: str | None, events: list[EventRow] | None = None, *, stored_gseq: int
    ) -> int:
        """Write the ticks of `columns` less any already stored, then the state, events and watermark
        that go with them, in one transaction; the number of ticks written."""
        if not len(columns) and state is None and not events:
            return 0
        async with self.pool.acquire() as conn:
            days = columns.days(DAY_NS)
            if days and not self.timescale:
                # Every day with ticks, and `ahead` days past the newest, so the partition DDL (which
                # locks the parent) happens days before the first tick of a day arrives.
                needed = days | set(range(max(days) + 1, max(days) + 1 + self._ahead))
                if not needed <= self._partitions:
                    await self._ensure_partitions(conn, needed)
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK)
                runs = None
                if len(columns):
                    lo, hi = int(columns.gseq.min()), int(columns.gseq.max())
                    stored = [r[0] for r in await conn.fetch(STORED_GSEQS, lo - 1, hi)]
                    if stored:
                        log.warning("history: some ticks were already stored; writing the rest")
                        columns, runs = columns.without(np.array(stored, dtype=np.int64))
                if len(columns):
                    payload, _ = await asyncio.to_thread(self._encoder.encode, columns, runs)
                    await conn.copy_to_table(
                        "tick_blocks", source=io.BytesIO(payload), columns=BLOCK_COLUMNS, format="binary"
                    )
                await self._save_state(conn, state, events, stored_gseq)
        return len(columns)

    @staticmethod
    async def _save_state(
        conn: Conn, state: str | None, events: list[EventRow] | None, stored_gseq: int
    ) -> None:
        """The engine state, the events and the watermark that go with the ticks of a flush."""
        if events:
            await conn.executemany(INSERT_EVENT, events)
        # The watermark with every flush; the state only when the engine gave a new one.
        await conn.execute(
            "INSERT INTO engine_state (id, state, stored_gseq, updated) VALUES (1, $1, $2, now()) "
            "ON CONFLICT (id) DO UPDATE SET state = coalesce(excluded.state, engine_state.state),"
            " stored_gseq = excluded.stored_gseq, updated = excluded.updated",
            state,
            stored_gseq,
        )

    # --- reading ---------------------------------------------------------------------------------
    async def ticks(
        self,
        *,
        symbols: SymbolSet,
        start_ns: int | None = None,
        end_ns: int | None = None,
        after_gseq: int = 0,
        limit: int = 1000,
    ) -> list[Tick]:
        if limit <= 0:
            return []
        async with self.pool.acquire() as conn:
            if symbols is not None and len(symbols) == 1 and start_ns is None and end_ns is None:
                return await self._symbol_page(conn, next(iter(symbols)), after_gseq, limit)
            return await self._scan(conn, symbols, start_ns, end_ns, after_gseq, limit)

    @staticmethod
    async def _symbol_page(conn: Conn, symbol: str, after: int, limit: int) -> list[Tick]:
        """One symbol's next `limit` ticks. Its blocks never overlap, so they come in order from its
        key, `count` blocks a round, and only the first can hold ticks up to the cursor. The first
        round asks for as many blocks as a page of 50-tick blocks needs; the next ones by what a block
        held. The arrays are turned into ticks here: unnesting them in SQL and sorting the rows there
        took twice as long (20 + 6 ms against 6 + 7 ms for 10,000 ticks of 60-tick blocks)."""
        out: list[Tick] = []
        count, read = limit // 50 + 1, 0
        while True:
            blocks = await conn.fetch(SYMBOL_BLOCKS, symbol, after, count)
            for b in blocks:
                ticks = list(map(Tick, itertools.repeat(b[0]), *b[1:]))
                out += ticks if ticks[0].gseq > after else [t for t in ticks if t.gseq > after]
            if len(out) >= limit or len(blocks) < count:
                return out[:limit]
            after, read = out[-1].gseq, read + len(blocks)
            missing = limit - len(out)
            count = min(missing, missing * read // len(out) * 5 // 4 + 1)

    @staticmethod
    async def _scan(
        conn: Conn, symbols: SymbolSet, start_ns: int | None, end_ns: int | None, after: int, limit: int
    ) -> list[Tick]:
        """Ticks in gseq order, read in windows of gseq (lo, hi]: every tick of a window is in a block
        that starts in [lo - WIDEST, hi], so each window's ticks are whole and in order. A window that
        comes back short jumps to the next block that matches and widens by the density it saw."""

        lo, top = after, 2**63 - 1
        blocks: list[str] = []
        ticks: list[str] = []
        values: list[Any] = []

        def param(value: Any) -> str:
            values.append(value)
            return f"${len(values)}"

        if symbols is not None:
            blocks.append(f"b.symbol = ANY({param(sorted(symbols))}::text[])")
        if start_ns is not None or end_ns is not None:
            first = start_ns if start_ns is not None else 0
            end = end_ns if end_ns is not None else 2**63 - 1
            # The ticks of those minutes lie in a gseq range: start there, stop at its end.
            if symbols is not None:
                row = await conn.fetchrow(SYMBOL_MINUTES, sorted(symbols), first_minute(first), end)
            else:
                row = await conn.fetchrow(ALL_MINUTES, first_minute(first), end)
            if row is None or row[0] is None:
                return []
            lo, top = max(lo, row[0] - 1), row[1]
            s, e, m = param(first), param(end), param(first_minute(first))
            blocks.append(f"b.last_ts >= {s} AND b.first_ts < {e} AND b.minute >= {m} AND b.minute < {e}")
            ticks.append(f"t.ts >= {s} AND t.ts < {e}")
        # The window's bounds follow the conditions' parameters.
        a, b, c = (f"${len(values) + k}" for k in (1, 2, 3))
        window = UNNEST.format(blocks="tick_blocks") + " WHERE " + " AND ".join(
            [f"b.first_gseq >= {a}::bigint - {WIDEST} AND b.first_gseq <= {b} AND b.last_gseq > {a}", *blocks,
             f"t.gseq > {a} AND t.gseq <= {b}", *ticks]
        ) + f" ORDER BY t.gseq LIMIT {c}"  # fmt: skip
        following = "SELECT min(b.first_gseq) FROM tick_blocks b WHERE " + " AND ".join(
            [f"b.first_gseq > {a} AND b.first_gseq <= {b}", *blocks]
        )
        out: list[Tick] = []
        width, tail = max(limit, 64), False
        while lo < top:
            hi = lo + width
            rows = await conn.fetch(window, *values, lo, hi, limit - len(out))
            out += [Tick(*r) for r in rows]
            if len(out) >= limit:
                break
            nxt = await conn.fetchval(following, *values, hi, top)
            if nxt is None:
                if tail:
                    break
                tail, lo, width = True, hi, SPAN  # what the blocks starting at or before hi hold past it
                continue
            missing = limit - len(out)
            width = min(max(width * missing // len(rows) if rows else width, width), 16 * width)
            lo, width = hi, max(width, nxt - hi + width)
        return out

    async def candles(
        self, *, symbol: str, interval: Interval, start_ns: int | None, end_ns: int | None, limit: int
    ) -> list[Candle]:
        lo = start_ns if start_ns is not None else 0
        hi = end_ns if end_ns is not None else 2**63 - 1
        if interval.nanoseconds % MINUTE_NS:
            return [
                Candle.of(*r[:8])
                for r in await self._aggregate_ticks(symbol, interval.nanoseconds, lo, hi, limit)
            ]
        # Whole minutes come from candles_1m; the part-minutes at either end of the range (a range
        # need not start on a minute) from the ticks. Then minutes are merged into the interval.
        first = min(-(-lo // MINUTE_NS) * MINUTE_NS, hi)
        last = max(hi // MINUTE_NS * MINUTE_NS, first)
        minutes: list[Bucket] = []
        if lo < first:
            minutes += await self._aggregate_ticks(symbol, MINUTE_NS, lo, first, 1)
        rows = await self.pool.fetch(
            "SELECT start, open, high, low, close, volume, trades, pv, first_gseq, last_gseq FROM candles_1m"
            " WHERE symbol = $1 AND start >= $2 AND start < $3 ORDER BY start LIMIT $4",
            symbol,
            first,
            last,
            (limit + 1) * (interval.nanoseconds // MINUTE_NS),
        )
        minutes += [tuple(r) for r in rows]
        if last < hi:
            minutes += await self._aggregate_ticks(symbol, MINUTE_NS, last, hi, 1)
        return merge_buckets(minutes, interval.nanoseconds, limit)

    async def _aggregate_ticks(
        self, symbol: str, interval_ns: int, lo: int, hi: int, limit: int
    ) -> list[Bucket]:
        """Buckets (candles.Bucket) straight from the ticks."""
        async with self.pool.acquire() as conn:
            g0, g1 = await conn.fetchrow(SYMBOL_MINUTES, [symbol], first_minute(lo), hi) or (None, None)
            if g0 is None:
                return []
            # The same definition as the SQLite store: first and last trade by gseq per bucket. gseq as
            # a double is exact below 2^53.
            rows = await conn.fetch(
                """
                SELECT k * $1 AS start, (min(ARRAY[gseq::float8, price]))[2], max(price), min(price),
                       (max(ARRAY[gseq::float8, price]))[2], sum(size), count(*), sum(price * size),
                       min(gseq), max(gseq)
                FROM (SELECT t.ts / $1 AS k, t.gseq, t.price, t.size
                      FROM tick_blocks b, unnest(b.gseq, b.ts, b.price, b.size) AS t(gseq, ts, price, size)
                      WHERE b.symbol = $2 AND b.first_gseq BETWEEN $7 AND $8 AND b.minute >= $6
                        AND b.minute < $4 AND b.last_ts >= $3 AND b.first_ts < $4
                        AND t.ts >= $3 AND t.ts < $4) x
                GROUP BY k ORDER BY k LIMIT $5
                """,
                interval_ns, symbol, lo, hi, limit, first_minute(lo), g0, g1,
            )  # fmt: skip
        return [tuple(r) for r in rows]

    async def events(
        self, *, start_ns: int | None = None, end_ns: int | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            "SELECT record FROM events WHERE ts >= $1 AND ts < $2 ORDER BY id LIMIT $3",
            start_ns if start_ns is not None else 0,
            end_ns if end_ns is not None else 2**63 - 1,
            limit,
        )
        return [orjson.loads(r["record"]) for r in rows]

    async def load_state(self) -> str | None:
        value = await self.pool.fetchval("SELECT state FROM engine_state WHERE id = 1")
        return str(value) if value is not None else None

    # --- observability ---------------------------------------------------------------------------
    def health(self) -> Health:
        if self._error is not None:
            return Health.degraded(f"postgres: {self._error}")
        return Health.ok("timescaledb" if self.timescale else "postgresql")

    def metrics(self) -> dict[str, float]:
        return {
            "history_rows_written_total": self.rows_written,
            "history_rows_dropped_total": self.rows_dropped,
            "history_rows_spilled_total": self.rows_spilled,
            "history_spill_rows": self._spill_rows,
            "history_flushes_total": self.flushes,
            "history_write_errors_total": self.write_errors,
            "history_backlog_rows": self._pending_rows + self._inflight_rows,
            "history_backlog_limit_rows": self._max_backlog,
            "history_write_lag_seconds": self.write_lag_s,
        }
