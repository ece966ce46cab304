"""Embedded history: one SQLite file in WAL mode, a background batch writer, candles in SQL.

sqlite3 is blocking, so every statement runs on a worker thread: one writer thread (SQLite allows one
writer at a time anyway) and a small pool of readers, which WAL lets run while the writer commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import orjson

from marketfeed._engine import tick_minutes, tick_params
from marketfeed.health import Health
from marketfeed.history.candles import Candle, Interval
from marketfeed.ticks import SymbolSet, Tick, TickBatch

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS ticks (
    gseq   INTEGER PRIMARY KEY,   -- unique: a re-delivered tick is ignored, never duplicated
    symbol TEXT    NOT NULL,
    seq    INTEGER NOT NULL,
    ts     INTEGER NOT NULL,      -- ns since the epoch, UTC
    price  REAL    NOT NULL,
    bid    REAL    NOT NULL,
    ask    REAL    NOT NULL,
    size   INTEGER NOT NULL,
    vol    REAL    NOT NULL
);
CREATE INDEX IF NOT EXISTS ticks_symbol_gseq ON ticks (symbol, gseq);
CREATE INDEX IF NOT EXISTS ticks_symbol_ts ON ticks (symbol, ts);
-- Market events (scenarios, parameter changes) in the order they happened; `record` is the whole
-- event as JSON, as announced on the streams.
CREATE TABLE IF NOT EXISTS events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    ts      INTEGER NOT NULL,
    at_step INTEGER NOT NULL,
    type    TEXT    NOT NULL,
    record  TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
CREATE TABLE IF NOT EXISTS engine_state (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    state   TEXT    NOT NULL,
    updated INTEGER NOT NULL
);
"""

# Version 2 (PRAGMA user_version), for ingest: every index a row enters roughly halves the writer's
# rate (bench/ingest.py), and ticks had two besides the table itself. An index on symbol alone is
# (symbol, gseq) already, since SQLite appends the rowid (gseq) to every index entry. Time ranges of a
# symbol no longer need (symbol, ts): tick_minutes, written in the ticks' own transaction, holds the
# first and last gseq of every symbol-minute, which turns a time range into a gseq range.
SCHEMA_2 = """
DROP INDEX IF EXISTS ticks_symbol_gseq;
DROP INDEX IF EXISTS ticks_symbol_ts;
CREATE INDEX IF NOT EXISTS ticks_symbol ON ticks (symbol);
CREATE TABLE IF NOT EXISTS tick_minutes (
    symbol     TEXT    NOT NULL,
    minute     INTEGER NOT NULL,  -- ts // 60 s
    first_gseq INTEGER NOT NULL,
    last_gseq  INTEGER NOT NULL,
    PRIMARY KEY (symbol, minute)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tick_minutes_minute ON tick_minutes (minute);
INSERT INTO tick_minutes SELECT symbol, ts / 60000000000, min(gseq), max(gseq) FROM ticks GROUP BY 1, 2;
"""
# Version 3, for ingest: symbols are numbered. Every tick enters the symbol index, and an entry whose
# key is a small integer is smaller and quicker to place than one whose key is text: the writer +12-29 %
# alone, +8-22 % beside the engine (bench/ingest.py, docs/performance.md section 3); reads as fast. The
# rows move to tick_rows; `ticks` becomes a view with the symbols' names, as the table read before.
SCHEMA_3 = """
CREATE TABLE symbols (
    id   INTEGER PRIMARY KEY,
    name TEXT    NOT NULL UNIQUE
);
INSERT INTO symbols (name) SELECT DISTINCT symbol FROM ticks ORDER BY symbol;
CREATE TABLE tick_rows (
    gseq   INTEGER PRIMARY KEY,   -- unique: a re-delivered tick is ignored, never duplicated
    symbol INTEGER NOT NULL,      -- symbols.id
    seq    INTEGER NOT NULL,
    ts     INTEGER NOT NULL,      -- ns since the epoch, UTC
    price  REAL    NOT NULL,
    bid    REAL    NOT NULL,
    ask    REAL    NOT NULL,
    size   INTEGER NOT NULL,
    vol    REAL    NOT NULL
);
INSERT INTO tick_rows
SELECT t.gseq, s.id, t.seq, t.ts, t.price, t.bid, t.ask, t.size, t.vol
FROM ticks t JOIN symbols s ON s.name = t.symbol ORDER BY t.gseq;
DROP TABLE ticks;
CREATE INDEX tick_rows_symbol ON tick_rows (symbol);
CREATE VIEW ticks AS
SELECT r.gseq, s.name AS symbol, r.seq, r.ts, r.price, r.bid, r.ask, r.size, r.vol
FROM tick_rows r JOIN symbols s ON s.id = r.symbol;
"""
MIGRATIONS = (SCHEMA, SCHEMA_2, SCHEMA_3)
#: Bytes per page of a file this store creates.
PAGE_SIZE = 16384
MINUTE_NS = 60_000_000_000
# The minutes of the ticks with gseq in [?, ?], merged into those stored. Rows of that range written
# earlier are counted again, which min and max absorb.
# A minute already stored keeps the widest bounds: its first and last gseq merged with the new ones.
_MERGE_MINUTE = """
ON CONFLICT (symbol, minute) DO UPDATE SET
    first_gseq = min(first_gseq, excluded.first_gseq), last_gseq = max(last_gseq, excluded.last_gseq)
"""
MINUTES_OF = f"""
INSERT INTO tick_minutes (symbol, minute, first_gseq, last_gseq)
SELECT symbol, ts / {MINUTE_NS}, min(gseq), max(gseq) FROM ticks WHERE gseq BETWEEN ? AND ? GROUP BY 1, 2
{_MERGE_MINUTE}"""


@functools.cache
def upsert_minutes(n: int) -> str:
    """One upsert of n (symbol, minute, first gseq, last gseq) rows, each merged into what is stored."""
    values = ", ".join(["(?, ?, ?, ?)"] * n)
    return f"INSERT INTO tick_minutes (symbol, minute, first_gseq, last_gseq) VALUES {values} {_MERGE_MINUTE}"


def minute_bounds(ticks: list[Tick]) -> list[tuple[str, int, int, int]] | None:
    """(symbol, minute, first gseq, last gseq) of each symbol-minute of a flush's `ticks`, from the ticks
    alone when their gseq grows strictly (a server's flush, in order); None otherwise, and MINUTES_OF
    reads them back. SQLite's GROUP BY over the rows just written was a fifth of the writer's time;
    this is one pass in C++ (`tick_minutes`)."""
    return cast(list[tuple[str, int, int, int]] | None, tick_minutes(ticks, MINUTE_NS))


def within_minutes(symbols: str, gseq: str = "gseq") -> str:
    """A condition on the column `gseq` true for every tick (of `symbols`, a condition on tick_minutes'
    symbol names, if not empty) in the minutes :m0 to :m1: those minutes' gseq range in tick_minutes.
    With ts still filtered, it lets a time range read a range of gseq (of the symbol index) instead of
    needing a (symbol, ts) index."""
    where = f"{symbols} AND minute BETWEEN :m0 AND :m1" if symbols else "minute BETWEEN :m0 AND :m1"
    minutes = "FROM tick_minutes WHERE " + where
    return f"{gseq} BETWEEN (SELECT min(first_gseq) {minutes}) AND (SELECT max(last_gseq) {minutes})"


def time_range(start_ns: int | None, end_ns: int | None) -> dict[str, int]:
    """Parameters :start, :end (ts in [start, end)) and :m0, :m1 (the minutes it overlaps)."""
    start = start_ns if start_ns is not None else 0
    end = end_ns if end_ns is not None else 2**63 - 1
    return {"start": start, "end": end, "m0": start // MINUTE_NS, "m1": (end - 1) // MINUTE_NS}


COLUMNS = "symbol, seq, gseq, ts, price, bid, ask, size, vol"
INSERT_ONE = f"INSERT OR IGNORE INTO tick_rows ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)"
#: tick_rows' columns with the symbol's name for its number: a Tick's fields, in order.
TICK_COLUMNS = "s.name, r.seq, r.gseq, r.ts, r.price, r.bid, r.ask, r.size, r.vol"
TICK_ROWS = "tick_rows r JOIN symbols s ON s.id = r.symbol"
# Rows go in 3,000 to a statement (27,000 parameters; SQLite allows 32,766). sqlite3 lets the GIL go
# around every statement it steps, and taking it back waits for a busy thread (the engine's, the event
# loop's) to reach its switch interval: one row a statement made the writer 91,000 rows/s with the
# engine running beside it (bench/ingest.py, "+engine"), 500 a statement 112,000, 3,000 190,000 (the
# engine's own pace there). Alone: 320,000 -> 410,000 rows/s, as binding is one C loop per statement.
ROWS_PER_INSERT = 3000


@functools.cache
def insert_rows(n: int) -> str:
    """One INSERT of n rows."""
    return INSERT_ONE + ", (?,?,?,?,?,?,?,?,?)" * (n - 1)


def statement_sizes(n: int) -> list[int]:
    """Rows per statement for a flush of n rows: statements of ROWS_PER_INSERT, then the rest by its
    binary digits (2,048, 1,024, ... 1 rows), so at most twelve more, each of a size compiled before
    (sqlite3 keeps 128 statements). The rest went in a row a statement: a flush of a live server is
    mostly rest (250 ms of 550 symbols at 25 steps a second is 3,440 rows, 440 of them rest), and its
    440 one-row statements took the writer nearly as long as the 3,000 rows before them (py-spy)."""
    sizes = [ROWS_PER_INSERT] * (n // ROWS_PER_INSERT)
    rest = n % ROWS_PER_INSERT
    return sizes + [1 << b for b in range(rest.bit_length() - 1, -1, -1) if rest >> b & 1]


Rows = Sequence[Sequence[Any]]


def flat(rows: Rows, start: int, size: int) -> tuple[Any, ...]:
    return tuple(itertools.chain.from_iterable(rows[start : start + size]))


def execute_in_statements(
    conn: sqlite3.Connection,
    statement: Callable[[int], str],
    rows: Rows,
    params: Callable[[Rows, int, int], tuple[Any, ...]] = flat,
) -> None:
    """`rows` through `statement(n)`, a statement of n rows, in the sizes of statement_sizes; the
    parameters of rows[start:start + n] are `params(rows, start, n)`."""
    start = 0
    for size in statement_sizes(len(rows)):
        conn.execute(statement(size), params(rows, start, size))
        start += size


# A tick is its own row: its fields are the table's columns, in order, so the writer binds the ticks'
# own field objects (`tick_params`, in C++: building a tuple per row was a tenth of the writer's time).
if Tick._fields != tuple(COLUMNS.split(", ")):
    raise ImportError("marketfeed.history.sqlite: COLUMNS must be Tick's fields in order")
EventRow = tuple[int, int, str, str]


def event_row(record: Mapping[str, Any]) -> EventRow:
    return (int(record["ts"]), int(record["at_step"]), str(record["type"]), orjson.dumps(record).decode())


class SQLiteHistory:
    name = "sqlite"

    def __init__(self, path: Path | str, *, flush_ms: int = 250, flush_rows: int = 10_000) -> None:
        self.path = Path(path)
        self._flush_s = flush_ms / 1000
        self._flush_rows = flush_rows
        self._pending: list[TickBatch] = []
        self._pending_rows = 0
        self._state: str | None = None
        self._events: list[EventRow] = []
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._readers = ThreadPoolExecutor(2, thread_name_prefix="sqlite-reader")
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._wconn: sqlite3.Connection | None = None
        self._ids: dict[str, int] = {}  # symbols' numbers, as stored (the writer's thread only)
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._flush_lock = asyncio.Lock()
        self._error: str | None = None
        self.rows_written = 0
        self.flushes = 0
        self.write_errors = 0
        self.write_lag_s = 0.0

    # --- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._writer, self._open_writer)
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="sqlite-writer")

    def _open_writer(self) -> None:
        conn = self._connect()
        # A new file only: SQLite keeps the page size a file was made with (and cannot change it in WAL
        # mode). 16 KiB instead of 4: fewer, shallower index pages for the symbol index each tick
        # enters, +15-20 % ingest in isolation and +10 % beside the engine (docs/performance.md).
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode is durable across application crashes; only an OS crash can lose the
        # last commits, which the engine would then regenerate from its stored state.
        conn.execute("PRAGMA synchronous=NORMAL")
        # Each tick goes into the table and two indexes; a larger page cache (64 MiB instead of 2) keeps
        # their hot leaves in memory: about +10 % ingest (bench/ingest.py).
        conn.execute("PRAGMA cache_size=-65536")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            conn.executescript(f"BEGIN; {script} PRAGMA user_version = {number}; COMMIT;")
        self._ids = dict(conn.execute("SELECT name, id FROM symbols"))
        self._wconn = conn

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._connections.append(conn)
        return conn

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._writer, self._close_connections)
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)

    def _close_connections(self) -> None:
        for conn in self._connections:
            conn.close()
        self._connections.clear()

    # --- writing ---------------------------------------------------------------------------------
    def write(self, batch: TickBatch, state: str | None = None) -> None:
        self._pending.append(batch)
        self._pending_rows += len(batch)
        if state is not None:
            self._state = state
        if self._pending_rows >= self._flush_rows and self._wake is not None:
            self._wake.set()

    def write_event(self, record: Mapping[str, Any]) -> None:
        # Pending events are committed with the batches written after them, never later.
        self._events.append(event_row(record))

    async def _run(self) -> None:
        if self._wake is None:
            raise RuntimeError("SQLiteHistory._run before start()")
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._flush_s)
            self._wake.clear()
            try:
                await self.flush()
            except sqlite3.Error as exc:
                # Keep the batches (flush puts them back) and try again at the next interval.
                log.warning("history write failed, will retry: %s", exc)
                await asyncio.sleep(self._flush_s)

    async def flush(self) -> None:
        async with self._flush_lock:
            if not self._pending and not self._events:
                return
            batches, state, events = self._pending, self._state, self._events
            self._pending, self._pending_rows, self._state, self._events = [], 0, None, []
            n_rows = sum(map(len, batches))
            oldest = min((b.ticks[0].ts for b in batches if b.ticks), default=time.time_ns())
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(self._writer, self._commit, batches, state, events)
            except sqlite3.Error as exc:
                self.write_errors += 1
                self._error = str(exc)
                self._pending[:0] = batches
                self._events[:0] = events
                self._pending_rows += n_rows
                if self._state is None:
                    self._state = state
                raise
            self._error = None
            self.rows_written += n_rows
            self.flushes += 1
            self.write_lag_s = max(0.0, (time.time_ns() - oldest) / 1e9)

    def _commit(self, batches: list[TickBatch], state: str | None, events: list[EventRow]) -> None:
        conn = self._wconn
        if conn is None:
            raise sqlite3.OperationalError("history store is not open")
        rows = [t for b in batches for t in b.ticks]
        minutes = minute_bounds(rows)
        conn.execute("BEGIN")
        try:
            conn.executemany("INSERT INTO events (ts, at_step, type, record) VALUES (?,?,?,?)", events)
            execute_in_statements(conn, insert_rows, rows, functools.partial(self._tick_params, conn))
            if minutes is not None:  # a row per symbol-minute: in a few statements too
                execute_in_statements(conn, upsert_minutes, minutes)
            elif rows:
                conn.execute(MINUTES_OF, (min(r[2] for r in rows), max(r[2] for r in rows)))
            if state is not None:
                conn.execute(
                    "INSERT INTO engine_state (id, state, updated) VALUES (1, ?, ?) "
                    "ON CONFLICT (id) DO UPDATE SET state = excluded.state, updated = excluded.updated",
                    (state, time.time_ns()),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            self._ids = dict(conn.execute("SELECT name, id FROM symbols"))  # less those rolled back
            raise

    def _tick_params(self, conn: sqlite3.Connection, rows: Rows, start: int, size: int) -> tuple[Any, ...]:
        """The parameters of ticks[start:start + size], numbering (in this transaction) a new symbol."""
        ticks = cast(Sequence[Tick], rows)
        while (params := tick_params(ticks, self._ids, start, size)) is None:
            for name in dict.fromkeys(t.symbol for t in ticks[start : start + size]):
                if name not in self._ids:
                    cursor = conn.execute("INSERT INTO symbols (name) VALUES (?)", (name,))
                    self._ids[name] = int(cast(int, cursor.lastrowid))
        return cast(tuple[Any, ...], params)

    # --- reading ---------------------------------------------------------------------------------
    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    async def _query(self, sql: str, params: Sequence[Any] | Mapping[str, Any]) -> list[tuple[Any, ...]]:
        def run() -> list[tuple[Any, ...]]:
            return self._reader().execute(sql, params).fetchall()

        return await asyncio.get_running_loop().run_in_executor(self._readers, run)

    async def ticks(
        self,
        *,
        symbols: SymbolSet,
        start_ns: int | None = None,
        end_ns: int | None = None,
        after_gseq: int = 0,
        limit: int = 1000,
    ) -> list[Tick]:
        where = ["r.gseq > :after"]
        params: dict[str, Any] = {"after": after_gseq, "limit": limit}
        symbol_cond = ""
        if symbols is not None:
            names = {f"s{i}": s for i, s in enumerate(sorted(symbols))}
            placeholders = ", ".join(":" + n for n in names)
            symbol_cond = f"symbol IN ({placeholders})"  # tick_minutes keeps the names
            where.append(f"r.symbol IN (SELECT id FROM symbols WHERE name IN ({placeholders}))")
            params |= names
        if start_ns is not None or end_ns is not None:
            params |= time_range(start_ns, end_ns)
            where += ["r.ts >= :start AND r.ts < :end", within_minutes(symbol_cond, "r.gseq")]
        conditions = " AND ".join(where)
        sql = f"SELECT {TICK_COLUMNS} FROM {TICK_ROWS} WHERE {conditions} ORDER BY r.gseq LIMIT :limit"
        rows = await self._query(sql, params)
        return [Tick(*r) for r in rows]  # TICK_COLUMNS are Tick's fields in order

    async def candles(
        self, *, symbol: str, interval: Interval, start_ns: int | None, end_ns: int | None, limit: int
    ) -> list[Candle]:
        # Open and close are the first and last trade by gseq in each bucket, joined back through the
        # primary key, so a candle always agrees with the raw ticks it summarises.
        sql = f"""
            WITH b AS (
                SELECT ts / :ns AS k, MIN(gseq) AS g0, MAX(gseq) AS g1, MAX(price) AS hi,
                       MIN(price) AS lo, SUM(size) AS volume, COUNT(*) AS n, SUM(price * size) AS pv
                FROM tick_rows
                WHERE symbol = (SELECT id FROM symbols WHERE name = :symbol) AND ts >= :start AND ts < :end
                  AND {within_minutes("symbol = :symbol")}
                GROUP BY k
            )
            SELECT b.k * :ns, o.price, b.hi, b.lo, c.price, b.volume, b.n, b.pv
            FROM b JOIN tick_rows o ON o.gseq = b.g0 JOIN tick_rows c ON c.gseq = b.g1
            ORDER BY b.k LIMIT :limit
        """
        params = {"ns": interval.nanoseconds, "symbol": symbol, "limit": limit}
        params |= time_range(start_ns, end_ns)
        rows = await self._query(sql, params)
        return [
            Candle(
                start=r[0],
                open=r[1],
                high=r[2],
                low=r[3],
                close=r[4],
                volume=r[5],
                trades=r[6],
                vwap=r[7] / r[5] if r[5] else r[4],
            )
            for r in rows
        ]

    async def events(
        self, *, start_ns: int | None = None, end_ns: int | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        rows = await self._query(
            "SELECT record FROM events WHERE ts >= ? AND ts < ? ORDER BY id LIMIT ?",
            (start_ns if start_ns is not None else 0, end_ns if end_ns is not None else 2**63 - 1, limit),
        )
        return [orjson.loads(r[0]) for r in rows]

    async def load_state(self) -> str | None:
        rows = await self._query("SELECT state FROM engine_state WHERE id = 1", ())
        return str(rows[0][0]) if rows else None

    # --- observability ---------------------------------------------------------------------------
    def health(self) -> Health:
        if self._error is not None:
            return Health.degraded(f"sqlite: {self._error}")
        return Health.ok(str(self.path))

    def metrics(self) -> dict[str, float]:
        return {
            "history_rows_written_total": self.rows_written,
            "history_flushes_total": self.flushes,
            "history_write_errors_total": self.write_errors,
            "history_backlog_rows": self._pending_rows,
            "history_write_lag_seconds": self.write_lag_s,
        }
