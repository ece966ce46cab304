"""Tick encoding: one encoding per batch, exact round trips, SSE framing."""

from __future__ import annotations

import gc
import math
from typing import Any, cast

import numpy as np
import orjson
import pytest

from marketfeed._engine import TickMaker, untrack_ticks
from marketfeed.ticks import Tick, TickBatch, conflate, iso_time, text_frame


def tick(symbol: str, seq: int, gseq: int) -> Tick:
    return Tick(symbol, seq, gseq, 1_795_000_000_123_456_789, 10.01, 10.0, 10.02, 7, 0.25)


def test_round_trip_is_exact() -> None:
    t = tick("NOVA", 3, 41)
    assert Tick.from_json(t.to_json()) == t
    assert orjson.loads(t.to_json())["time"] == "2026-11-18T11:06:40.123456Z"
    assert iso_time(0) == "1970-01-01T00:00:00.000000Z"


def test_frames_are_memoised_per_symbol_set() -> None:
    b = TickBatch(step=0, ticks=[tick("A", 1, 1), tick("B", 1, 2)])
    assert b.ws_frame(frozenset({"A"})) is b.ws_frame(frozenset({"A"}))
    assert b.ws_frame(frozenset({"C"})) is None
    chunk = b.sse_chunk(None)
    assert chunk.count(b"event: tick\n") == 2
    assert chunk.startswith(b"id: 1\n")
    assert b.sse_chunk(None, after_gseq=1).startswith(b"id: 2\n")  # resume boundary inside a batch
    assert b.sse_chunk(None, after_gseq=2) == b""


def test_a_wire_frame_is_the_text_frame_framed_once_per_symbol_set() -> None:
    b = TickBatch(step=0, ticks=[tick("A", 1, 1), tick("B", 1, 2)])
    for symbols in (None, frozenset({"B"})):
        wire = b.ws_wire(symbols)
        assert wire is not None
        assert wire is b.ws_wire(symbols)
        text = b.ws_frame(symbols)
        assert text is not None
        assert wire == text_frame(text.encode())  # the same JSON, byte for byte
    assert b.ws_wire(frozenset({"C"})) is None


def test_conflate_keeps_the_newest_tick_of_each_symbol_in_gseq_order() -> None:
    b1 = TickBatch(step=0, ticks=[tick("A", 1, 1), tick("B", 1, 2)])
    b2 = TickBatch(step=1, ticks=[tick("A", 2, 3)])
    merged = conflate([b1, b2])
    assert [(t.symbol, t.seq) for t in merged.ticks] == [("B", 1), ("A", 2)]
    assert merged.encoded[1] == b2.encoded[0]  # reuses the bytes, no re-encoding


# --- the engine's tick maker (csrc/tickjson.hpp): the ticks and orjson's bytes, without dicts ---------
SYMBOLS = ["NOVA", "BRK.B", 'QU"OTE\\', "ÜNÏ", "X"]


def writer_columns(n: int, seed: int) -> dict[str, Any]:
    """Columns as the tick layer makes them, plus the edge cases of each formatting rule."""
    rng = np.random.default_rng(seed)
    cents = np.rint(rng.lognormal(8, 4, (3, n))) * rng.choice([1.0, -1.0], (3, n))
    cents[:, :6] = [[0.0, -0.0, 1.0, 10.0, 100.0, 1e15 - 1]] * 3
    vol = rng.lognormal(-2, 2, n)
    vol[n // 3 : 2 * n // 3] = rng.integers(0, 200, 2 * n // 3 - n // 3) / 1e6  # whole micro-units
    vol[2 * n // 3 :] = rng.uniform(0, 2e-5, n - 2 * n // 3)
    # Exact ties at the sixth decimal (round half to even), signed zero, 1e-6 .. 9e-6 (orjson's "3e-6").
    vol[:12] = [0.0078125, 0.0234375, -0.0, 0.0, 1e-6, 9e-6, 9.5e-7, 5e-7, 4.9999e-7, 9.5e-6, 1e-5, 1e9 - 1]
    return {
        "asset": rng.integers(0, len(SYMBOLS), n), "seq": rng.integers(0, 2**62, n),
        "gseq": rng.integers(0, 2**62, n), "ts": 1_795_000_000_123_456_789, "last_cents": cents[0],
        "bid_cents": cents[1], "ask_cents": cents[2], "size": rng.integers(0, 2**40, n), "vol": vol,
    }  # fmt: skip


def expected_tick(c: dict[str, Any], i: int) -> Tick:
    """Tick i of the columns as Python builds it: cents / 100 and round(vol, 6)."""
    last, bid, ask = (float(c[k][i]) / 100 for k in ("last_cents", "bid_cents", "ask_cents"))
    seq, gseq, size = (int(c[k][i]) for k in ("seq", "gseq", "size"))
    return Tick(
        SYMBOLS[int(c["asset"][i])], seq, gseq, c["ts"], last, bid, ask, size, round(float(c["vol"][i]), 6)
    )


def maker() -> TickMaker:
    return TickMaker(Tick, SYMBOLS, [orjson.dumps(s).decode() for s in SYMBOLS])


def test_the_engines_tick_maker_gives_the_ticks_and_orjsons_bytes() -> None:
    c = writer_columns(50_000, seed=3)
    made, encoded, left = maker().make(**c, time=iso_time(c["ts"]))
    ticks = cast(list[Tick], made)
    assert left == []
    expected = [expected_tick(c, i) for i in range(len(ticks))]
    assert ticks == expected
    assert all(type(t) is Tick and all(type(a) is type(b) for a, b in zip(t, e, strict=True))
               for t, e in zip(ticks, expected, strict=True))  # fmt: skip
    assert encoded == [t.to_json() for t in expected]
    assert all(t.symbol is SYMBOLS[a] for t, a in zip(ticks, c["asset"].tolist(), strict=True))  # shared


def test_the_maker_leaves_what_it_does_not_cover_to_the_caller_and_refuses_bad_input() -> None:
    c = writer_columns(100, seed=4)
    c["vol"][[3, 7]] = [np.nan, 2e9]
    c["last_cents"][[20, 30]] = [1e15, np.inf]
    c["bid_cents"][40] = 12.5  # not a whole number of cents
    ticks, encoded, left = maker().make(**c, time=iso_time(c["ts"]))
    assert left == [3, 7, 20, 30, 40]
    assert all(encoded[i] == b"" for i in left)
    assert [math.isnan(cast(Tick, ticks[i]).vol) for i in (3, 7, 20)] == [True, True, False]
    covered = [i for i in range(100) if i not in left]
    assert [encoded[i] for i in covered] == [expected_tick(c, i).to_json() for i in covered]
    with pytest.raises(ValueError, match="one entry per tick"):
        maker().make(**{**c, "seq": c["seq"][:-1]}, time="")
    with pytest.raises(ValueError, match="asset index out of range"):
        maker().make(**{**c, "asset": c["asset"] + len(SYMBOLS)}, time="")
    with pytest.raises(ValueError, match="nine fields"):
        TickMaker(tuple, SYMBOLS, SYMBOLS)
    with pytest.raises(ValueError, match="one JSON string per symbol"):
        TickMaker(Tick, SYMBOLS, SYMBOLS[:1])


def test_only_ticks_of_plain_fields_and_tuples_of_them_are_untracked() -> None:
    plain = tick("A", 1, 1)
    odd = plain._replace(symbol=["A"])  # type: ignore[arg-type]  # a list can be part of a cycle
    assert gc.is_tracked(plain)  # made in Python: tracked, as any tuple subclass
    assert untrack_ticks([plain, odd]) == 1
    assert not gc.is_tracked(plain)
    assert gc.is_tracked(odd)
    mixed, clean = (tick("B", 1, 2), odd), (tick("C", 1, 3), tick("D", 1, 4))
    assert untrack_ticks(mixed) == 1  # the plain tick, not the tuple that holds the other
    assert gc.is_tracked(mixed)
    assert untrack_ticks(clean) == 3
    assert not gc.is_tracked(clean)
    assert untrack_ticks(clean) == 0
    with pytest.raises(TypeError, match="list or tuple"):
        untrack_ticks(iter(clean))
