"""The producer process's Child without a broker: how a step is grouped, and what a full buffer refuses."""

from __future__ import annotations

import time

from marketfeed.streams.kafka_producer import Child, KafkaMessages, by_partition, partition_of

SYMBOLS = [f"S{i}" for i in range(12)]
HEADERS: list[tuple[str, str | bytes | None]] = [
    ("schema-version", b"1"), ("step", b"0"), ("batch-size", b"12")
]  # fmt: skip


def test_a_steps_keys_are_grouped_by_partition_in_order() -> None:
    known: dict[str, int] = {}
    groups = by_partition(SYMBOLS, 3, known)
    assert sorted(i for g in groups.values() for i in g) == list(range(12))
    for p, indexes in groups.items():
        assert indexes == sorted(indexes)
        assert {partition_of(SYMBOLS[i], 3) for i in indexes} == {p}
    assert known == {s: partition_of(s, 3) for s in SYMBOLS}


def test_ticks_refused_by_a_full_buffer_are_counted_and_the_error_kept() -> None:
    # No broker: nothing leaves librdkafka's buffer of 5 messages. The step's 12 ticks are 9 for
    # produce_batch (all but each of the 3 partitions' last) and 3 closing messages with headers.
    child = Child("127.0.0.1:1", "t", buffer_messages=5, schema_version=1, messages=KafkaMessages.TICK,
                  partitions=3)  # fmt: skip
    assert {partition_of(s, 3) for s in SYMBOLS} == {0, 1, 2}
    notes: list[str] = []
    note = child._note

    def noted(message: str, *, failed: int = 0) -> None:
        notes.append(message)
        note(message, failed=failed)

    child._note = noted  # type: ignore[method-assign]
    t0 = time.monotonic()
    child.produce_ticks(HEADERS, SYMBOLS, [b'{"n": %d}' % i for i in range(12)])
    assert time.monotonic() - t0 < 1.0  # refusing never waits
    assert child.produced == 5
    assert child.buffer_full == 7  # 4 of the batch, then the 3 closing messages
    assert child.errors == 4
    # One note for the batch, naming librdkafka's error, and one for each closing message.
    assert notes[0].startswith("4 ticks refused: ")
    assert "Queue full" in notes[0]
    assert notes[1:] == ["producer buffer full: the broker is not taking ticks"] * 3
    child.producer.purge()
    # Closed here, not left to the collector: its callbacks hold the child, a cycle that kept this
    # producer logging refused connects to the end of the test run.
    child.producer.close()
