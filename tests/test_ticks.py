"""Tick encoding: one encoding per batch, exact round trips, SSE framing."""

from __future__ import annotations

import orjson

from marketfeed.ticks import Tick, TickBatch, conflate, iso_time


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


def test_conflate_keeps_the_newest_tick_of_each_symbol_in_gseq_order() -> None:
    b1 = TickBatch(step=0, ticks=[tick("A", 1, 1), tick("B", 1, 2)])
    b2 = TickBatch(step=1, ticks=[tick("A", 2, 3)])
    merged = conflate([b1, b2])
    assert [(t.symbol, t.seq) for t in merged.ticks] == [("B", 1), ("A", 2)]
    assert merged.encoded[1] == b2.encoded[0]  # reuses the bytes, no re-encoding
