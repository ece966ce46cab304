"""Tick blocks without a database: the columns a flush becomes, and the C++ reader behind them. The
payload itself is checked by PostgreSQL in test_history_postgres.py (its rows read back as written)."""

from __future__ import annotations

import numpy as np
import pytest

from marketfeed._engine import tick_columns
from marketfeed.history.blocks import BlockEncoder
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
