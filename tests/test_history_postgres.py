"""The PostgreSQL history store against a real PostgreSQL (plain: TimescaleDB is not packaged here)."""

from __future__ import annotations

import asyncio
import io
import itertools
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest
from history_cases import check_queries, check_time_ranges, path
from services import Postgres

from marketfeed.health import Status
from marketfeed.history import postgres
from marketfeed.history.blocks import BLOCK_COLUMNS, BLOCK_TICKS, SPAN, BlockEncoder
from marketfeed.history.candles import Interval
from marketfeed.history.postgres import (
    DAY_NS,
    DB_ERRORS,
    PostgresHistory,
    choose_timescale,
    migrations_dir,
    partition_day,
    partition_name,
    plan,
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
def test_a_flush_stores_a_block_per_symbol_and_minute_with_its_ohlcv(dsn: str) -> None:
    async def body(store: PostgresHistory) -> None:
        for step in range(80):  # a second apart from T0, on a minute: two minutes, symbols interleaved
            store.write(batch(step, ts=T0 + step * 10**9))
        await store.flush()
        conn = await asyncpg.connect(dsn)
        try:
            blocks = await conn.fetch("SELECT * FROM tick_blocks ORDER BY symbol, first_gseq")
        finally:
            await conn.close()
        written = [t for step in range(80) for t in batch(step, ts=T0 + step * 10**9).ticks]
        minute = 60_000_000_000
        assert [(b["symbol"], b["minute"]) for b in blocks] == [
            (s, T0 + m * minute) for s in SYMBOLS for m in (0, 1)
        ]
        for b in blocks:
            mine = [t for t in written if t.symbol == b["symbol"] and t.ts // minute * minute == b["minute"]]
            assert list(b["gseq"]) == [t.gseq for t in mine]
            assert list(b["seq"]) == [t.seq for t in mine]
            assert list(b["price"]) == [t.price for t in mine]
            assert (b["first_gseq"], b["last_gseq"]) == (mine[0].gseq, mine[-1].gseq)
            assert (b["first_ts"], b["last_ts"]) == (mine[0].ts, mine[-1].ts)
            prices = [t.price for t in mine]
            assert (b["open"], b["high"], b["low"], b["close"]) == (
                prices[0],
                max(prices),
                min(prices),
                prices[-1],
            )
            assert (b["volume"], b["trades"]) == (sum(t.size for t in mine), len(mine))
            assert b["pv"] == pytest.approx(sum(t.price * t.size for t in mine), rel=1e-12)
        assert await store.ticks(symbols=None, limit=1000) == written  # read back in gseq order
        assert await count(dsn) == len(written)  # the `ticks` view: a row per tick

    run(dsn, body, flush_ms=60_000)  # one flush: the explicit one


@pytest.mark.integration
def test_blocks_are_cut_at_every_span_of_gseq_and_at_every_tick_left_out(dsn: str) -> None:
    # Ticks of one symbol in one minute, across a multiple of SPAN, one of them stored already: three
    # blocks, none spanning a multiple of SPAN or the stored tick.
    gseqs = [SPAN - 3, SPAN - 2, SPAN - 1, SPAN, SPAN + 1, SPAN + 2, SPAN + 3]
    ticks = [Tick("AAA", k + 1, g, T0 + k, 100.0 + k, 99.0, 101.0, 1, 0.2) for k, g in enumerate(gseqs)]
    # And 250 ticks of another symbol: blocks of at most BLOCK_TICKS.
    ticks += [Tick("BBB", k + 1, 2 * SPAN + k, T0 + k, 100.0, 99.0, 101.0, 1, 0.2) for k in range(250)]
    encoder = BlockEncoder()
    kept, runs = encoder.columns(ticks).without(np.array([SPAN + 1]))
    assert kept.gseq.tolist() == [g for g in gseqs if g != SPAN + 1] + [2 * SPAN + k for k in range(250)]
    payload, n = encoder.encode(kept, runs)
    assert n == 3 + 3

    async def scenario() -> None:
        store = PostgresHistory(dsn)
        await store.start()  # the schema
        await store.close()
        conn = await asyncpg.connect(dsn)
        try:
            await conn.copy_to_table(
                "tick_blocks", source=io.BytesIO(payload), columns=BLOCK_COLUMNS, format="binary"
            )
            rows = await conn.fetch("SELECT gseq FROM tick_blocks ORDER BY first_gseq")
            blocks = [list(r["gseq"]) for r in rows]
            assert blocks[:3] == [[SPAN - 3, SPAN - 2, SPAN - 1], [SPAN], [SPAN + 2, SPAN + 3]]
            assert [len(b) for b in blocks[3:]] == [BLOCK_TICKS, BLOCK_TICKS, 250 - 2 * BLOCK_TICKS]
            assert [g for b in blocks[3:] for g in b] == [2 * SPAN + k for k in range(250)]
        finally:
            await conn.close()

    asyncio.run(scenario())


@pytest.mark.integration
def test_merging_a_live_servers_small_blocks_changes_no_answer(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Flushes of two steps, as a live server's 250 ms flushes: blocks of one or two ticks. Merging the
    # closed minutes' blocks leaves a block per symbol-minute (under BLOCK_TICKS ticks each here),
    # except around the clock set back, where a merged minute would overlap another of its symbol's
    # blocks; every read answers as before, candles_1m included, and no two blocks of a symbol overlap.
    # Two symbol-minutes a statement: the nine closed ones take five.
    monkeypatch.setattr(postgres, "COMPACT_GROUPS", 2)
    t0 = T0 - 60 * 60_000_000_000
    batches = path(t0)
    written = [t for b in batches for t in b.ticks]
    overlaps = (
        "SELECT count(*) FROM tick_blocks a JOIN tick_blocks b"
        " ON a.symbol = b.symbol AND a.first_gseq < b.first_gseq AND b.first_gseq <= a.last_gseq"
    )

    async def write(store: PostgresHistory, part: list[TickBatch]) -> None:
        for n, b in enumerate(part):
            store.write(b)
            if n % 2:
                await store.flush()
        await store.flush()

    async def body(store: PostgresHistory) -> None:
        await write(store, batches[:200])  # the clock still right: 4 1/2 minutes
        # Closed: the minutes before the one before the newest tick's (t0 + 4 min).
        closed = f"FROM tick_blocks WHERE minute < {t0 + 3 * 60_000_000_000}"
        before = await count(dsn, "SELECT count(*) " + closed)
        monkeypatch.setattr(postgres, "COMPACT_BUDGET_S", 0.0)
        assert await store.compact() == 0  # a round with no time left merges nothing
        assert store.merge_left
        assert await count(dsn, "SELECT count(*) " + closed) == before
        monkeypatch.setattr(postgres, "COMPACT_BUDGET_S", 60.0)
        assert await store.compact() > 0
        assert not store.merge_left
        assert await count(dsn, "SELECT count(*) " + closed) == 3 * 3 < before // 10  # a symbol-minute each
        assert await count(dsn, overlaps) == 0
        await write(store, batches[200:])  # five minutes back: minutes come again
        await store.compact()
        assert await count(dsn, overlaps) == 0
        assert await count(dsn, "SELECT sum(trades) FROM candles_1m") == len(written)
        assert await count(dsn, "SELECT sum(volume) FROM candles_1m") == sum(t.size for t in written)
        await check_queries(store, written, t0)
        assert await store.compact() == 0  # nothing left to merge

    run(dsn, body, flush_ms=60_000)


@pytest.mark.integration
def test_a_round_of_merging_that_runs_out_of_time_is_followed_sooner(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The writer's loop runs a round every COMPACT_EVERY_S, or COMPACT_AGAIN_S after a round that ran
    # out of time with minutes left: at 1,000 symbols a round merges a tenth of a minute's blocks.
    rounds: list[bool] = []

    async def body(store: PostgresHistory) -> None:
        merge = store.compact

        async def counted() -> int:
            made = await merge()
            rounds.append(store.merge_left)
            return made

        monkeypatch.setattr(store, "compact", counted)
        for step in range(720):  # three minutes in flushes of two steps: the first is closed
            store.write(batch(step))
            if step % 2:
                await store.flush()
        monkeypatch.setattr(postgres, "COMPACT_EVERY_S", 3600.0)
        monkeypatch.setattr(postgres, "COMPACT_AGAIN_S", 0.2)
        monkeypatch.setattr(postgres, "COMPACT_BUDGET_S", 0.0)  # every round out of time at once
        store._compact_at = 0.0
        await asyncio.sleep(1.5)
        assert len(rounds) >= 3  # again and again, 0.2 s apart
        assert all(rounds)
        monkeypatch.setattr(postgres, "COMPACT_BUDGET_S", 60.0)
        await asyncio.sleep(1.0)  # the next round merges the closed minute and finds nothing left
        assert rounds[-1] is False
        seen = len(rounds)
        await asyncio.sleep(1.0)
        assert len(rounds) == seen  # then an hour until the next
        assert await count(dsn, f"SELECT count(*) FROM tick_blocks WHERE minute = {T0}") == 3 * 3  # merged

    run(dsn, body, flush_ms=50)


@pytest.mark.integration
def test_a_merged_minute_of_more_than_a_block_is_not_merged_again(dsn: str) -> None:
    # 240 ticks a symbol-minute (four steps a second) in flushes of two steps: merged into blocks of
    # 100, 100 and 40, which the next merges leave alone instead of rewriting them every minute.
    async def body(store: PostgresHistory) -> None:
        for step in range(720):  # three minutes: the first is closed once the third has ticks
            store.write(batch(step))
            if step % 2:
                await store.flush()
        assert await store.compact() == 3 * 3
        sizes = (
            "SELECT array_agg(trades ORDER BY first_gseq) FROM tick_blocks WHERE minute = $1 GROUP BY symbol"
        )
        conn = await asyncpg.connect(dsn)
        try:
            assert [list(r[0]) for r in await conn.fetch(sizes, T0)] == [[100, 100, 40]] * 3
        finally:
            await conn.close()
        assert await store.compact() == 0
        assert await store.ticks(symbols=frozenset({"BBB"}), limit=1000) == [
            batch(s).ticks[1] for s in range(720)
        ]

    run(dsn, body, flush_ms=60_000)


@pytest.mark.integration
def test_time_ranges_and_candles_are_a_filter_of_the_ticks(dsn: str) -> None:
    async def body(store: PostgresHistory) -> None:
        await check_time_ranges(store, T0 - 60 * 60_000_000_000)

    run(dsn, body)


@pytest.mark.integration
def test_a_flush_refused_at_its_commit_stores_nothing_and_is_made_again_after_a_restart(dsn: str) -> None:
    # A flush is one transaction: its blocks, the engine state and the watermark. Here the state's
    # update is refused, as a crash before the commit would leave it: none of the second flush's ticks
    # is stored. A restart resumes from the state stored with the first, and the engine makes the same
    # ticks again: each is stored once, and candles_1m counts each once.
    async def scenario() -> None:
        store = PostgresHistory(dsn, flush_ms=60_000, close_timeout_s=1)
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
            assert await conn.fetchval("SELECT count(*) FROM ticks") == 30
            await conn.execute("DROP TRIGGER refuse ON engine_state")
        finally:
            await conn.close()

        store = PostgresHistory(dsn, flush_ms=60_000)
        await store.start()
        try:
            assert await store.load_state() == "state-9"
            for step in range(5, 20):  # resumed from an older state: five steps are stored already
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
    # Ticks stored a row each under migrations 0001-0005 (keys (gseq, ts), (symbol, gseq), (symbol, ts);
    # minutes back-filled by 0005), then a start that applies 0006 (one key) and 0008 (the rows become
    # blocks, `ticks` a view of them): the same answers.
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
                    await conn.copy_records_to_table("ticks", records=[
                        (t.gseq, t.symbol, t.seq, t.ts, t.price, t.bid, t.ask, t.size, t.vol) for t in written
                    ])  # fmt: skip
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
            assert await count(dsn) == len(written)
            assert await count(dsn, "SELECT count(*) FROM pg_views WHERE viewname = 'ticks'") == 1
            # A block per run of a symbol's ticks in one minute and one SPAN (the rows were never in
            # flushes; the clock set back brings minutes back), at most BLOCK_TICKS each.
            blocks = 0
            for symbol in {t.symbol for t in written}:
                keys = [(t.ts // 60_000_000_000, t.gseq // SPAN) for t in written if t.symbol == symbol]
                blocks += sum(-(-len(list(run)) // BLOCK_TICKS) for _, run in itertools.groupby(keys))
            assert await count(dsn, "SELECT count(*) FROM tick_blocks") == blocks
        finally:
            await store.close()

    asyncio.run(scenario())


@pytest.mark.integration
def test_candles_equal_the_sqlite_stores(dsn: str, tmp_path: Path) -> None:
    # SQLite aggregates the ticks at query time; PostgreSQL reads one-minute rows kept by a trigger,
    # merged across flushes that split minutes, and across a second writer whose overlapping ticks are
    # found stored and left out. Both must give the same candles, also for ranges that cut minutes in two.
    async def scenario() -> None:
        pg, other = PostgresHistory(dsn), PostgresHistory(dsn)
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
        assert wanted >= 7  # up to 0008_tick_blocks
        assert await count(dsn, "SELECT count(*) FROM schema_migrations") == wanted
        today = time.strftime("%Y%m%d", time.gmtime())
        assert await count(dsn, f"SELECT count(*) FROM pg_class WHERE relname = 'tick_blocks_{today}'") == 1
        parts = await count(dsn, "SELECT count(*) FROM pg_inherits WHERE inhparent = 'tick_blocks'::regclass")
        assert parts >= 4  # yesterday, today, two ahead, and the default

    asyncio.run(scenario())

    async def far_past(store: PostgresHistory) -> None:
        store.write(batch(0, ts=DAY_NS))  # 1970-01-02: no partition, the writer makes one
        await store.flush()
        assert await count(dsn, "SELECT count(*) FROM tick_blocks_19700102") == 3  # a block per symbol
        ahead = (
            "SELECT count(*) FROM pg_class WHERE relname IN ('tick_blocks_19700103', 'tick_blocks_19700104')"
        )
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
        "0008_tick_blocks.postgres.sql",
        "0009_ticks_to_blocks.sql",
    ]
    assert timescale == [
        "0001_schema.timescale.sql",
        "0002_candles_1m.timescale.sql",
        "0003_symbol_time_index.timescale.sql",
        "0004_events.sql",
        "0007_stored_gseq.sql",
        "0008_tick_blocks.timescale.sql",
        "0009_ticks_to_blocks.sql",
    ]


@pytest.mark.integration
def test_the_default_partition_catches_a_day_without_one_and_never_blocks_it(dsn: str) -> None:
    day = 5 * DAY_NS  # 1970-01-06: no partition yet

    async def body(store: PostgresHistory) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            # Another writer (or a partition dropped by hand): the insert (a block of one tick, through the
            # `ticks` view) lands in the default partition.
            await conn.execute("INSERT INTO ticks VALUES (1000, 'AAA', 1, $1, 100, 99, 101, 1, 0.2)", day)
            assert await count(dsn, "SELECT count(*) FROM tick_blocks_default") == 1
        finally:
            await conn.close()
        # The store now writes that day: it needs the day's partition, which PostgreSQL refuses to create
        # while the default partition holds rows of its range; the row is moved into it instead.
        store.write(batch(1000, ts=day + 10**9))
        await store.flush()
        assert store.health().status is Status.OK
        assert await count(dsn, "SELECT count(*) FROM tick_blocks_default") == 0
        assert await count(dsn, "SELECT count(*) FROM tick_blocks_19700106") == 4
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
        assert await count(dsn, "SELECT count(*) FROM pg_class WHERE relname = 'tick_blocks_19700102'") == 0
        assert await count(dsn, "SELECT count(*) FROM tick_blocks_default") == 0
        assert [t.gseq for t in await store.ticks(symbols=None)] == [4, 5, 6]  # the recent ones stay

    run(dsn, with_retention, retention_days=30)


def test_partition_names_are_utc_days() -> None:
    for day in (0, 1, 19_000, 20_000):
        assert partition_day(partition_name(day)) == day
    assert partition_name(19_000) == "tick_blocks_20220108"
    assert partition_day("tick_blocks_default") is None


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
