"""The PostgreSQL history store against a real PostgreSQL (plain: TimescaleDB is not packaged here)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from history_cases import check_queries, check_time_ranges, path
from services import Postgres

from marketfeed.health import Status
from marketfeed.history.candles import Interval
from marketfeed.history.postgres import (
    COLUMNS,
    DAY_NS,
    DB_ERRORS,
    RECORD_SYMBOL,
    PostgresHistory,
    choose_timescale,
    migrations_dir,
    partition_day,
    partition_name,
    plan,
    split_by_symbol,
    tick_record,
)
from marketfeed.history.sqlite import SQLiteHistory
from marketfeed.ticks import Tick, TickBatch

SYMBOLS = ["AAA", "BBB", "CCC"]
T0 = (time.time_ns() // 60_000_000_000 - 30) * 60_000_000_000  # half an hour ago, on a minute


def batch(step: int, *, ts: int | None = None) -> TickBatch:
    n = len(SYMBOLS)
    stamp = T0 + step * 250_000_000 if ts is None else ts  # four steps a second
    ticks = []
    for i, s in enumerate(SYMBOLS):
        price = round(100 + (step * 7 + i * 3) % 11 * 0.01, 2)
        ticks.append(
            Tick(s, step + 1, step * n + i + 1, stamp, price, 99.0, 101.0, 1 + (step * 5 + i) % 9, 0.2)
        )
    return TickBatch(step=step, ticks=ticks)


@pytest.fixture
def dsn(postgres: Postgres) -> str:
    return postgres.create_database(f"t_{uuid.uuid4().hex[:12]}")


def run(
    dsn: str,
    body: Callable[[PostgresHistory], Awaitable[None]],
    max_backlog_rows: int = 10**6,
    spill_path: Path | None = None,
    **options: Any,
) -> None:
    async def scenario() -> None:
        settings: dict[str, Any] = {"flush_ms": 50, **options}
        store = PostgresHistory(dsn, max_backlog_rows=max_backlog_rows, spill_path=spill_path, **settings)
        await store.start()
        try:
            await body(store)
        finally:
            await store.close()

    asyncio.run(scenario())


async def count(dsn: str, sql: str = "SELECT count(*) FROM ticks") -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


@pytest.mark.integration
def test_round_trip_dedup_pages_filters_and_state(dsn: str) -> None:
    async def body(store: PostgresHistory) -> None:
        for step in range(40):
            store.write(batch(step), state=f"state-{step}")
        store.write(batch(39))  # re-delivered
        store.write(batch(38, ts=T0 + 10**12))  # regenerated after a restart: same gseq, new timestamp
        await store.flush()
        assert await count(dsn) == 120
        everything = await store.ticks(symbols=None, limit=1000)
        assert everything == [t for step in range(40) for t in batch(step).ticks]
        page1 = await store.ticks(symbols=frozenset({"BBB"}), limit=15)
        page2 = await store.ticks(symbols=frozenset({"BBB"}), after_gseq=page1[-1].gseq, limit=15)
        assert [t.seq for t in page1 + page2] == list(range(1, 31))
        window = await store.ticks(symbols=frozenset({"AAA"}), start_ns=T0 + 10**9, end_ns=T0 + 2 * 10**9)
        assert [t.seq for t in window] == [5, 6, 7, 8]
        assert await store.load_state() == "state-39"
        assert store.health().status is Status.OK
        store.write(TickBatch(step=40, ticks=[*batch(39).ticks, *batch(40).ticks]))  # half of it stored
        await store.flush()
        assert await store.ticks(symbols=None, after_gseq=everything[-1].gseq, limit=10) == batch(40).ticks

    run(dsn, body)


@pytest.mark.integration
def test_a_flush_stores_each_symbols_ticks_together_in_gseq_order(dsn: str) -> None:
    async def body(store: PostgresHistory) -> None:
        for step in range(30):  # the symbols interleaved, as the engine makes them
            store.write(batch(step))
        await store.flush()
        conn = await asyncpg.connect(dsn)
        try:  # the heap's order: what a read of one symbol's pages pays for
            rows = await conn.fetch("SELECT symbol, seq FROM ticks ORDER BY ctid")
        finally:
            await conn.close()
        assert [(r["symbol"], r["seq"]) for r in rows] == [(s, n) for s in SYMBOLS for n in range(1, 31)]
        everything = [t for step in range(30) for t in batch(step).ticks]
        assert await store.ticks(symbols=None, limit=1000) == everything  # still read in gseq order

    run(dsn, body, flush_ms=60_000)  # one flush: the explicit one


@pytest.mark.integration
@pytest.mark.parametrize("writers", [1, 3])
def test_time_ranges_and_candles_are_a_filter_of_the_ticks(dsn: str, writers: int) -> None:
    async def body(store: PostgresHistory) -> None:
        await check_time_ranges(store, T0 - 60 * 60_000_000_000)

    run(dsn, body, writers=writers, split_min_rows=1)  # 3: every flush in a share per symbol


def test_split_by_symbol_keeps_the_order_and_each_symbol_in_one_share() -> None:
    # Symbols of 1 to 40 rows each, sorted by symbol as a flush is.
    ticks = [Tick(f"S{k:02d}", j, 1000 * k + j, T0, 1, 1, 1, 1, 0.1) for k in range(40) for j in range(k + 1)]
    records = sorted((tick_record(t) for t in ticks), key=RECORD_SYMBOL)
    for n in range(1, 9):
        shares = split_by_symbol(records, n)
        assert [r for share in shares for r in share] == records
        assert 1 <= len(shares) <= n
        assert all(shares)
        owners = {RECORD_SYMBOL(r): i for i, share in enumerate(shares) for r in share}
        assert all(owners[RECORD_SYMBOL(r)] == i for i, share in enumerate(shares) for r in share)
        assert max(len(share) for share in shares) <= len(records) // n + 41  # a symbol over, at most
    assert len(split_by_symbol(records, 4)) == 4
    assert split_by_symbol(records[:5], 4) == [records[:1], records[1:3], records[3:5]]
    assert split_by_symbol([], 3) == [[]]


@pytest.mark.integration
def test_a_flush_cut_short_between_its_shares_is_completed_after_a_restart(dsn: str) -> None:
    # Three shares, a symbol each; the last (AAA, BBB, CCC: CCC's) carries the engine state and commits
    # after the other two. Here its commit is refused, as a crash between the commits would leave it:
    # AAA's and BBB's ticks of the second flush are stored, CCC's and the state are not. The newest
    # stored gseq (BBB's, step 19) is then past CCC's missing ones, so a restart that filtered the
    # regenerated ticks by it would lose them; the watermark committed with the state does not.
    async def scenario() -> None:
        store = PostgresHistory(dsn, flush_ms=60_000, writers=3, split_min_rows=1, close_timeout_s=1)
        await store.start()
        for step in range(10):
            store.write(batch(step), state=f"state-{step}")
        await store.flush()
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS"
                " $$ BEGIN RAISE EXCEPTION 'refused'; END $$;"
                " CREATE TRIGGER refuse BEFORE UPDATE ON engine_state FOR EACH ROW EXECUTE FUNCTION refuse()"
            )
            for step in range(10, 20):
                store.write(batch(step), state=f"state-{step}")
            with pytest.raises(asyncpg.RaiseError):
                await store.flush()
            await store.close()  # still refused: the pending ticks are given up, as a crash would
            assert await conn.fetchval("SELECT count(*) FROM ticks") == 30 + 20
            await conn.execute("DROP TRIGGER refuse ON engine_state")
        finally:
            await conn.close()

        store = PostgresHistory(dsn, flush_ms=60_000, writers=3, split_min_rows=1)
        await store.start()
        try:
            assert await store.load_state() == "state-9"
            for step in range(10, 20):  # the engine resumes after state-9 and makes them again
                store.write(batch(step), state=f"state-{step}")
            await store.flush()
            stored = await store.ticks(symbols=None, limit=100)
            assert stored == [t for s in range(20) for t in batch(s).ticks]
            assert await store.load_state() == "state-19"
            assert await count(dsn, "SELECT sum(trades) FROM candles_1m") == 60  # each tick counted once
            volume = sum(t.size for s in range(20) for t in batch(s).ticks)
            assert await count(dsn, "SELECT sum(volume) FROM candles_1m") == volume
        finally:
            await store.close()

    asyncio.run(scenario())


@pytest.mark.integration
def test_a_database_from_before_0006_keeps_answering_after_it(dsn: str, tmp_path: Path) -> None:
    # Ticks stored under migrations 0001-0005 (keys (gseq, ts), (symbol, gseq), (symbol, ts); minutes
    # back-filled by 0005), then a start that applies 0006: time ranges now go through the minutes.
    t0 = T0 - 60 * 60_000_000_000
    written = [t for b in path(t0) for t in b.ticks]
    older = [m for m in plan(migrations_dir(), timescale=False) if m.version < 6]

    async def scenario() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
                " applied timestamptz NOT NULL DEFAULT now())"
            )
            for m in older:
                if m.version == 5:  # ticks stored before the minutes existed: 0005 back-fills them
                    await conn.copy_records_to_table("ticks", records=[tick_record(t) for t in written],
                                                     columns=COLUMNS)  # fmt: skip
                await conn.execute(m.path.read_text())
                await conn.execute("INSERT INTO schema_migrations VALUES ($1, $2)", m.version, m.name)
        finally:
            await conn.close()
        store = PostgresHistory(dsn)
        await store.start()
        try:
            await check_queries(store, written, t0)
            wanted = len(plan(migrations_dir(), timescale=False))
            assert await count(dsn, "SELECT count(*) FROM schema_migrations") == wanted
            key = await count(dsn, "SELECT count(*) FROM pg_indexes WHERE tablename = 'ticks'"
                                   " AND indexdef LIKE '%(symbol, gseq, ts)'")  # fmt: skip
            assert key == 1
        finally:
            await store.close()

    asyncio.run(scenario())


@pytest.mark.integration
@pytest.mark.parametrize("writers", [1, 3])
def test_candles_equal_the_sqlite_stores(dsn: str, tmp_path: Path, writers: int) -> None:
    # SQLite aggregates the ticks at query time; PostgreSQL reads one-minute rows kept by a trigger,
    # merged across flushes that split minutes, and across a second writer whose overlapping rows take
    # the checked path. Both must give the same candles, also for ranges that cut minutes in two, and
    # with each flush split in shares over connections (writers=3).
    async def scenario() -> None:
        options: dict[str, Any] = {"writers": writers, "split_min_rows": 1}
        pg, other = PostgresHistory(dsn, **options), PostgresHistory(dsn, **options)
        lite = SQLiteHistory(tmp_path / "h.sqlite3")
        for store in (pg, other, lite):
            await store.start()
        try:
            for step in range(800):  # 200 s of ticks: several minutes, hundreds of seconds
                lite.write(batch(step))
                if step < 700:
                    pg.write(batch(step))
                if step >= 600:  # `other` started before any of these: it has not seen 600..699 stored
                    other.write(batch(step))
                if step % 97 == 0:
                    await pg.flush()
            await pg.flush()
            await other.flush()
            await lite.flush()
            assert await count(dsn) == 800 * len(SYMBOLS)
            minute = 60_000_000_000
            windows = [
                (None, None),
                (T0 + 37_300_000_000, T0 + 181_700_000_000),
                (T0 + minute, T0 + 3 * minute),
            ]
            for interval in (Interval.S1, Interval.M1, Interval.M5, Interval.H1, Interval.D1):
                for start, end in windows:
                    for symbol in SYMBOLS:
                        a = await pg.candles(
                            symbol=symbol, interval=interval, start_ns=start, end_ns=end, limit=5000
                        )
                        b = await lite.candles(
                            symbol=symbol, interval=interval, start_ns=start, end_ns=end, limit=5000
                        )
                        assert len(a) == len(b) > 0
                        for x, y in zip(a, b, strict=True):
                            assert (x.start, x.open, x.high, x.low, x.close, x.volume, x.trades) == (
                                y.start, y.open, y.high, y.low, y.close, y.volume, y.trades,
                            )  # fmt: skip
                            assert x.vwap == pytest.approx(y.vwap, rel=1e-12)  # summation order may differ
            limited = await pg.candles(
                symbol="AAA", interval=Interval.M1, start_ns=None, end_ns=None, limit=2
            )
            assert [c.start for c in limited] == [T0, T0 + minute]
        finally:
            for store in (pg, other, lite):
                await store.close()

    asyncio.run(scenario())


@pytest.mark.integration
def test_migrations_are_idempotent_and_partitions_are_made_ahead(dsn: str) -> None:
    async def scenario() -> None:
        stores = [PostgresHistory(dsn) for _ in range(3)]
        await asyncio.gather(*(s.start() for s in stores))  # three processes starting together
        await stores[0].close()
        again = PostgresHistory(dsn)
        await again.start()
        for s in (*stores[1:], again):
            await s.close()
        wanted = len(plan(migrations_dir(), timescale=False))
        assert wanted >= 5  # up to 0006_ticks_keys
        assert await count(dsn, "SELECT count(*) FROM schema_migrations") == wanted
        today = time.strftime("%Y%m%d", time.gmtime())
        assert await count(dsn, f"SELECT count(*) FROM pg_class WHERE relname = 'ticks_{today}'") == 1
        parts = await count(dsn, "SELECT count(*) FROM pg_inherits WHERE inhparent = 'ticks'::regclass")
        assert parts >= 4  # yesterday, today, two ahead, and the default

    asyncio.run(scenario())

    async def far_past(store: PostgresHistory) -> None:
        store.write(batch(0, ts=DAY_NS))  # 1970-01-02: no partition, the writer makes one
        await store.flush()
        assert await count(dsn, "SELECT count(*) FROM ticks_19700102") == 3
        ahead = "SELECT count(*) FROM pg_class WHERE relname IN ('ticks_19700103', 'ticks_19700104')"
        assert await count(dsn, ahead) == 2  # and keeps two days ahead of the newest tick

    run(dsn, far_past)


@pytest.mark.integration
def test_an_outage_keeps_a_backlog_and_loses_nothing(dsn: str, postgres: Postgres) -> None:
    async def body(store: PostgresHistory) -> None:
        for step in range(10):
            store.write(batch(step))
        await store.flush()
        postgres.stop()
        try:
            for step in range(10, 50):
                store.write(batch(step))
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.5)
            assert store.health().status is Status.DEGRADED
            assert store.metrics()["history_backlog_rows"] == 120
        finally:
            postgres.start()
        deadline = time.monotonic() + 30
        while store.metrics()["history_backlog_rows"] and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert store.health().status is Status.OK
        stored = await store.ticks(symbols=None, limit=1000)
        assert [t.gseq for t in stored] == list(range(1, 151))  # every tick exactly once

    run(dsn, body)


def event(step: int, **details: Any) -> dict[str, Any]:
    return {"type": "scenario", "at_step": step, "ts": T0 + step * 250_000_000, **details}


@pytest.mark.integration
def test_events_go_with_the_ticks_they_precede_even_through_an_outage(
    dsn: str, postgres: Postgres, tmp_path: Path
) -> None:
    written = [event(3, kind="vol_spike", multiplier=2.5), event(7, kind="crash", size=-0.1)]

    async def body(store: PostgresHistory) -> None:
        store.write_event(written[0])
        store.write(batch(3))
        await store.flush()
        postgres.stop()
        try:
            store.write_event(written[1])
            store.write(batch(7))
            with pytest.raises(DB_ERRORS):
                await store.flush()
        finally:
            postgres.start()
        await store.flush()
        assert await store.events() == written
        assert await store.events(start_ns=written[1]["ts"]) == written[1:]
        assert await store.events(end_ns=written[1]["ts"], limit=5) == written[:1]

    run(dsn, body)

    async def lite() -> None:
        store = SQLiteHistory(tmp_path / "h.sqlite3")
        await store.start()
        try:
            for e in written:
                store.write_event(e)
            await store.flush()
            assert await store.events() == written  # the same answer from both stores
            assert await store.events(limit=1) == written[:1]
        finally:
            await store.close()

    asyncio.run(lite())


@pytest.mark.integration
def test_a_full_backlog_counts_what_it_drops(dsn: str, postgres: Postgres) -> None:
    async def body(store: PostgresHistory) -> None:
        postgres.stop()
        try:
            for step in range(20):
                store.write(batch(step))
            assert store.metrics()["history_backlog_rows"] <= 30
            assert (
                store.metrics()["history_rows_dropped_total"] == 60 - store.metrics()["history_backlog_rows"]
            )
        finally:
            postgres.start()

    run(dsn, body, max_backlog_rows=30)


@pytest.mark.integration
def test_a_long_outage_spills_to_a_file_and_loses_nothing(
    dsn: str, postgres: Postgres, tmp_path: Path
) -> None:
    spill = tmp_path / "spill.jsonl"

    async def body(store: PostgresHistory) -> None:
        postgres.stop()
        try:
            for step in range(20):
                store.write(batch(step))
            metrics = store.metrics()
            assert metrics["history_backlog_rows"] <= 30
            assert metrics["history_rows_spilled_total"] == 60 - metrics["history_backlog_rows"]
            assert metrics["history_rows_dropped_total"] == 0
            assert spill.exists()
        finally:
            postgres.start()
        deadline = time.monotonic() + 30
        while (store.metrics()["history_backlog_rows"] or spill.exists()) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        stored = await store.ticks(symbols=None, limit=1000)
        assert [t.gseq for t in stored] == list(range(1, 61))  # spilled and pending, each once, in order
        assert store.metrics()["history_spill_rows"] == 0

    run(dsn, body, max_backlog_rows=30, spill_path=spill)


def test_migration_plan_per_flavour() -> None:
    plain = [m.name for m in plan(migrations_dir(), timescale=False)]
    timescale = [m.name for m in plan(migrations_dir(), timescale=True)]
    assert plain == [
        "0001_schema.postgres.sql",
        "0002_symbol_time_index.postgres.sql",
        "0004_events.sql",
        "0005_candles_1m.postgres.sql",
        "0006_ticks_keys.postgres.sql",
        "0007_stored_gseq.sql",
    ]
    assert timescale == [
        "0001_schema.timescale.sql",
        "0002_candles_1m.timescale.sql",
        "0003_symbol_time_index.timescale.sql",
        "0004_events.sql",
        "0007_stored_gseq.sql",
    ]


@pytest.mark.integration
def test_the_default_partition_catches_a_day_without_one_and_never_blocks_it(dsn: str) -> None:
    day = 5 * DAY_NS  # 1970-01-06: no partition yet

    async def body(store: PostgresHistory) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            # Another writer (or a partition dropped by hand): the insert lands in the default partition.
            await conn.execute("INSERT INTO ticks VALUES (1000, 'AAA', 1, $1, 100, 99, 101, 1, 0.2)", day)
            assert await count(dsn, "SELECT count(*) FROM ticks_default") == 1
        finally:
            await conn.close()
        # The store now writes that day: it needs the day's partition, which PostgreSQL refuses to create
        # while the default partition holds rows of its range; the row is moved into it instead.
        store.write(batch(1000, ts=day + 10**9))
        await store.flush()
        assert store.health().status is Status.OK
        assert await count(dsn, "SELECT count(*) FROM ticks_default") == 0
        assert await count(dsn, "SELECT count(*) FROM ticks_19700106") == 4
        stored = await store.ticks(symbols=frozenset({"AAA"}), start_ns=day, end_ns=day + DAY_NS)
        assert [t.gseq for t in stored] == [1000, 3001]

    run(dsn, body)


@pytest.mark.integration
def test_close_flushes_everything_pending(dsn: str) -> None:
    async def body(store: PostgresHistory) -> None:
        for step in range(25):
            store.write(batch(step), state=f"state-{step}")
        assert store.metrics()["history_backlog_rows"] == 75  # the timer is far off: nothing written yet

    run(dsn, body, flush_ms=60_000)

    async def reopened(store: PostgresHistory) -> None:
        assert [t.gseq for t in await store.ticks(symbols=None)] == list(range(1, 76))
        assert await store.load_state() == "state-24"

    run(dsn, reopened)


@pytest.mark.integration
@pytest.mark.parametrize("spill", [False, True], ids=["drop", "spill"])
def test_close_with_the_database_down_loses_nothing_silently(
    dsn: str, postgres: Postgres, tmp_path: Path, spill: bool
) -> None:
    spill_path = tmp_path / "spill.jsonl" if spill else None

    async def scenario() -> None:
        store = PostgresHistory(dsn, flush_ms=60_000, spill_path=spill_path, close_timeout_s=0.5)
        await store.start()
        postgres.stop()
        try:
            for step in range(10):
                store.write(batch(step))
            await store.close()
        finally:
            postgres.start()
        metrics = store.metrics()
        assert metrics["history_backlog_rows"] == 0
        if spill_path is None:
            assert metrics["history_rows_dropped_total"] == 30
            return
        assert metrics["history_rows_dropped_total"] == 0
        assert metrics["history_rows_spilled_total"] == 30
        again = PostgresHistory(dsn, spill_path=spill_path)  # the next start writes the spill first
        await again.start()
        try:
            await again.flush()
            assert [t.gseq for t in await again.ticks(symbols=None)] == list(range(1, 31))
            assert not spill_path.exists()
        finally:
            await again.close()

    asyncio.run(scenario())


@pytest.mark.integration
def test_retention_drops_old_partitions_and_old_default_rows(dsn: str) -> None:
    async def old_ticks(store: PostgresHistory) -> None:
        store.write(batch(0, ts=DAY_NS))  # 1970-01-02, in its own partition
        store.write(batch(1))  # recent
        await store.flush()
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                "INSERT INTO ticks VALUES (999, 'AAA', 1, $1, 100, 99, 101, 1, 0.2)", 9 * DAY_NS
            )
        finally:
            await conn.close()

    run(dsn, old_ticks)

    async def with_retention(store: PostgresHistory) -> None:
        assert await count(dsn, "SELECT count(*) FROM pg_class WHERE relname = 'ticks_19700102'") == 0
        assert await count(dsn, "SELECT count(*) FROM ticks_default") == 0
        assert [t.gseq for t in await store.ticks(symbols=None)] == [4, 5, 6]  # the recent ones stay

    run(dsn, with_retention, retention_days=30)


def test_partition_names_are_utc_days() -> None:
    for day in (0, 1, 19_000, 20_000):
        assert partition_day(partition_name(day)) == day
    assert partition_name(19_000) == "ticks_20220108"
    assert partition_day("ticks_default") is None


def test_a_database_keeps_the_flavour_it_was_made_with() -> None:
    fresh: list[str] = []
    assert choose_timescale(applied=fresh, available=True, installed=False, preloaded=True)
    assert choose_timescale(applied=fresh, available=True, installed=True, preloaded=False)
    # Available but not preloaded: CREATE EXTENSION would be a FATAL error, so plain PostgreSQL.
    assert not choose_timescale(applied=fresh, available=True, installed=False, preloaded=False)
    assert not choose_timescale(applied=fresh, available=False, installed=False, preloaded=False)
    plain = ["0001_schema.postgres.sql"]
    assert not choose_timescale(applied=plain, available=True, installed=True, preloaded=True)
    timescale = ["0001_schema.timescale.sql", "0002_candles_1m.timescale.sql"]
    assert choose_timescale(applied=timescale, available=False, installed=False, preloaded=False)
    with pytest.raises(RuntimeError, match="mixes flavours"):
        choose_timescale(applied=plain + timescale, available=True, installed=True, preloaded=True)
