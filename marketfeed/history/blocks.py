"""Tick blocks: how the PostgreSQL store lays a flush out on disk, and its binary COPY payload.

A row per tick made every tick enter a B-tree keyed by symbol (and two BRIN indexes and a candle
trigger): 5-8 microseconds of the database's CPU per tick, 5-8 times what a bare COPY of the same rows
costs (docs/performance.md, section 3). A block is one symbol's ticks of one flush within one
minute, stored as a row of arrays, one array per tick column, in gseq order, with the minute's OHLCV
of those ticks beside them (TimescaleDB's compressed chunks keep a segment per symbol in the same way).
The keys and the candle trigger then see a row per block instead of one per tick.

A block never spans more than SPAN gseqs (it is also cut where gseq // SPAN changes), so a query for
the ticks of a gseq range (lo, hi] needs only the blocks with first_gseq in (lo - SPAN, hi]. It holds
at most BLOCK_TICKS ticks, so that a row stays within a page, stored as it is (toast_tuple_target):
a larger one would be compressed or moved to the TOAST table, which costs more than the row. One
symbol's blocks never overlap in gseq: a symbol's ticks of one flush are all in its blocks of that
flush, and each flush holds only ticks newer than the previous one, or the ones missing from the store
(`Columns.without` numbers the runs between stored ticks, and a block never spans two runs).

The payload is PostgreSQL's binary COPY format: the blocks and their summaries are worked out with
NumPy, and the bytes written in one pass in C++ (`block_rows`, csrc/pgcopy.hpp), so a tick costs no
Python call of its own.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from marketfeed._engine import block_rows, tick_columns
from marketfeed.ticks import Tick

MINUTE_NS = 60_000_000_000
SPAN = 1 << 16
BLOCK_TICKS = 100  # 8 arrays of 100 values: 6.6 KB, under the 8,160 bytes a row may fill uncompressed

#: The columns of tick_blocks in the payload's order; the per-tick arrays last, in ARRAY_COLUMNS order.
SUMMARY_COLUMNS = (
    "minute", "first_gseq", "last_gseq", "first_ts", "last_ts",
    "open", "high", "low", "close", "volume", "trades", "pv",
)  # fmt: skip
ARRAY_COLUMNS = ("gseq", "seq", "ts", "price", "bid", "ask", "size", "vol")
BLOCK_COLUMNS = ("symbol", *SUMMARY_COLUMNS, *ARRAY_COLUMNS)

INT8_OID, FLOAT8_OID = 20, 701
_FLOAT_ARRAYS = {"price", "bid", "ask", "vol"}
_FLOAT_SUMMARIES = {"open", "high", "low", "close", "pv"}
_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_TRAILER = struct.pack(">h", -1)
_FIELDS = struct.pack(">h", len(BLOCK_COLUMNS))
#: Each summary as (length 8, value): one fixed-size record per block.
_SUMMARY = np.dtype(
    [(f"{c}_{f}", ">i4" if f == "len" else ">f8" if c in _FLOAT_SUMMARIES else ">i8")
     for c in SUMMARY_COLUMNS for f in ("len", "v")]
)  # fmt: skip
#: Each array column's element type.
_OIDS = [FLOAT8_OID if c in _FLOAT_ARRAYS else INT8_OID for c in ARRAY_COLUMNS]


Array = npt.NDArray[Any]


@dataclass(frozen=True)
class Columns:
    """A flush's ticks as columns, each symbol's together in gseq order (the blocks' order)."""

    symbol: Array  #: an index into `names` for each tick
    names: list[str]
    arrays: dict[str, Array]  #: ARRAY_COLUMNS, one value per tick

    def __len__(self) -> int:
        return len(self.symbol)

    @property
    def gseq(self) -> Array:
        return self.arrays["gseq"]

    def days(self, day_ns: int) -> set[int]:
        return set(np.unique(self.arrays["ts"] // day_ns).tolist())

    def without(self, stored: Array) -> tuple[Columns, Array]:
        """These columns less the ticks whose gseq is in `stored`, and a run number for each tick kept
        that changes after every tick left out: a block that spanned a stored tick of its symbol would
        overlap that tick's block."""
        out = np.isin(self.gseq, stored)
        keep = ~out
        runs = np.cumsum(out)[keep]
        arrays = {c: a[keep] for c, a in self.arrays.items()}
        return Columns(self.symbol[keep], self.names, arrays), runs


class BlockEncoder:
    """Cuts ticks into blocks and writes them as one binary COPY payload for tick_blocks."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}  # each symbol seen, numbered in the order first seen
        self._names: list[str] = []
        self._rows: list[bytes] = []  # the row start (field count, symbol) of each symbol

    def columns(self, ticks: Sequence[Tick], after_gseq: int = 0) -> Columns:
        """The ticks newer than `after_gseq`, once per gseq (the first), sorted into blocks' order: by
        symbol, and within a symbol in the order given (gseq order). The columns are read in C++
        (`tick_columns`): a pass per column in Python cost 0.3 us a tick."""
        ticks = list(ticks)
        n = len(ticks)
        ints = np.empty((5, n), dtype=np.int64)
        floats = np.empty((4, n), dtype=np.float64)
        while (unknown := tick_columns(ticks, self._ids, ints, floats)) >= 0:
            for name in dict.fromkeys(t.symbol for t in ticks[unknown:]):
                if name not in self._ids:
                    self._ids[name] = len(self._names)
                    self._names.append(name)
                    data = name.encode()
                    self._rows.append(_FIELDS + struct.pack(">i", len(data)) + data)
        symbol = ints[0]
        arrays = {"gseq": ints[2], "seq": ints[1], "ts": ints[3], "price": floats[0], "bid": floats[1],
                  "ask": floats[2], "size": ints[4], "vol": floats[3]}  # fmt: skip
        g = arrays["gseq"]
        keep: Array | None = None
        if n and not (g[0] > after_gseq and np.all(g[1:] > g[:-1])):  # in order and new: nothing to drop
            _, first = np.unique(g, return_index=True)  # a batch delivered twice: keep the first
            keep = np.sort(first[g[first] > after_gseq])
        order = np.argsort(symbol if keep is None else symbol[keep], kind="stable")
        if keep is not None:
            order = keep[order]
        return Columns(symbol[order], self._names, {c: a[order] for c, a in arrays.items()})

    def encode(self, columns: Columns, runs: Array | None = None) -> tuple[bytes, int]:
        """The payload for `columns` and its number of blocks. `runs` (one per tick, non-decreasing
        within a symbol) cuts a block where it changes."""
        n = len(columns)
        if not n:
            return _HEADER + _TRAILER, 0
        a = columns.arrays
        g, t, p, z = a["gseq"], a["ts"], a["price"], a["size"]
        minute = t // MINUTE_NS
        span = g // SPAN
        symbol = columns.symbol
        cut = np.empty(n, dtype=bool)
        cut[0] = True
        cut[1:] = (symbol[1:] != symbol[:-1]) | (minute[1:] != minute[:-1]) | (span[1:] != span[:-1])
        if runs is not None:
            cut[1:] |= runs[1:] != runs[:-1]
        # Then every BLOCK_TICKS ticks within what is cut so far.
        position = np.arange(n) - np.flatnonzero(cut)[np.cumsum(cut) - 1]
        cut |= position % BLOCK_TICKS == 0
        starts = np.flatnonzero(cut)
        ends = np.append(starts[1:], n)
        count = ends - starts

        summary = np.empty(len(starts), dtype=_SUMMARY)
        values = {
            "minute": minute[starts] * MINUTE_NS,
            "first_gseq": g[starts],
            "last_gseq": g[ends - 1],
            "first_ts": np.minimum.reduceat(t, starts),
            "last_ts": np.maximum.reduceat(t, starts),
            "open": p[starts],
            "high": np.maximum.reduceat(p, starts),
            "low": np.minimum.reduceat(p, starts),
            "close": p[ends - 1],
            "volume": np.add.reduceat(z, starts),
            "trades": count,
            "pv": np.add.reduceat(p * z, starts),
        }
        for c in SUMMARY_COLUMNS:
            summary[f"{c}_len"] = 8
            summary[f"{c}_v"] = values[c]

        # The rows themselves are written in C++ (`block_rows`), with the GIL released.
        words = [np.ascontiguousarray(a[c]).view(np.uint64) for c in ARRAY_COLUMNS]
        payload = block_rows(
            _HEADER, _TRAILER, self._rows, symbol[starts], starts, ends, summary.tobytes(), _SUMMARY.itemsize,
            words, _OIDS,
        )  # fmt: skip
        return payload, len(starts)
