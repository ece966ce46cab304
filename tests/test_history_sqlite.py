from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest
from history_cases import MINUTE, check_queries, check_time_ranges, path

from marketfeed._engine import tick_minutes, tick_params
from marketfeed.history.sqlite import (
    COLUMNS,
    PAGE_SIZE,
    ROWS_PER_INSERT,
    SCHEMA,
    SQLiteHistory,
    minute_bounds,
    statement_sizes,
)
from marketfeed.ticks import Tick, TickBatch

T0 = (time.time_ns() // 60_000_000_000 - 60) * 60_000_000_000  # an hour ago, on a minute


def test_time_ranges_and_candles_are_a_filter_of_the_ticks(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = SQLiteHistory(tmp_path / "h.sqlite3", flush_ms=50)
        await store.start()
        try:
            await check_time_ranges(store, T0)
        finally:
            await store.close()

    asyncio.run(scenario())


def expected_bounds(ticks: list[Tick]) -> list[tuple[str, int, int, int]]:
    bounds: dict[tuple[str, int], tuple[int, int]] = {}
    for t in ticks:
        lo, hi = bounds.get((t.symbol, t.ts // MINUTE), (t.gseq, t.gseq))
        bounds[t.symbol, t.ts // MINUTE] = (min(lo, t.gseq), max(hi, t.gseq))
    return sorted((s, m, lo, hi) for (s, m), (lo, hi) in bounds.items())


def test_minute_bounds_from_the_batches_are_those_of_the_ticks() -> None:
    batches = path(T0)  # the clock goes back half-way, and some symbols skip steps
    for flush in (batches[:77], batches[150:260], batches):
        ticks = [t for b in flush for t in b.ticks]
        bounds = minute_bounds(ticks)
        assert bounds is not None
        assert sorted(bounds) == expected_bounds(ticks)


def test_ticks_out_of_gseq_order_are_bounded_by_sqlite(tmp_path: Path) -> None:
    batches = path(T0)
    first, second = list(batches[0].ticks), list(batches[1].ticks)
    both = minute_bounds(first + second)  # two steps, a symbol twice: still from the ticks
    assert both is not None
    assert sorted(both) == expected_bounds(first + second)
    assert len(both) < len(first + second)
    assert minute_bounds(second + first) is None  # out of gseq order
    assert minute_bounds(first + second[::-1]) is None
    assert minute_bounds(first + first[-1:]) is None  # a gseq twice
    assert minute_bounds([]) == []

    async def scenario() -> None:  # three steps a batch, backwards: the store reads the minutes back itself
        store = SQLiteHistory(tmp_path / "h.sqlite3", flush_ms=50)
        await store.start()
        try:
            for k in range(0, len(batches), 3):
                store.write(TickBatch(step=k, ticks=[t for b in batches[k : k + 3] for t in b.ticks][::-1]))
                if k % 60 == 0:
                    await store.flush()
            await store.flush()
            await check_queries(store, [t for b in batches for t in b.ticks], T0)
        finally:
            await store.close()

    asyncio.run(scenario())


def test_a_version_1_file_is_upgraded_with_the_minutes_of_its_ticks(tmp_path: Path) -> None:
    # A file written before tick_minutes existed: the schema of version 1, ticks, no user_version.
    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(SCHEMA)
    ticks = [Tick("AAA", n, n, T0 + n * 20_000_000_000, 100.0 + n, 99.0, 101.0, 1, 0.2) for n in range(1, 10)]
    old.executemany("INSERT INTO ticks (symbol, seq, gseq, ts, price, bid, ask, size, vol) VALUES "
                    "(?,?,?,?,?,?,?,?,?)", ticks)  # fmt: skip
    old.commit()
    old.close()

    async def scenario() -> None:
        store = SQLiteHistory(path, flush_ms=50)
        await store.start()
        try:
            window = await store.ticks(
                symbols=frozenset({"AAA"}), start_ns=T0 + 60_000_000_000, end_ns=T0 + 120_000_000_000
            )
            assert window == [t for t in ticks if T0 + 60e9 <= t.ts < T0 + 120e9] != []
            store.write(TickBatch(step=10, ticks=[ticks[-1]._replace(seq=10, gseq=10, ts=T0 + 10**12)]))
            await store.flush()
            assert len(await store.ticks(symbols=frozenset({"AAA"}), start_ns=T0 + 10**12)) == 1
        finally:
            await store.close()

    asyncio.run(scenario())
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
    assert conn.execute("PRAGMA page_size").fetchone()[0] == 4096  # SQLite's default, kept
    kinds = dict(
        conn.execute("SELECT name, type FROM sqlite_master WHERE tbl_name IN ('ticks', 'tick_rows')")
    )
    assert kinds == {"ticks": "view", "tick_rows": "table", "tick_rows_symbol": "index"}
    # The old rows, numbered, and the new one, read back through the view as the table read before.
    assert conn.execute("SELECT * FROM ticks ORDER BY gseq").fetchall() == [
        (t.gseq, t.symbol, t.seq, t.ts, t.price, t.bid, t.ask, t.size, t.vol) for t in ticks
    ] + [(10, "AAA", 10, T0 + 10**12, 109.0, 99.0, 101.0, 1, 0.2)]
    assert conn.execute("SELECT DISTINCT typeof(symbol) FROM tick_rows").fetchall() == [("integer",)]
    conn.close()


def test_a_new_symbol_is_numbered_in_its_flush_and_a_rolled_back_number_is_not_kept(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"

    def tick(symbol: str, gseq: int) -> Tick:
        return Tick(symbol, gseq, gseq, T0 + gseq, 100.0, 99.0, 101.0, 1, 0.2)

    async def scenario() -> None:
        store = SQLiteHistory(path, flush_ms=10_000)
        await store.start()
        try:
            store.write(TickBatch(step=0, ticks=[tick("AAA", 1), tick("BBB", 2)]))
            await store.flush()
            # A commit that fails after numbering CCC: its number goes with the rollback.
            other = sqlite3.connect(path)
            other.execute("CREATE TRIGGER no99 BEFORE INSERT ON tick_rows WHEN NEW.gseq = 99 "
                          "BEGIN SELECT RAISE(ABORT, 'refused'); END")  # fmt: skip
            store.write(TickBatch(step=1, ticks=[tick("CCC", 99), tick("AAA", 100)]))
            with pytest.raises(sqlite3.IntegrityError, match="refused"):
                await store.flush()
            other.execute("DROP TRIGGER no99")
            other.execute("INSERT INTO symbols (name) VALUES ('DDD')")  # takes the number CCC had
            other.commit()
            other.close()
            await store.flush()  # the same batch again: CCC is numbered anew
            assert [t.gseq for t in await store.ticks(symbols=frozenset({"CCC"}))] == [99]
            assert [t.gseq for t in await store.ticks(symbols=frozenset({"AAA"}))] == [1, 100]
            assert await store.ticks(symbols=frozenset({"DDD"})) == []
        finally:
            await store.close()

    asyncio.run(scenario())
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT name FROM symbols ORDER BY id").fetchall() == [
        ("AAA",),
        ("BBB",),
        ("DDD",),
        ("CCC",),
    ]
    conn.close()


def test_a_new_file_gets_the_larger_pages_and_keeps_them(tmp_path: Path) -> None:
    async def scenario() -> list[Tick]:
        store = SQLiteHistory(tmp_path / "h.sqlite3", flush_ms=50)
        await store.start()
        try:
            store.write(TickBatch(step=0, ticks=[Tick("AAA", 1, 1, T0, 100.0, 99.0, 101.0, 1, 0.2)]))
            await store.flush()
            return await store.ticks(symbols=frozenset({"AAA"}))
        finally:
            await store.close()

    assert len(asyncio.run(scenario())) == 1
    assert len(asyncio.run(scenario())) == 1  # reopened: the same tick, not a second
    conn = sqlite3.connect(tmp_path / "h.sqlite3")
    assert PAGE_SIZE != 4096
    assert conn.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_a_flush_of_any_size_goes_in_a_few_statements_and_whole(tmp_path: Path) -> None:
    sizes = (1, 2, 3, 437, 2047, 2048, 2049, 2999, 3000, 3001, 6001)
    for n in (0, *sizes):
        parts = statement_sizes(n)
        assert sum(parts) == n
        assert len(parts) <= n // ROWS_PER_INSERT + 12
        assert set(parts) <= {ROWS_PER_INSERT, *(1 << b for b in range(12))}
    written: list[Tick] = []

    async def scenario() -> None:
        store = SQLiteHistory(tmp_path / "h.sqlite3", flush_ms=10_000)
        await store.start()
        try:
            for step, n in enumerate(sizes):  # a flush each, of that many rows
                first = len(written) + 1
                ticks = [
                    Tick(f"S{i}", step + 1, first + i, T0 + step, 100.0 + i / 100, 99.5, 101.25, i, 0.2)
                    for i in range(n)
                ]
                written.extend(ticks)
                store.write(TickBatch(step=step, ticks=ticks))
                await store.flush()
        finally:
            await store.close()

    asyncio.run(scenario())
    with sqlite3.connect(tmp_path / "h.sqlite3") as conn:
        stored = conn.execute(f"SELECT {COLUMNS} FROM ticks ORDER BY gseq").fetchall()
        minutes = conn.execute("SELECT symbol, minute, first_gseq, last_gseq FROM tick_minutes").fetchall()
    assert stored == [tuple(t) for t in written]
    # Each symbol's minute, merged over the flushes that held it (up to 6,001 rows an upsert).
    bounds: dict[tuple[str, int], tuple[int, int]] = {}
    for t in written:
        lo, hi = bounds.get((t.symbol, t.ts // MINUTE), (t.gseq, t.gseq))
        bounds[t.symbol, t.ts // MINUTE] = (min(lo, t.gseq), max(hi, t.gseq))
    assert sorted(minutes) == sorted((s, m, lo, hi) for (s, m), (lo, hi) in bounds.items())


def test_tick_params_flattens_the_ticks_with_each_symbols_number_or_says_one_is_missing() -> None:
    ticks = [Tick("A", 1, 2, 3, 4.5, 4.0, 5.0, 7, 0.2), Tick("B", 2, 3, 4, 1.5, 1.0, 2.0, 8, 0.3)]
    assert tick_params(ticks, {"A": 10, "B": 11}, 1, 1) == (11, 2, 3, 4, 1.5, 1.0, 2.0, 8, 0.3)
    assert tick_params(ticks, {"A": 10, "B": 11}, 0, 2) == (10, *ticks[0][1:], 11, *ticks[1][1:])
    assert tick_params(ticks, {"A": 10}, 0, 1) is not None
    assert tick_params(ticks, {"A": 10}, 0, 2) is None  # B has no number yet
    assert tick_params(ticks, {}, 2, 0) == ()
    with pytest.raises(ValueError, match="exceeds len"):
        tick_params(ticks, {"A": 10, "B": 11}, 1, 2)
    with pytest.raises(TypeError, match="must be a list"):
        tick_params(tuple(ticks), {"A": 10, "B": 11}, 0, 1)
    with pytest.raises(TypeError, match="must be a Tick"):
        tick_params([("A", 1)], {"A": 10}, 0, 1)


def test_tick_minutes_floors_minutes_and_refuses_what_is_not_a_list_of_ticks() -> None:
    ticks = [Tick("A", 1, 1, -1, 1.0, 1.0, 1.0, 1, 0.1), Tick("A", 2, 2, 59, 1.0, 1.0, 1.0, 1, 0.1)]
    assert tick_minutes(ticks, 60) == [("A", -1, 1, 1), ("A", 0, 2, 2)]  # -1 // 60 is -1, as in Python
    with pytest.raises(TypeError, match="must be a list"):
        tick_minutes(tuple(ticks), 60)
    with pytest.raises(TypeError, match="must be a Tick"):
        tick_minutes([("A", 1)], 60)
    with pytest.raises(TypeError, match="must be a str"):
        tick_minutes([ticks[0]._replace(symbol=7)], 60)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="minute_ns must be > 0"):
        tick_minutes(ticks, 0)
