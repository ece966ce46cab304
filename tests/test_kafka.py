"""The Kafka bus against a real broker: what it produces, how edges regroup it, broker outages."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import NamedTuple

import pytest
from confluent_kafka import Consumer, Message, Producer
from services import Kafka

from marketfeed.health import Status
from marketfeed.streams import kafka as kafka_bus
from marketfeed.streams.kafka import KafkaBus, header_map
from marketfeed.streams.kafka_producer import KafkaMessages, partition_of
from marketfeed.ticks import Tick, TickBatch

pytestmark = pytest.mark.integration
LAYOUTS = pytest.mark.parametrize("layout", list(KafkaMessages))

SYMBOLS = [f"S{i}" for i in range(12)]


def batch(step: int) -> TickBatch:
    n = len(SYMBOLS)
    ts = 1_795_000_000_000_000_000 + step * 1_000_000_000  # one time per step, as the engine stamps them
    ticks = [
        Tick(s, step + 1, step * n + i + 1, ts, 50.0, 49.99, 50.01, 3, 0.3) for i, s in enumerate(SYMBOLS)
    ]
    return TickBatch(step=step, ticks=ticks)


class Received(NamedTuple):
    key: str | None
    tick: Tick
    headers: dict[str, bytes]
    partition: int
    message: int  # which message carried it, in the order consumed


def consume_all(kafka: Kafka, topic: str, expected: int, seconds: float = 60) -> list[Received]:
    """Every tick on the topic, from messages of either layout."""
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": f"check-{uuid.uuid4()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})  # fmt: skip
    consumer.subscribe([topic])
    out: list[Received] = []
    count = 0

    def take(messages: list[Message]) -> None:
        nonlocal count
        for m in messages:
            if m.error() is not None:
                continue
            key, headers, value = m.key(), header_map(m), m.value() or b""
            lines = value.split(b"\n") if "ticks" in headers else [value]
            for line in lines:
                out.append(Received(key.decode() if key else None, Tick.from_json(line), headers,
                                    m.partition() or 0, count))  # fmt: skip
            count += 1

    deadline = time.monotonic() + seconds
    try:
        while len(out) < expected and time.monotonic() < deadline:
            take(consumer.consume(1000, timeout=0.5))
        take(consumer.consume(1000, timeout=1.0))  # anything beyond the expected count is a duplicate
    finally:
        consumer.close()
    return out


def assert_exactly_once(received: list[Received], steps: int, partitions: int) -> None:
    by_symbol: dict[str, list[int]] = defaultdict(list)
    for r in received:
        assert r.key in (r.tick.symbol, None)
        assert r.partition == partition_of(r.tick.symbol, partitions)  # a symbol has one partition
        by_symbol[r.tick.symbol].append(r.tick.seq)
    assert set(by_symbol) == set(SYMBOLS)
    for seqs in by_symbol.values():
        assert seqs == list(range(1, steps + 1))  # in order within the symbol, no gap, no duplicate


async def wait_delivered(bus: KafkaBus, count: int) -> None:
    deadline = time.monotonic() + 30
    while bus.metrics()["kafka_delivered_total"] < count and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def publish_50_steps(bus: KafkaBus) -> KafkaBus:
    await bus.start()
    for step in range(50):
        await bus.publish(batch(step))
    await bus.close()
    return bus


def test_every_tick_is_produced_keyed_and_each_partitions_share_of_a_step_closed_by_headers(
    kafka: Kafka,
) -> None:
    topic = f"t-{uuid.uuid4().hex[:8]}"
    bus = asyncio.run(publish_50_steps(KafkaBus(kafka.bootstrap, topic=topic, partitions=3)))
    assert bus.metrics()["kafka_delivered_total"] == bus.metrics()["kafka_produced_total"] == 600
    received = consume_all(kafka, topic, 600)
    assert len(received) == 600
    assert_exactly_once(received, 50, 3)
    assert len({r.message for r in received}) == 600
    assert all(r.key == r.tick.symbol for r in received)
    for p in range(3):
        in_partition = [r for r in received if r.partition == p]  # in the partition's order
        symbols = [s for s in SYMBOLS if partition_of(s, 3) == p]
        assert symbols
        # Each step's share is contiguous, its symbols in order, and only its last message has headers.
        for step in range(50):
            share = in_partition[step * len(symbols) : (step + 1) * len(symbols)]
            assert [(r.tick.symbol, r.tick.seq - 1) for r in share] == [(s, step) for s in symbols]
            assert [r.headers for r in share[:-1]] == [{}] * (len(symbols) - 1)
            assert share[-1].headers == {"schema-version": b"1", "step": b"%d" % step, "batch-size": b"12"}


def test_the_step_layout_carries_a_steps_ticks_in_a_message_per_partition(kafka: Kafka) -> None:
    topic = f"t-{uuid.uuid4().hex[:8]}"
    bus = KafkaBus(kafka.bootstrap, topic=topic, partitions=3, messages=KafkaMessages.STEP)
    asyncio.run(publish_50_steps(bus))
    metrics = bus.metrics()
    assert metrics["kafka_delivered_total"] == metrics["kafka_produced_total"] == 600
    assert metrics["kafka_in_flight"] == 0
    received = consume_all(kafka, topic, 600)
    assert len(received) == 600
    assert_exactly_once(received, 50, 3)
    by_message: dict[int, list[Received]] = defaultdict(list)
    for r in received:
        by_message[r.message].append(r)
    per_step: dict[bytes, int] = defaultdict(int)
    for ticks in by_message.values():
        headers = ticks[0].headers
        assert {r.partition for r in ticks} == {ticks[0].partition}
        assert headers["ticks"] == b"%d" % len(ticks)
        assert headers["batch-size"] == b"12"
        assert {r.tick.seq - 1 for r in ticks} == {int(headers["step"])}  # one step's ticks
        assert [r.tick.gseq for r in ticks] == sorted(r.tick.gseq for r in ticks)
        assert ticks[0].key is None
        per_step[headers["step"]] += 1
    # One message per partition that has symbols: the 12 symbols cover all 3 partitions.
    assert {partition_of(s, 3) for s in SYMBOLS} == {0, 1, 2}
    assert set(per_step.values()) == {3}
    assert len(per_step) == 50


async def through_an_edge(
    kafka: Kafka, engine: KafkaBus, steps: int, before_step: Callable[[int], Awaitable[None]] | None = None
) -> tuple[list[TickBatch], KafkaBus]:
    """Publish `steps` steps from `engine` to an edge reading its topic from the end; what the edge
    emitted, and the edge (for its counters)."""
    edge = KafkaBus(kafka.bootstrap, topic=engine.topic)
    await engine.start()
    received: list[TickBatch] = []

    async def listen() -> None:
        async for b in edge.subscribe():
            received.append(b)

    listener = asyncio.create_task(listen())
    await asyncio.sleep(3.0)  # the edge has its partitions, from the end
    for step in range(steps):
        if before_step is not None:
            await before_step(step)
        await engine.publish(batch(step))
        await asyncio.sleep(0.01)
    deadline = time.monotonic() + 20
    while (not received or received[-1].step < steps - 1) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    listener.cancel()
    await asyncio.gather(listener, return_exceptions=True)
    await engine.close()
    await edge.close()
    return received, edge


@LAYOUTS
def test_edges_regroup_whole_steps_in_order(kafka: Kafka, layout: KafkaMessages) -> None:
    engine = KafkaBus(kafka.bootstrap, topic=f"t-{uuid.uuid4().hex[:8]}", partitions=4, messages=layout)
    received, _ = asyncio.run(through_an_edge(kafka, engine, 30))
    assert [b.step for b in received] == list(range(30))
    for b in received:
        assert [t.gseq for t in b.ticks] == [t.gseq for t in batch(b.step).ticks]
        assert [Tick.from_json(e) for e in b.encoded] == list(b.ticks)


@LAYOUTS
def test_an_edge_skips_and_counts_messages_that_are_not_ticks(
    kafka: Kafka, layout: KafkaMessages, caplog: pytest.LogCaptureFixture
) -> None:
    topic = f"t-{uuid.uuid4().hex[:8]}"
    # Headers of a step still to come: a tick wrongly taken from these would join step 5.
    good: list[tuple[str, str | bytes | None]] = [("step", b"5"), ("batch-size", b"12")]
    foreign: list[tuple[bytes, list[tuple[str, str | bytes | None]] | None]] = [
        (b"hello", None),  # no headers at all
        (b"{not json", [*good]),
        (b"[1, 2]", [*good]),  # JSON, not a tick
        (batch(3).ticks[0].to_json() + b"\n{}", [*good, ("ticks", b"2")]),  # step layout, one bad line
        (batch(3).ticks[1].to_json(), [*good, ("ticks", b"2")]),  # fewer lines than it says
        (b"{}", [("step", b"three"), ("batch-size", b"12")]),
    ]
    other = Producer({"bootstrap.servers": kafka.bootstrap})

    async def interleave(step: int) -> None:
        if step == 4:  # between two steps, on both partitions
            for partition in (0, 1):
                for value, headers in foreign:
                    other.produce(topic, value=value, partition=partition, headers=headers)
            await asyncio.to_thread(other.flush, 10)

    engine = KafkaBus(kafka.bootstrap, topic=topic, partitions=2, messages=layout)
    with caplog.at_level(logging.WARNING, logger="marketfeed.streams.kafka"):
        received, edge = asyncio.run(through_an_edge(kafka, engine, 8, interleave))
    assert [b.step for b in received] == list(range(8))  # every step whole, none lost to the garbage
    for b in received:
        assert [t.gseq for t in b.ticks] == [t.gseq for t in batch(b.step).ticks]
    assert edge.metrics()["kafka_malformed_total"] == 2 * len(foreign)
    assert edge.metrics()["kafka_consumed_total"] == 8 * len(SYMBOLS)
    assert edge.metrics()["kafka_orphaned_total"] == 0
    assert "malformed messages skipped" in caplog.text


@LAYOUTS
def test_a_broker_outage_neither_blocks_the_loop_nor_loses_ticks(kafka: Kafka, layout: KafkaMessages) -> None:
    topic = f"t-{uuid.uuid4().hex[:8]}"
    steps = 120

    async def scenario() -> tuple[KafkaBus, float, Status]:
        bus = KafkaBus(kafka.bootstrap, topic=topic, partitions=3, messages=layout)
        await bus.start()
        lag = 0.0
        degraded = Status.OK
        for step in range(steps):
            if step == 20:
                await asyncio.to_thread(kafka.stop)
            if step == 90:
                degraded = bus.health().status
                await asyncio.to_thread(kafka.start)
            t0 = time.perf_counter()
            await bus.publish(batch(step))
            await asyncio.sleep(0.05)
            lag = max(lag, time.perf_counter() - t0 - 0.05)
        await bus.close()
        return bus, lag, degraded

    bus, lag, degraded = asyncio.run(scenario())
    assert lag < 0.05, f"publishing stalled the event loop for {lag * 1000:.0f} ms"
    assert degraded is Status.DEGRADED
    assert bus.metrics()["kafka_delivered_total"] == steps * len(SYMBOLS)
    assert bus.health().status is Status.OK
    received = consume_all(kafka, topic, steps * len(SYMBOLS))
    assert len(received) == steps * len(SYMBOLS)
    assert_exactly_once(received, steps, 3)


@LAYOUTS
def test_a_killed_producer_process_is_replaced_and_every_tick_accounted_for(
    kafka: Kafka, layout: KafkaMessages
) -> None:
    topic = f"t-{uuid.uuid4().hex[:8]}"
    n = len(SYMBOLS)

    async def scenario() -> tuple[KafkaBus, int, int | None, Status]:
        bus = KafkaBus(kafka.bootstrap, topic=topic, partitions=3, messages=layout)
        await bus.start()
        for step in range(20):
            await bus.publish(batch(step))
        await wait_delivered(bus, 20 * n)
        first = bus.producer_pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while bus.health().status is Status.OK and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        degraded = bus.health().status
        for step in range(20, 40):
            await bus.publish(batch(step))
        await wait_delivered(bus, 40 * n)
        await bus.close()
        return bus, first, bus.producer_pid, degraded

    bus, first, second, degraded = asyncio.run(scenario())
    assert degraded is Status.DEGRADED
    assert second is not None
    assert second != first
    metrics = bus.metrics()
    assert metrics["kafka_delivered_total"] == 40 * n  # it was idle when killed: nothing lost
    assert metrics["kafka_delivery_failed_total"] == 0
    assert metrics["kafka_in_flight"] == 0
    assert bus.health().status is Status.OK  # deliveries resumed
    received = consume_all(kafka, topic, 40 * n)
    assert len(received) == 40 * n
    assert_exactly_once(received, 40, 3)


def thread_nice_values(pid: int) -> list[int]:
    """The niceness of each of a process's threads (field 19 of /proc/PID/task/TID/stat)."""
    values = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            values.append(int(f.read().rsplit(")", 1)[1].split()[16]))
    return values


def test_the_producer_process_and_its_threads_run_nicer_than_the_server(kafka: Kafka) -> None:
    # Throughput work beside a latency-bound event loop: on a busy machine it must yield the core.
    async def scenario() -> list[int]:
        bus = KafkaBus(kafka.bootstrap, topic=f"n-{uuid.uuid4().hex[:8]}", partitions=2)
        await bus.start()
        await bus.publish(batch(0))
        await wait_delivered(bus, len(SYMBOLS))  # connected: librdkafka's threads are all up
        assert bus.producer_pid is not None
        values = thread_nice_values(bus.producer_pid)
        await bus.close()
        return values

    values = asyncio.run(scenario())
    assert len(values) > 3  # the main thread, the status thread and librdkafka's
    assert set(values) == {min(19, os.getpriority(os.PRIO_PROCESS, 0) + kafka_bus.PRODUCER_NICE)}


def test_a_producer_process_that_cannot_start_is_retried_with_backoff(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No broker needed: the producer process exits at once (its module does not exist).
    monkeypatch.setattr(kafka_bus, "PRODUCER_MODULE", "marketfeed.streams.no_such_module")

    async def scenario() -> KafkaBus:
        bus = KafkaBus("127.0.0.1:1", topic="t", partitions=1)
        for step in range(60):  # three seconds of steps
            await bus.publish(batch(step))
            await asyncio.sleep(0.05)
        await bus.close()
        return bus

    bus = asyncio.run(scenario())
    metrics = bus.metrics()
    assert bus.health().status is Status.DEGRADED
    assert 1 <= bus.spawns <= 3  # 1 s, then 2 s between attempts: not one per step
    assert metrics["kafka_delivered_total"] == 0
    assert metrics["kafka_delivery_failed_total"] == 60 * len(SYMBOLS)  # every step accounted for
    assert metrics["kafka_in_flight"] == 0
