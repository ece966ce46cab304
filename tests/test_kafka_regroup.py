"""The edge's Regrouper and Shares without a broker: engine steps rebuilt from ticks, with steps missing
(no trade), and the tick layout's shares of a step held until their closing message."""

from __future__ import annotations

import gc

import pytest

from marketfeed.streams import kafka
from marketfeed.streams.kafka import Regrouper, Shares
from marketfeed.ticks import Tick, TickBatch

N = 4  # symbols


def tick(step: int, i: int, seq: int) -> Tick:
    return Tick(f"S{i}", seq, step * N + i + 1, 1_795_000_000_000_000_000, 10.0, 9.99, 10.01, 5, 0.2)


def test_steps_with_few_or_no_ticks_are_emitted_in_order() -> None:
    out: list[TickBatch] = []
    regroup = Regrouper(out.append)
    # Irregular arrivals: step 3 has two ticks, steps 4 to 6 none (never produced), step 7 one.
    steps = {3: [tick(3, 1, 1), tick(3, 2, 1)], 7: [tick(7, 2, 2)], 8: [tick(8, 0, 1), tick(8, 1, 2)]}
    for step, ticks in steps.items():
        for t in reversed(ticks):  # partitions deliver out of order
            regroup.add(step, len(ticks), t, t.to_json())
    assert [b.step for b in out] == [3, 7, 8]
    assert [[t.gseq for t in b.ticks] for b in out] == [[14, 15], [31], [33, 34]]
    assert regroup.next_step == 9
    for b in out:  # left to no garbage collection, as the engine's batches (an edge keeps a million)
        assert not gc.is_tracked(b.ticks)
        assert not any(gc.is_tracked(t) for t in b.ticks)


def pairs(*ticks: Tick) -> list[tuple[Tick, bytes]]:
    return [(t, t.to_json()) for t in ticks]


def test_a_partitions_ticks_without_headers_are_held_until_its_closing_message_names_their_step() -> None:
    shares = Shares()
    assert shares.add(0, None, pairs(tick(3, 0, 1))) == []
    assert shares.add(1, None, pairs(tick(3, 1, 1))) == []  # another partition's share, held apart
    assert shares.add(0, None, pairs(tick(3, 2, 1))) == []
    closed = shares.add(0, 3, pairs(tick(3, 3, 1)))
    assert [t.gseq for t, _ in closed] == [13, 15, 16]
    assert [t.gseq for t, _ in shares.add(1, 3, pairs(tick(3, 4, 1)))] == [14, 17]
    assert shares.add(0, 4, pairs(tick(4, 0, 2))) == pairs(tick(4, 0, 2))  # a share of one message
    assert shares.held == {}
    assert shares.orphaned == 0


def test_held_ticks_whose_closing_message_was_lost_are_dropped_not_given_to_the_next_step() -> None:
    shares = Shares()
    later = tick(4, 1, 2)._replace(ts=tick(3, 0, 1).ts + 60_000_000_000)  # the next step's time
    shares.add(0, None, pairs(tick(3, 0, 1), tick(3, 1, 1)))
    # Step 3's closing message never came (refused by a full buffer): step 4 begins.
    assert shares.add(0, None, pairs(later)) == []
    assert shares.orphaned == 2
    assert shares.add(0, 4, pairs(later._replace(symbol="S2", gseq=19))) == pairs(
        later, later._replace(symbol="S2", gseq=19)
    )
    # The same when the next step's share is its closing message alone.
    shares.add(0, None, pairs(tick(3, 0, 1)))
    assert shares.add(0, 4, pairs(later)) == pairs(later)
    assert shares.orphaned == 3


def test_what_a_partition_holds_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka, "HELD_MAX", 3)
    shares = Shares()
    for i in range(7):  # ticks without headers, all of one time, and no closing message
        shares.add(0, None, pairs(tick(3, i, 1)))
    assert shares.orphaned == 6
    assert [t.gseq for t, _ in shares.held[0]] == [19]
