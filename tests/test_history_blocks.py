"""Tick blocks without a database: the columns a flush becomes, the C++ reader behind them, and the
payload's bytes parsed by hand (PostgreSQL reads them back in test_history_postgres.py)."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from marketfeed._engine import block_rows, tick_columns
from marketfeed.history.blocks import (
    ARRAY_COLUMNS,
    BLOCK_COLUMNS,
    FLOAT8_OID,
    INT8_OID,
    MINUTE_NS,
    SUMMARY_COLUMNS,
    BlockEncoder,
)
from marketfeed.ticks import Tick


def tick(symbol: str, gseq: int, price: float = 100.0) -> Tick:
    return Tick(symbol, gseq // 3 + 1, gseq, 10**18 + gseq, price, price - 0.01, price + 0.01, gseq % 7, 0.25)


def test_columns_are_by_symbol_in_gseq_order_without_repeats_or_old_ticks() -> None:
    # Two steps of three symbols, the second delivered twice, the first tick of all already stored.
    steps = [[tick(s, 3 * k + i + 1) for i, s in enumerate("CAB")] for k in range(2)]
    ticks = [*steps[0], *steps[1], *steps[1]]
    encoder = BlockEncoder()
    columns = encoder.columns(ticks, after_gseq=1)
    order = [columns.names[i] for i in columns.symbol]
    assert order == ["C", "A", "A", "B", "B"]  # symbols in the order first seen, each one's ticks together
    assert columns.gseq.tolist() == [4, 2, 5, 3, 6]
    for c in ("seq", "ts", "price", "bid", "ask", "size", "vol"):
        expected = [getattr(t, c) for t in (steps[1][0], steps[0][1], steps[1][1], steps[0][2], steps[1][2])]
        assert columns.arrays[c].tolist() == expected
    assert columns.days(86_400 * 10**9) == {10**18 // (86_400 * 10**9)}
    # In order and all new: the same columns, sorted, and nothing dropped.
    again = encoder.columns(steps[1])
    assert again.gseq.tolist() == [4, 5, 6]
    assert [again.names[i] for i in again.symbol] == ["C", "A", "B"]
    assert len(encoder.columns([])) == 0


def test_without_leaves_out_the_stored_ticks_and_numbers_the_runs_between_them() -> None:
    columns = BlockEncoder().columns([tick("A", g) for g in range(1, 8)])
    kept, runs = columns.without(np.array([3, 4, 7]))
    assert kept.gseq.tolist() == [1, 2, 5, 6]
    assert runs.tolist() == [0, 0, 2, 2]  # a block may not span 3 and 4
    assert kept.arrays["price"].tolist() == [100.0] * 4


def test_tick_columns_reads_every_field_and_names_the_first_unknown_symbol() -> None:
    ticks = [Tick("A", 1, 2, 3, 4.5, 4.0, 5.0, 7, 0.2), Tick("B", 2, 3, 4, 1, 1.0, 2.0, 8, 0.3)]
    ints, floats = np.empty((5, 2), dtype=np.int64), np.empty((4, 2))
    assert tick_columns(ticks, {"A": 0}, ints, floats) == 1
    assert tick_columns(ticks, {"A": 0, "B": 1}, ints, floats) == -1
    assert ints.tolist() == [[0, 1], [1, 2], [2, 3], [3, 4], [7, 8]]
    assert floats.tolist() == [[4.5, 1.0], [4.0, 1.0], [5.0, 2.0], [0.2, 0.3]]  # an int price read as float


def test_tick_columns_refuses_what_is_not_a_list_of_ticks_or_outputs_of_the_wrong_shape() -> None:
    ints, floats = np.empty((5, 1), dtype=np.int64), np.empty((4, 1))
    good = Tick("A", 1, 2, 3, 4.5, 4.0, 5.0, 7, 0.2)
    with pytest.raises(TypeError, match="must be a list"):
        tick_columns((good,), {"A": 0}, ints, floats)
    with pytest.raises(TypeError, match="must be a Tick"):
        tick_columns([(1, 2)], {"A": 0}, ints, floats)
    with pytest.raises(TypeError):
        tick_columns([("A", "one", 2, 3, 4.5, 4.0, 5.0, 7, 0.2)], {"A": 0}, ints, floats)
    with pytest.raises(ValueError, match="5 x len"):
        tick_columns([good, good], {"A": 0}, ints, floats)
    with pytest.raises(TypeError):  # a float32 output would be a silent copy: refused, not converted
        tick_columns([good], {"A": 0}, ints, floats.astype(np.float32))


def read_payload(payload: bytes) -> list[tuple[str, list[float | int], dict[str, list[float | int]]]]:
    """Parse a COPY payload of tick blocks the slow way: (symbol, summaries, arrays) per row."""
    assert payload[:11] == b"PGCOPY\n\xff\r\n\x00"
    assert payload[-2:] == b"\xff\xff"
    pos, rows = 19, []
    while pos < len(payload) - 2:
        (fields,) = struct.unpack_from(">h", payload, pos)
        assert fields == len(BLOCK_COLUMNS)
        (size,) = struct.unpack_from(">i", payload, pos + 2)
        symbol = payload[pos + 6 : pos + 6 + size].decode()
        pos += 6 + size
        summary: list[float | int] = []
        for c in SUMMARY_COLUMNS:
            size, value = struct.unpack_from(
                ">id" if c in {"open", "high", "low", "close", "pv"} else ">iq", payload, pos
            )
            assert size == 8
            summary.append(value)
            pos += 12
        arrays: dict[str, list[float | int]] = {}
        for c in ARRAY_COLUMNS:
            size, ndim, nulls, oid, n, lower = struct.unpack_from(">6i", payload, pos)
            assert (size, ndim, nulls, lower) == (20 + 12 * n, 1, 0, 1)
            assert oid == (FLOAT8_OID if c in {"price", "bid", "ask", "vol"} else INT8_OID)
            fmt = ">" + ("id" if oid == FLOAT8_OID else "iq") * n
            values = struct.unpack_from(fmt, payload, pos + 24)
            assert set(values[0::2]) == {8}
            arrays[c] = list(values[1::2])
            pos += 24 + 12 * n
        rows.append((symbol, summary, arrays))
    assert pos == len(payload) - 2
    return rows


def test_the_payload_holds_each_block_as_a_row_of_its_summary_and_arrays() -> None:
    # Symbol "BB" has four ticks in one minute and one in the next: two blocks; "A" one block.
    ticks = [tick("BB", g, price=100 + g) for g in (1, 2, 4, 5)] + [tick("A", 3, price=7.5)]
    ticks.append(Tick("BB", 9, 6, 10**18 + 60 * 10**9, 99.0, 98.99, 99.01, 4, 0.5))
    encoder = BlockEncoder()
    payload, blocks = encoder.encode(encoder.columns(ticks))
    rows = read_payload(payload)
    assert blocks == len(rows) == 3
    assert [(symbol, arrays["gseq"]) for symbol, _, arrays in rows] == [
        ("BB", [1, 2, 4, 5]),
        ("BB", [6]),
        ("A", [3]),
    ]
    _symbol, summary, arrays = rows[0]
    first = dict(zip(SUMMARY_COLUMNS, summary, strict=True))
    assert (first["first_gseq"], first["last_gseq"], first["trades"]) == (1, 5, 4)
    assert (first["open"], first["high"], first["low"], first["close"]) == (101.0, 105.0, 101.0, 105.0)
    assert first["volume"] == sum(g % 7 for g in (1, 2, 4, 5))
    assert first["minute"] == 10**18 // MINUTE_NS * MINUTE_NS
    assert arrays["price"] == [101.0, 102.0, 104.0, 105.0]
    assert arrays["ts"] == [10**18 + g for g in (1, 2, 4, 5)]
    assert rows[1][2]["vol"] == [0.5]
    assert rows[2][2]["price"] == [7.5]


def test_block_rows_refuses_blocks_outside_the_columns_and_columns_it_would_have_to_convert() -> None:
    rows, words, oids = [b"\x00\x15\x00\x00\x00\x01A"], [np.arange(3, dtype=np.uint64)], [INT8_OID]

    def call(symbol: int = 0, start: int = 0, end: int = 3, summary: bytes = b"xx", **kw: object) -> bytes:
        args: dict[str, object] = {"columns": words, "oids": oids, **kw}
        one = np.array([symbol]), np.array([start]), np.array([end])
        return block_rows(b"H", b"T", rows, *one, summary, 2, **args)  # type: ignore[arg-type]

    assert (
        call()
        == b"H"
        + rows[0]
        + b"xx"
        + struct.pack(">6i", 56, 1, 0, INT8_OID, 3, 1)
        + b"".join(struct.pack(">iq", 8, v) for v in range(3))
        + b"T"
    )
    with pytest.raises(ValueError, match="symbol id has no row start"):
        call(symbol=1)
    with pytest.raises(ValueError, match="outside the columns"):
        call(end=4)
    with pytest.raises(ValueError, match="outside the columns"):
        call(start=2, end=2)
    with pytest.raises(ValueError, match="summary_width bytes per block"):
        call(summary=b"x")
    with pytest.raises(ValueError, match="one element type per column"):
        call(oids=[])
    with pytest.raises(TypeError):  # a float64 column would be converted to integers: refused
        call(columns=[np.arange(3, dtype=np.float64)])
