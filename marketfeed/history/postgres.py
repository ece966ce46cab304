"""History in PostgreSQL, or TimescaleDB when its extension is available (asyncpg).

Start-up applies the versioned migrations in db/migrations idempotently (under an advisory lock, so
processes starting together do not race): `NNNN_name.timescale.sql` when the extension is usable,
`NNNN_name.postgres.sql` otherwise, `NNNN_name.sql` for both. A database keeps the flavour its first
migration chose. A background writer batches ticks and writes them with binary COPY, with the engine
state: straight into `ticks` when every gseq is newer than the newest stored one, otherwise through a
staging table and an insert of what is not there yet (by gseq). A small flush is one transaction; a
large one is split by symbol over `writers` connections, whose backends each take a share of the
per-row work, and the share with the engine state commits last, after every other. If the database
is down it retries with capped exponential backoff, keeping a bounded backlog; rows beyond the bound
go to a spill file when one is configured, else they are counted and logged as dropped.
"""

from __future__ import annotations

import asyncio
import bisect
import calendar
import contextlib
import logging
import operator
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import asyncpg
import orjson

from marketfeed.health import Health
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


COLUMNS = ("gseq", "symbol", "seq", "ts", "price", "bid", "ask", "size", "vol")
TICK_FIELDS = ("symbol", "seq", "gseq", "ts", "price", "bid", "ask", "size", "vol")
DAY_NS = 86_400 * 1_000_000_000
MIGRATION_LOCK = 0x6D66_6462  # "mfdb": any constant shared by every marketfeed process
PARTITION_LOCK = 0x6D66_7074  # "mfpt": partition DDL, taken by start-up and by the writer
DROP_LOG_EVERY_S = 10.0  # an outage drops a batch per engine step: summarise instead of one line each
# A flush smaller than this stays in one transaction: a live server's 250 ms flush (hundreds of rows)
# gains nothing from a second round trip and a second backend.
SPLIT_MIN_ROWS = 4_000

Record = tuple[int, str, int, int, float, float, float, int, float]
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

# A tick already stored (same gseq: re-delivered, or regenerated after a restart) is skipped, so rows
# are never duplicated, even with another timestamp (which the primary key alone would allow).
INSERT_NEW = (
    f"INSERT INTO ticks ({', '.join(COLUMNS)}) "
    f"SELECT DISTINCT ON (s.gseq) {', '.join('s.' + c for c in COLUMNS)} FROM ticks_staging s "
    "WHERE NOT EXISTS (SELECT 1 FROM ticks t WHERE t.symbol = s.symbol AND t.gseq = s.gseq) "
    "ORDER BY s.gseq ON CONFLICT DO NOTHING"
)

MINUTE_NS = 60_000_000_000


def within_minutes(symbols: str, first: str, end: str) -> str:
    """A condition on gseq true for every tick of `symbols` (an SQL comparison such as `= $2`) in
    minutes starting in [first, end): those minutes' gseq range in candles_1m, which a trigger keeps
    in the ticks' own transaction. It turns a time range into a range of the (symbol, gseq, ts) key,
    so ticks needs no (symbol, ts) index (0006_ticks_keys.postgres.sql); `ts` is still filtered."""
    minutes = f"FROM candles_1m WHERE symbol {symbols} AND start >= {first} AND start < {end}"
    return f"gseq BETWEEN (SELECT min(first_gseq) {minutes}) AND (SELECT max(last_gseq) {minutes})"


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
    """The partition of one UTC day (days since the epoch): ticks_YYYYMMDD."""
    return "ticks_" + time.strftime("%Y%m%d", time.gmtime(day * 86_400))


def partition_day(name: str) -> int | None:
    """The UTC day a partition name stands for; None for ticks_default or anything else."""
    m = re.fullmatch(r"ticks_(\d{8})", name)
    return calendar.timegm(time.strptime(m[1], "%Y%m%d")) // 86_400 if m else None


def event_row(record: Mapping[str, Any]) -> EventRow:
    return (int(record["ts"]), int(record["at_step"]), str(record["type"]), orjson.dumps(record).decode())


#: Tick -> Record in COLUMNS order, built in C (a Python function per row costs more than the COPY's
#: encoding of it).
tick_record = operator.attrgetter(*COLUMNS)
RECORD_SYMBOL = operator.itemgetter(COLUMNS.index("symbol"))


def split_by_symbol(records: list[Record], n: int) -> list[list[Record]]:
    """`records`, sorted by symbol, in at most `n` shares of about equal size with no symbol in two.
    Two shares then never upsert the same candle row or key: a share waiting on another's row lock,
    while that one waits (in Python) for it to commit, would deadlock where PostgreSQL cannot see."""
    shares: list[list[Record]] = []
    start = 0
    for k in range(1, n):
        cut = max(len(records) * k // n, start)
        if cut == 0 or cut >= len(records):
            continue
        cut = bisect.bisect_right(records, records[cut - 1][1], lo=cut, key=RECORD_SYMBOL)
        if cut > start and cut < len(records):
            shares.append(records[start:cut])
            start = cut
    shares.append(records[start:])
    return shares


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
        writers: int = 2,
        split_min_rows: int = SPLIT_MIN_ROWS,
    ) -> None:
        if writers < 1:
            raise ValueError(f"writers must be at least 1, not {writers}")
        self.dsn = dsn
        self._writers = writers
        self._split_min_rows = split_min_rows
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
        self.write_errors = 0
        self.write_lag_s = 0.0

    # --- lifecycle -------------------------------------------------------------------------------
    @property
    def keeps_minutes(self) -> bool:
        """Whether candles_1m is the table a trigger keeps with first_gseq and last_gseq (TimescaleDB
        has a continuous aggregate by that name instead)."""
        return not self.timescale

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("PostgresHistory used before start()")
        return self._pool

    async def start(self) -> None:
        # A short connect timeout: an unreachable host (not a refused port) shows as degraded in
        # seconds, not after the 60 s default.
        # The writers' connections and three for queries.
        self._pool = await asyncpg.create_pool(
            self.dsn, min_size=1, max_size=self._writers + 3, command_timeout=60, timeout=10
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
        (0007_stored_gseq.sql). A database without one was written a flush per transaction, so its
        newest gseq is that: every stored tick lies inside its minute's gseq range, so it is the
        newest last_gseq, read from an index (ticks has no B-tree on gseq alone)."""
        mark = await self.pool.fetchval("SELECT stored_gseq FROM engine_state WHERE id = 1")
        if mark is not None:
            return int(mark)
        newest = "max(last_gseq) FROM candles_1m" if self.keeps_minutes else "max(gseq) FROM ticks"
        return int(await self.pool.fetchval("SELECT " + newest) or 0)

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
            " WHERE proc_name = 'policy_retention' AND hypertable_name = 'ticks'"
        )
        wanted = self._retention_days * DAY_NS if self._retention_days else None
        if current == wanted:
            return
        # add_retention_policy(if_not_exists) keeps an old policy with another drop_after: replace it.
        await conn.execute("SELECT remove_retention_policy('ticks', if_exists => TRUE)")
        if wanted is not None:
            await conn.execute("SELECT add_retention_policy('ticks', drop_after => $1::bigint)", wanted)
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
        async with conn.transaction():
            # One creator at a time across processes: two concurrent CREATE TABLE IF NOT EXISTS of one
            # name can still fail (on pg_type's unique index).
            await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK)
            if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name):
                return
            stranded = await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM ticks_default WHERE ts >= $1 AND ts < $2)", lo, hi
            )
            if not stranded:
                await conn.execute(f"CREATE TABLE {name} PARTITION OF ticks FOR VALUES FROM ({lo}) TO ({hi})")
                return
            # Rows of that day already sit in the DEFAULT partition, and PostgreSQL refuses a partition
            # that would leave rows of its range there: without this the writer would fail forever.
            # Move them into a new table and attach it, in one transaction.
            await conn.execute(f"CREATE TABLE {name} (LIKE ticks INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
            moved = await conn.execute(
                f"WITH moved AS (DELETE FROM ticks_default WHERE ts >= {lo} AND ts < {hi} RETURNING *) "
                f"INSERT INTO {name} SELECT * FROM moved"
            )
            await conn.execute(f"ALTER TABLE ticks ATTACH PARTITION {name} FOR VALUES FROM ({lo}) TO ({hi})")
            log.warning("moved %s rows of %s out of the default partition", moved.split()[-1], name)

    async def _apply_retention(self, conn: Conn) -> None:
        if not self._retention_days:
            return
        cutoff = time.time_ns() // DAY_NS - self._retention_days  # keep this many whole days and today
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK)
            rows = await conn.fetch(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                " WHERE i.inhparent = 'ticks'::regclass"
            )
            for r in rows:
                day = partition_day(r["relname"])
                if day is not None and day < cutoff:
                    await conn.execute(f'DROP TABLE IF EXISTS "{r["relname"]}"')
                    self._partitions.discard(day)
                    log.info("retention: dropped partition %s", r["relname"])
            await conn.execute("DELETE FROM ticks_default WHERE ts < $1", cutoff * DAY_NS)
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
            chunk = sorted((tick_record(t) for t in ticks[i : i + 100_000]), key=RECORD_SYMBOL)
            # A retry after a partial replay re-sends rows already stored: the gseq check skips them.
            # The spill is older than anything pending, in gseq order: all up to this chunk is stored.
            mark = max([self._max_gseq, *(r[0] for r in chunk)])
            await self._commit(chunk, None, {r[3] // DAY_NS for r in chunk}, stored_gseq=mark)
            self.rows_written += len(chunk)
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
            # regenerated after a restart, keeps the original.
            newest = self._max_gseq
            records: list[Record] = [tick_record(t) for b in batches for t in b.ticks if t.gseq > newest]
            if len({r[0] for r in records}) != len(records):  # a batch delivered twice: keep the first
                unique: dict[int, Record] = {}
                for r in records:
                    unique.setdefault(r[0], r)
                records = list(unique.values())
            # Each symbol's rows together (stable: in gseq order within the symbol), so a symbol's
            # ticks share heap pages: pages of one symbol read a few pages per flush instead of one
            # page per tick or two. 5,000-tick pages: p50 12-19 -> 7.5-10 ms, p99 65-83 -> 10-14 ms
            # (docs/performance.md, section 5); the sort costs ~0.15 us a row.
            records.sort(key=RECORD_SYMBOL)
            try:
                days = {t[3] // DAY_NS for t in records}
                mark = max([self._max_gseq, *(r[0] for r in records)])
                await self._commit(records, state, days, events, fast=True, stored_gseq=mark)
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
            self.rows_written += len(records)
            self._max_gseq = mark
            self.flushes += 1
            oldest = min((b.ticks[0].ts for b in batches if b.ticks), default=time.time_ns())
            self.write_lag_s = max(0.0, (time.time_ns() - oldest) / 1e9)

    async def _commit(
        self,
        records: list[Record],
        state: str | None,
        days: set[int],
        events: list[EventRow] | None = None,
        *,
        fast: bool = False,
        stored_gseq: int,
    ) -> None:
        """Write `records` (sorted by symbol), then the state, events and watermark that go with them.

        A large flush goes in shares over several connections at once, one transaction each; the
        share that carries the state commits only after all the others have, so a stored state never
        runs ahead of its ticks. A crash between the commits leaves some shares stored: stored_gseq is
        still the previous flush's, so the regenerated flush takes the checked path and fills in the
        rest."""
        if not records and state is None and not events:
            return
        async with self.pool.acquire() as conn:
            if days and not self.timescale:
                # Every day with ticks, and `ahead` days past the newest, so the partition DDL (which
                # locks the parent) happens days before the first tick of a day arrives.
                needed = days | set(range(max(days) + 1, max(days) + 1 + self._ahead))
                if not needed <= self._partitions:
                    await self._ensure_partitions(conn, needed)
            shares = split_by_symbol(records, self._writers if len(records) >= self._split_min_rows else 1)
            others = [asyncio.create_task(self._write_share(share, fast)) for share in shares[:-1]]

            async def finish(c: Conn) -> None:
                await asyncio.gather(*others)  # raises if a share failed: this one rolls back too
                await self._save_state(c, state, events, stored_gseq)

            try:
                await self._write(conn, shares[-1], fast, finish)
            finally:
                for task in others:
                    task.cancel()
                await asyncio.gather(*others, return_exceptions=True)

    async def _write_share(self, records: list[Record], fast: bool) -> None:
        async with self.pool.acquire() as conn:
            await self._write(conn, records, fast, None)

    async def _write(
        self, conn: Conn, records: list[Record], fast: bool, finish: Callable[[Conn], Awaitable[None]] | None
    ) -> None:
        """One transaction of ticks, and `finish` inside it before the commit."""
        if fast:
            # Rows newer than anything stored: binary COPY straight into the table. Should a row be
            # there after all (another writer), the transaction fails and the checked path runs.
            try:
                async with conn.transaction():
                    if records:
                        await conn.copy_records_to_table("ticks", records=records, columns=COLUMNS)
                    if finish is not None:
                        await finish(conn)
                return
            except asyncpg.UniqueViolationError:
                log.warning("history: some ticks were already stored; writing the rest one by one")
        async with conn.transaction():
            if records:
                await conn.execute(
                    "CREATE TEMP TABLE IF NOT EXISTS ticks_staging "
                    "(LIKE ticks INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
                )
                await conn.copy_records_to_table("ticks_staging", records=records, columns=COLUMNS)
                await conn.execute(INSERT_NEW)
            if finish is not None:
                await finish(conn)

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
        where = ["gseq > $1"]
        args: list[Any] = [after_gseq]
        symbol_cond: str | None = None
        if symbols is not None and len(symbols) == 1:
            args.append(next(iter(symbols)))  # equality lets the key deliver rows in gseq order
            symbol_cond = f"= ${len(args)}"
        elif symbols is not None:
            args.append(sorted(symbols))
            symbol_cond = f"= ANY(${len(args)}::text[])"
        if symbol_cond is not None:
            where.append("symbol " + symbol_cond)
        if start_ns is not None or end_ns is not None:
            lo = start_ns if start_ns is not None else 0
            args += [lo, end_ns if end_ns is not None else 2**63 - 1]
            where.append(f"ts >= ${len(args) - 1} AND ts < ${len(args)}")
            if symbol_cond is not None and self.keeps_minutes:
                args.append(first_minute(lo))
                where.append(within_minutes(symbol_cond, f"${len(args)}", f"${len(args) - 1}"))
        args.append(limit)
        # Selected in Tick's field order: Tick(*row) is the cheapest way to 10,000 objects.
        columns, conditions = ", ".join(TICK_FIELDS), " AND ".join(where)
        sql = f"SELECT {columns} FROM ticks WHERE {conditions} ORDER BY gseq LIMIT ${len(args)}"
        rows = await self.pool.fetch(sql, *args)
        return [Tick(*r) for r in rows]

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
        # The same definition as the SQLite store: first and last trade by gseq per bucket.
        args: list[Any] = [interval_ns, symbol, lo, hi, limit]
        bounded = ""
        if self.keeps_minutes:
            args.append(first_minute(lo))
            bounded = "AND " + within_minutes("= $2", "$6", "$4")
        rows = await self.pool.fetch(
            f"""
            WITH b AS (
                SELECT ts / $1 AS k, min(gseq) AS g0, max(gseq) AS g1, max(price) AS hi, min(price) AS lo,
                       sum(size) AS volume, count(*) AS n, sum(price * size) AS pv
                FROM ticks
                WHERE symbol = $2 AND ts >= $3 AND ts < $4 {bounded}
                GROUP BY 1
            )
            SELECT b.k * $1 AS start, o.price AS open, b.hi, b.lo, c.price AS close, b.volume, b.n, b.pv,
                   b.g0, b.g1
            FROM b
            JOIN ticks o ON o.symbol = $2 AND o.gseq = b.g0
            JOIN ticks c ON c.symbol = $2 AND c.gseq = b.g1
            ORDER BY b.k LIMIT $5
            """,
            *args,
        )
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
