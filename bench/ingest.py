"""History benchmarks: ingest through the stores' batch writers, and queries on a large table.

    .venv/bin/python bench/ingest.py            # SQLite and PostgreSQL ingest, then PostgreSQL queries
    .venv/bin/python bench/ingest.py --quick    # a tiny run (the test suite uses it)

Ingest: batches of `--assets` ticks (one engine step each) are handed to the store's `write()` as
fast as the writer takes them, with the backlog checked to stay bounded; ticks per second over the
whole run, including the final flush. Baselines, measured in the same run: the plainest fast load of
the same rows (SQLite `executemany` into a bare table; PostgreSQL binary COPY into a bare table) —
what the store adds is its deduplication, indexes and the engine state in the same transaction.
"+engine": the same number of ticks made meanwhile by the engine, as the server makes them (steps of
LIVE_ASSETS assets on an engine thread), so the writer shares the cores and the GIL with it. Each
run also prints the CPU time it cost a tick: this process's (all its threads: with "+engine", the
engine's too) and the PostgreSQL server's; together against the two cores' 2 CPU-seconds a second,
they say whether the cores or a single thread (the GIL, a backend) is the limit.

Merge (PostgreSQL): `--merge-symbols` symbols at 25 steps a second written in a live server's 250 ms
flushes, then rounds of the writer's merge of closed minutes (`compact`); baseline: the rate at which
those flushes wrote the ticks.

Queries (PostgreSQL): one day of 1-minute candles for one symbol and a 10,000-tick page, from a table
of `--rows` ticks, p50 and p99 over `--repeat` runs. PostgreSQL is started like the tests start it
(tests/services.py): a throwaway server on a free port.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import resource
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from marketfeed.engine import SECONDS_PER_YEAR, Simulator, Universe
from marketfeed.history.blocks import MINUTE_NS
from marketfeed.history.candles import Interval
from marketfeed.history.postgres import PostgresHistory
from marketfeed.history.sqlite import SQLiteHistory
from marketfeed.market import Market
from marketfeed.runtime import quiet_garbage_collector
from marketfeed.schedule import Schedule
from marketfeed.ticks import Tick, TickBatch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from procstat import tree_cpu_seconds
from services import Postgres, free_port, postgres_bin, workdir

DAY_NS = 86_400 * 10**9
#: Assets per step when the engine makes the ticks: enough that the engine outpaces the writers (with
#: 100, the engine's round trip per step holds it near 140,000 ticks/s, below what they take).
LIVE_ASSETS = 1000


def batches(steps: int, assets: int, start_ns: int, step_ns: int, first: int = 0) -> list[TickBatch]:
    out = []
    for step in range(first, first + steps):
        ts = start_ns + (step - first) * step_ns
        price = 100.0 + (step % 50) * 0.01
        ticks = [
            Tick(f"S{i:03d}", step + 1, step * assets + i + 1, ts, price, 99.99, 100.01, 10, 0.2)
            for i in range(assets)
        ]
        out.append(TickBatch(step=step, ticks=ticks, encoded=[b"{}"] * assets))  # stores never read these
    return out


Store = SQLiteHistory | PostgresHistory
Settle = Callable[[], Awaitable[None]]
QUERIES = (
    "1-minute candles, one symbol, one day",
    "10,000-tick page",
    "1,000 ticks across all symbols",
    "an hour of one symbol",
)


class CpuClock:
    """CPU-seconds spent so far by this process (all its threads) and by the PostgreSQL server whose
    data directory is `data` (its postmaster, the backends alive, and those it has reaped), from
    getrusage and /proc (Linux)."""

    def __init__(self, data: Path | None = None) -> None:
        self.postmaster = int((data / "postmaster.pid").read_text().split()[0]) if data else None

    def __call__(self) -> tuple[float, float | None]:
        me = resource.getrusage(resource.RUSAGE_SELF)
        server = None if self.postmaster is None else tree_cpu_seconds(self.postmaster)
        return me.ru_utime + me.ru_stime, server


@dataclass
class Run:
    rate: float  #: ticks per second
    worst: int  #: the largest backlog seen
    cpu_us: tuple[float, float | None]  #: CPU-us a tick: this process, the database server (if any)


def cpu_per_tick(
    clock: CpuClock, before: tuple[float, float | None], ticks: int
) -> tuple[float, float | None]:
    (here, server), (here0, server0) = clock(), before
    per = 1e6 / max(1, ticks)
    return (here - here0) * per, None if server is None or server0 is None else (server - server0) * per


async def ingest(
    store: Store, data: list[TickBatch], bound: int, clock: CpuClock, settle: Settle | None = None
) -> Run:
    """Ticks per second through the store, the largest backlog seen, and the CPU a tick cost; `settle`
    (PostgreSQL: a checkpoint) is awaited after the last flush, within the time."""
    await store.start()
    worst = 0
    t0, c0 = time.perf_counter(), clock()
    for batch in data:
        store.write(batch, state='{"step": 0}')
        backlog = int(store.metrics()["history_backlog_rows"])
        worst = max(worst, backlog)
        while store.metrics()["history_backlog_rows"] > bound:  # the engine would be paced; wait
            await asyncio.sleep(0.001)
        await asyncio.sleep(0)
    await store.flush()
    if settle is not None:
        await settle()
    elapsed, total = time.perf_counter() - t0, sum(len(b) for b in data)
    cpu = cpu_per_tick(clock, c0, total)
    await store.close()
    return Run(total / elapsed, worst, cpu)


async def ingest_live(
    store: Store, steps: int, assets: int, bound: int, clock: CpuClock, settle: Settle | None = None
) -> Run:
    """The same, with the ticks made by the engine as the server makes them when it runs flat out: on
    an engine thread, the steps due (`Schedule.run`: for up to BURST_S at a time) and the state after
    them, then `write` on the loop, so the writer and the engine share the two cores."""
    base = Universe.default().assets
    names = [dataclasses.replace(base[i % len(base)], symbol=f"S{i:03d}") for i in range(assets)]
    universe = dataclasses.replace(Universe.default(), assets=tuple(names))
    market = Market(Simulator(universe, dt=0.1 / SECONDS_PER_YEAR, seed=1))
    schedule = Schedule(0.0)  # every step is due at once
    t_start = time.time_ns()

    def step() -> TickBatch:
        return market.step(t_start + market.next_step * 10**8)

    def run() -> tuple[list[TickBatch], str]:
        return schedule.run(step), market.state().to_json()

    loop = asyncio.get_running_loop()
    await store.start()
    worst, ticks = 0, 0
    with ThreadPoolExecutor(1, thread_name_prefix="engine") as engine:
        t0, c0 = time.perf_counter(), clock()
        while market.next_step < steps:
            made, state = await loop.run_in_executor(engine, run)
            for i, batch in enumerate(made):
                store.write(batch, state=state if i == len(made) - 1 else None)
                ticks += len(batch)
            worst = max(worst, int(store.metrics()["history_backlog_rows"]))
            while store.metrics()["history_backlog_rows"] > bound:
                await asyncio.sleep(0.001)
        await store.flush()
        if settle is not None:
            await settle()
        elapsed = time.perf_counter() - t0
        cpu = cpu_per_tick(clock, c0, ticks)
    await store.close()
    return Run(ticks / elapsed, worst, cpu)


async def merge(dsn: str, symbols: int, flush_steps: float, rounds: int) -> None:
    """The PostgreSQL writer's merge of closed minutes (`compact`), for `symbols` symbols at 25 steps a
    second flushed every `flush_steps` steps (6.25: a live server's 250 ms), as its loop calls it once
    a minute: each round for at most COMPACT_BUDGET_S. Baseline: writing the same ticks in those
    flushes."""
    step_ns, steps = 40_000_000, 2 * 1500 + 10  # two minutes and a little: the first one is closed
    t0 = (time.time_ns() // MINUTE_NS - 30) * MINUTE_NS
    store = PostgresHistory(dsn, flush_rows=10**9)
    await store.start()
    data = batches(steps, symbols, t0, step_ns)
    w0, flushes, done = time.perf_counter(), 0, 0
    while done < steps:
        flushes += 1
        end = min(steps, round(flushes * flush_steps))
        for b in data[done:end]:
            store.write(b)
        await store.flush()
        done = end
    wrote = time.perf_counter() - w0
    write_rate = steps * symbols / wrote
    print(f"\nmerge of closed minutes: {symbols:,} symbols at 25 steps/s, flushes of {flush_steps:g} "
          f"steps ({flushes:,} flushes, {wrote / flushes * 1e3:.1f} ms each, {write_rate:,.0f} ticks/s "
          "written)")  # fmt: skip
    merged = (
        "SELECT count(*), coalesce(sum(n), 0)::bigint FROM (SELECT sum(trades) AS n FROM tick_blocks"
        f" WHERE minute = {t0} GROUP BY symbol HAVING max(trades) > {flush_steps + 1}) m"
    )
    async with store.pool.acquire() as conn:
        before = 0
        for k in range(1, rounds + 1):
            c0 = time.perf_counter()
            made = await store.compact()
            took = time.perf_counter() - c0
            groups, ticks = await conn.fetchrow(merged) or (0, 0)
            rate = (ticks - before) / took
            print(f"  round {k}: {took:.2f} s, {made:,} blocks made from {ticks - before:,} ticks, "
                  f"{rate:,.0f} ticks/s (ratio {rate / write_rate:.2f}); {groups:,} of {symbols:,} "
                  "symbol-minutes merged")  # fmt: skip
            before = ticks
            if not made:
                break
    await store.close()


def rows_of(data: list[TickBatch]) -> list[tuple[int, str, int, int, float, float, float, int, float]]:
    return [
        (t.gseq, t.symbol, t.seq, t.ts, t.price, t.bid, t.ask, t.size, t.vol) for b in data for t in b.ticks
    ]


def sqlite_baseline(path: Path, data: list[TickBatch]) -> float:
    rows = rows_of(data)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE t (gseq INTEGER, symbol TEXT, seq INTEGER, ts INTEGER, price REAL, bid REAL, "
                 "ask REAL, size INTEGER, vol REAL)")  # fmt: skip
    t0 = time.perf_counter()
    for i in range(0, len(rows), 10_000):
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO t VALUES (?,?,?,?,?,?,?,?,?)", rows[i : i + 10_000])
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    conn.close()
    return len(rows) / elapsed


async def checkpoint(dsn: str) -> None:
    """Write out what is in the WAL and shared buffers. Before a run (untimed) and at its end (timed),
    so that each run pays for writing out its own pages, as a server does over time, and not for the
    run before it: a run's WAL alone seldom reaches max_wal_size, so the checkpoint that three runs'
    WAL set off landed in whichever run came next (the "+engine" ones)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def postgres_baseline(dsn: str, data: list[TickBatch]) -> float:
    rows = rows_of(data)
    conn = await asyncpg.connect(dsn)
    await conn.execute("CREATE TABLE bare (gseq bigint, symbol text, seq bigint, ts bigint, price float8, "
                       "bid float8, ask float8, size bigint, vol float8)")  # fmt: skip
    t0 = time.perf_counter()
    for i in range(0, len(rows), 10_000):
        await conn.copy_records_to_table("bare", records=rows[i : i + 10_000])
    await conn.execute("CHECKPOINT")
    elapsed = time.perf_counter() - t0
    await conn.close()
    return len(rows) / elapsed


async def queries(dsn: str, rows: int, repeat: int) -> dict[str, list[float]]:
    """Fill a table of `rows` ticks over one day, then time a day of 1-minute candles and a page (the
    targets), and two reads the server also makes: a page across all symbols (an SSE client resuming
    from the history) and an hour of one symbol (a replay)."""
    assets = 100
    steps = rows // assets
    day0 = (time.time_ns() // DAY_NS - 1) * DAY_NS
    store = PostgresHistory(dsn, flush_rows=50_000)
    await store.start()
    step_ns = DAY_NS // steps
    for chunk in range(0, steps, 2000):
        for b in batches(min(2000, steps - chunk), assets, day0 + chunk * step_ns, step_ns, first=chunk):
            store.write(b)
        await store.flush()
    conn = await asyncpg.connect(dsn)
    await conn.execute("VACUUM ANALYZE")  # what autovacuum does on a running server
    await conn.close()
    times: dict[str, list[float]] = {name: [] for name in QUERIES}
    # One cold round first (the freshly loaded pages are read for the first time, the statements are
    # prepared): reported on its own, not mixed into the steady-state percentiles.
    t0 = time.perf_counter()
    await store.candles(symbol="S001", interval=Interval.M1, start_ns=day0, end_ns=day0 + DAY_NS, limit=5000)
    await store.ticks(symbols=frozenset({"S001"}), after_gseq=rows // 3, limit=10_000)
    print(f"  first (cold) candles + page: {(time.perf_counter() - t0) * 1000:.0f} ms")
    for i in range(repeat):
        symbol = frozenset({f"S{i % assets:03d}"})
        hour = day0 + (i * 3_600_000_000_000) % (DAY_NS - 3_600_000_000_000)
        runs = {
            QUERIES[0]: store.candles(
                symbol="S007", interval=Interval.M1, start_ns=day0, end_ns=day0 + DAY_NS, limit=5000
            ),
            QUERIES[1]: store.ticks(symbols=symbol, after_gseq=(i * 7919) % rows // 2, limit=10_000),
            QUERIES[2]: store.ticks(symbols=None, after_gseq=(i * 7919) % rows // 2, limit=1000),
            QUERIES[3]: store.ticks(
                symbols=symbol, start_ns=hour, end_ns=hour + 3_600_000_000_000, limit=10_000
            ),
        }
        for name, query in runs.items():
            t0 = time.perf_counter()
            found = await query
            times[name].append((time.perf_counter() - t0) * 1000)
            if i == 0 and not found:
                raise RuntimeError(f"the query benchmark found no data: {name}")
    await store.close()
    return times


def row(name: str, run: Run, base: float, what: str) -> str:
    here, server = run.cpu_us
    cpu = f"{here:.2f}" + (f" + {server:.2f}" if server is not None else "")
    return (
        f"{name:<12}{run.rate:>14,.0f}{base:>14,.0f}{run.rate / base:>8.2f}{run.worst:>14,}{cpu:>14}   {what}"
    )


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main_async(args: argparse.Namespace) -> None:
    quiet_garbage_collector()  # the server's collector settings (marketfeed serve), for every part
    data = batches(args.steps, args.assets, time.time_ns(), 10**8)
    total = args.steps * args.assets
    print(f"history benchmark: {total:,} ticks in batches of {args.assets} (one engine step each)")
    print(
        f"{'store':<12}{'ticks/s':>14}{'baseline':>14}{'ratio':>8}{'max backlog':>14}"
        f"{'CPU-us/tick':>14}   baseline"
    )
    print(f"{'':<56}(this process + PostgreSQL's)")
    if not args.skip_sqlite:
        with tempfile.TemporaryDirectory() as tmp:
            lite = SQLiteHistory(Path(tmp) / "h.sqlite3", flush_rows=args.flush_rows)
            run = await ingest(lite, data, args.bound, CpuClock())
            base = sqlite_baseline(Path(tmp) / "bare.sqlite3", data)
            print(row("sqlite", run, base, "executemany, bare table"))
            lite = SQLiteHistory(Path(tmp) / "live.sqlite3", flush_rows=args.flush_rows)
            run = await ingest_live(
                lite, max(1, args.steps * args.assets // LIVE_ASSETS), LIVE_ASSETS, args.bound, CpuClock()
            )
            print(row("  +engine", run, base, "the same, the engine making the ticks meanwhile"))
    bindir = postgres_bin()
    if bindir is None:
        print("postgres: not installed (sudo bash .ci/install-services.sh); skipped")
        return
    server = Postgres(workdir("bench-postgres"), free_port(), bindir)
    server.initdb()
    server.start()
    try:
        # Each run on a database of its own; the bare table between the first runs and the "+engine"
        # ones, so that a drift of the machine's speed shows in the ratios. The first run on a new
        # server also creates its WAL files: `--runs 2` shows how much that costs. Each run starts
        # from a checkpoint and ends with one, in its time (`checkpoint`).
        clock = CpuClock(server.data)
        stored: list[Run] = []
        for i in range(args.runs):
            dsn = await asyncio.to_thread(server.create_database, f"ingest{i}")
            await checkpoint(dsn)
            store = PostgresHistory(dsn, flush_rows=args.flush_rows)
            stored.append(await ingest(store, data, args.bound, clock, functools.partial(checkpoint, dsn)))
        bare = await asyncio.to_thread(server.create_database, "bare")
        await checkpoint(bare)
        base = await postgres_baseline(bare, data)
        for run in stored:
            print(row("postgres", run, base, "binary COPY, bare table"))
        for i in range(args.runs):
            dsn = await asyncio.to_thread(server.create_database, f"live{i}")
            await checkpoint(dsn)
            live = PostgresHistory(dsn, flush_rows=args.flush_rows)
            run = await ingest_live(
                live,
                max(1, args.steps * args.assets // LIVE_ASSETS),
                LIVE_ASSETS,
                args.bound,
                clock,
                functools.partial(checkpoint, dsn),
            )
            print(row("  +engine", run, base, "the same, the engine making the ticks meanwhile"))
        if not args.skip_merge:
            dsn = await asyncio.to_thread(server.create_database, "merge")
            await merge(dsn, args.merge_symbols, 6.25, 3)
        if args.skip_queries:
            return
        # The ingest data (millions of Tick objects) would otherwise stay alive through the queries,
        # and a full garbage collection over them lands in a query now and then (~400 ms here).
        data.clear()
        quiet_garbage_collector()  # again: what is alive now is frozen out of collections too
        dsn = await asyncio.to_thread(server.create_database, "queries")
        times = await queries(dsn, args.rows, args.repeat)
        filled = f"{args.rows:,} ticks (PostgreSQL)"
        print(f"\nqueries on {filled}, {args.repeat} runs:")
        for name, ms in times.items():
            p50, p99 = statistics.median(ms), pct(ms, 0.99)
            print(f"  {name:<38} p50 {p50:.1f} ms, p99 {p99:.1f} ms, slowest {max(ms):.1f} ms")
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)  # 3-4 GB a run: a full disk stopped a run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--assets", type=int, default=100)
    p.add_argument("--flush-rows", type=int, default=50_000)
    p.add_argument("--bound", type=int, default=500_000, help="backlog the writer may reach")
    p.add_argument("--rows", type=int, default=10_000_000, help="table size for the query benchmark")
    p.add_argument("--repeat", type=int, default=200, help="runs per query (p99 of 50 runs = the max)")
    p.add_argument("--runs", type=int, default=1, help="PostgreSQL ingest runs, each on a new database")
    p.add_argument("--skip-sqlite", action="store_true", help="PostgreSQL only")
    p.add_argument("--skip-queries", action="store_true", help="no query benchmark")
    p.add_argument("--skip-merge", action="store_true", help="no merge benchmark")
    p.add_argument("--merge-symbols", type=int, default=1000, help="symbols of the merge benchmark")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.steps, args.assets, args.rows, args.repeat, args.flush_rows = 50, 10, 20_000, 3, 100
        args.merge_symbols = 3
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
