"""Cases every history store must answer like a plain filter over the ticks written to it.

The stores no longer index (symbol, ts): a time range is narrowed to a gseq range through the per-minute
gseq bounds the writer keeps. That is only right if it holds when timestamps do not grow with gseq, so
the path here has its clock set back five minutes half-way (a restart on a machine whose clock was
behind), steps where only some symbols trade, and writes in flushes that split minutes.
"""

from __future__ import annotations

import itertools
from typing import Protocol

from marketfeed.history.candles import Candle, Interval
from marketfeed.ticks import SymbolSet, Tick, TickBatch

SYMBOLS = ("AAA", "BBB", "CCC")
MINUTE = 60_000_000_000


class Store(Protocol):
    def write(self, batch: TickBatch, state: str | None = None) -> None: ...
    async def flush(self) -> None: ...
    async def ticks(
        self, *, symbols: SymbolSet, start_ns: int | None = ..., end_ns: int | None = ...,
        after_gseq: int = ..., limit: int = ...,
    ) -> list[Tick]: ...  # fmt: skip
    async def candles(
        self, *, symbol: str, interval: Interval, start_ns: int | None, end_ns: int | None, limit: int
    ) -> list[Candle]: ...


def path(t0: int) -> list[TickBatch]:
    """400 steps of 1.3 s from t0 (on a minute); from step 200 the clock is 5 minutes behind."""
    out, gseq = [], 0
    for step in range(400):
        ts = t0 + step * 1_300_000_000 - (5 * MINUTE if step >= 200 else 0)
        ticks = []
        for i, s in enumerate(SYMBOLS):
            if (step + i) % 4 == 3:
                continue  # this symbol does not trade this step
            gseq += 1
            price = round(100 + (step * 7 + i * 3) % 13 * 0.01, 2)
            ticks.append(Tick(s, step + 1, gseq, ts, price, 99.0, 101.0, 1 + (step + i) % 5, 0.2))
        out.append(TickBatch(step=step, ticks=ticks))
    return out


def expected_candles(
    ticks: list[Tick], interval: Interval, start: int | None, end: int | None
) -> list[tuple[int, float, float, float, float, int, int]]:
    ns = interval.nanoseconds
    inside = [t for t in ticks if (start is None or t.ts >= start) and (end is None or t.ts < end)]
    out = []
    for k, group in itertools.groupby(
        sorted(inside, key=lambda t: (t.ts // ns, t.gseq)), key=lambda t: t.ts // ns
    ):
        g = list(group)
        out.append((k * ns, g[0].price, max(t.price for t in g), min(t.price for t in g), g[-1].price,
                    sum(t.size for t in g), len(g)))  # fmt: skip
    return out


async def check_time_ranges(store: Store, t0: int) -> None:
    batches = path(t0)
    for n, batch in enumerate(batches):
        store.write(batch)
        if n % 77 == 0:
            await store.flush()  # flushes that end mid-minute
    await store.flush()
    await check_queries(store, [t for b in batches for t in b.ticks], t0)


async def check_queries(store: Store, written: list[Tick], t0: int) -> None:
    """Time windows, symbol sets and cursors over `written` (the ticks of path(t0)) in `store`."""
    windows = [
        (None, None),
        (t0 + 90_000_000_000, None),
        (None, t0 + 4 * MINUTE + 1),
        (t0 + 2 * MINUTE + 500_000_000, t0 + 6 * MINUTE),  # before and after the clock went back
        (t0 - 5 * MINUTE, t0 + MINUTE),  # only ticks from after the jump, and the first minute
        (t0 + 100 * MINUTE, t0 + 101 * MINUTE),  # nothing there
    ]
    for (start, end), symbols in itertools.product(
        windows, [frozenset({"AAA"}), frozenset({"AAA", "CCC"}), None]
    ):
        for after in (0, 301):
            got = await store.ticks(
                symbols=symbols, start_ns=start, end_ns=end, after_gseq=after, limit=10_000
            )
            want = [
                t for t in written
                if (symbols is None or t.symbol in symbols) and t.gseq > after
                and (start is None or t.ts >= start) and (end is None or t.ts < end)
            ]  # fmt: skip
            assert got == want, (start, end, symbols, after)
        for interval in (Interval.S1, Interval.M1, Interval.M5):
            got_candles = await store.candles(
                symbol="BBB", interval=interval, start_ns=start, end_ns=end, limit=10_000
            )
            want_candles = expected_candles([t for t in written if t.symbol == "BBB"], interval, start, end)
            assert [
                (c.start, c.open, c.high, c.low, c.close, c.volume, c.trades) for c in got_candles
            ] == want_candles, (start, end, interval)
    # Pages of a few ticks (a store reads them in rounds and windows that grow with what it found).
    for (start, end), symbols in itertools.product(
        windows[:4], [frozenset({"AAA"}), frozenset({"BBB", "CCC"}), None]
    ):
        pages: list[Tick] = []
        after = 0
        while page := await store.ticks(
            symbols=symbols, start_ns=start, end_ns=end, after_gseq=after, limit=37
        ):
            assert len(page) <= 37
            pages += page
            after = page[-1].gseq
        want = [
            t for t in written
            if (symbols is None or t.symbol in symbols) and (start is None or t.ts >= start)
            and (end is None or t.ts < end)
        ]  # fmt: skip
        assert pages == want, (start, end, symbols)
