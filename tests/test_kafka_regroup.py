"""The edge's Regrouper without a broker: engine steps rebuilt from ticks, with steps missing (no trade)."""

from __future__ import annotations

from marketfeed.streams.kafka import Regrouper
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
