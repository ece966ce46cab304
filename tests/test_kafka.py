"""The Kafka bus against a real broker: what it produces, how edges regroup it, broker outages."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections import defaultdict

import pytest
from confluent_kafka import Consumer
from services import Kafka

from marketfeed.health import Status
from marketfeed.streams import kafka as kafka_bus
from marketfeed.streams.kafka import KafkaBus, header_map
from marketfeed.ticks import Tick, TickBatch

pytestmark = pytest.mark.integration

SYMBOLS = [f"S{i}" for i in range(12)]


def batch(step: int) -> TickBatch:
    n = len(SYMBOLS)
    ticks = [
        Tick(s, step + 1, step * n + i + 1, time.time_ns(), 50.0, 49.99, 50.01, 3, 0.3)
        for i, s in enumerate(SYMBOLS)
    ]
    return TickBatch(step=step, ticks=ticks)


def consume_all(
    kafka: Kafka, topic: str, expected: int, seconds: float = 60
) -> list[tuple[str, Tick, dict[str, bytes]]]:
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": f"check-{uuid.uuid4()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})  # fmt: skip
    consumer.subscribe([topic])
    out: list[tuple[str, Tick, dict[str, bytes]]] = []
    deadline = time.monotonic() + seconds
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for m in consumer.consume(1000, timeout=0.5):
                if m.error() is None:
                    out.append(((m.key() or b"").decode(), Tick.from_json(m.value() or b""), header_map(m)))
        for m in consumer.consume(1000, timeout=1.0):  # anything beyond the expected count is a duplicate
            if m.error() is None:
                out.append(((m.key() or b"").decode(), Tick.from_json(m.value() or b""), header_map(m)))
    finally:
        consumer.close()
    return out


def assert_exactly_once(messages: list[tuple[str, Tick, dict[str, bytes]]], steps: int) -> None:
    by_symbol: dict[str, list[int]] = defaultdict(list)
    for key, tick, _ in messages:
        assert key == tick.symbol
        by_symbol[tick.symbol].append(tick.seq)
    assert set(by_symbol) == set(SYMBOLS)
    for seqs in by_symbol.values():
        assert seqs == list(range(1, steps + 1))  # in order within the symbol, no gap, no duplicate


def test_every_tick_is_produced_keyed_with_headers(kafka: Kafka) -> None:
    topic = f"t-{uuid.uuid4().hex[:8]}"

    async def produce() -> KafkaBus:
        bus = KafkaBus(kafka.bootstrap, topic=topic, partitions=3)
        await bus.start()
        for step in range(50):
            await bus.publish(batch(step))
        await bus.close()
        return bus

    bus = asyncio.run(produce())
    assert bus.metrics()["kafka_delivered_total"] == bus.metrics()["kafka_produced_total"] == 600
    messages = consume_all(kafka, topic, 600)
    assert len(messages) == 600
    assert_exactly_once(messages, 50)
    headers = messages[0][2]
    assert headers["schema-version"] == b"1"
    assert headers["batch-size"] == b"12"


def test_edges_regroup_whole_steps_in_order(kafka: Kafka) -> None:
    topic = f"t-{uuid.uuid4().hex[:8]}"

    async def scenario() -> list[TickBatch]:
        engine = KafkaBus(kafka.bootstrap, topic=topic, partitions=4)
        edge = KafkaBus(kafka.bootstrap, topic=topic)
        await engine.start()
        received: list[TickBatch] = []

        async def listen() -> None:
            async for b in edge.subscribe():
                received.append(b)

        listener = asyncio.create_task(listen())
        await asyncio.sleep(3.0)  # the edge has its partitions, from the end
        for step in range(30):
            await engine.publish(batch(step))
            await asyncio.sleep(0.01)
        deadline = time.monotonic() + 20
        while (not received or received[-1].step < 29) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        await engine.close()
        await edge.close()
        return received

    received = asyncio.run(scenario())
    assert [b.step for b in received] == list(range(30))
    for b in received:
        assert [t.gseq for t in b.ticks] == [t.gseq for t in batch(b.step).ticks]


def test_a_broker_outage_neither_blocks_the_loop_nor_loses_ticks(kafka: Kafka) -> None:
    topic = f"t-{uuid.uuid4().hex[:8]}"
    steps = 120

    async def scenario() -> tuple[KafkaBus, float, Status]:
        bus = KafkaBus(kafka.bootstrap, topic=topic, partitions=3)
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
    messages = consume_all(kafka, topic, steps * len(SYMBOLS))
    assert len(messages) == steps * len(SYMBOLS)
    assert_exactly_once(messages, steps)


def test_a_killed_producer_process_is_replaced_and_every_tick_accounted_for(kafka: Kafka) -> None:
    topic = f"t-{uuid.uuid4().hex[:8]}"
    n = len(SYMBOLS)

    async def wait_delivered(bus: KafkaBus, count: int) -> None:
        deadline = time.monotonic() + 30
        while bus.metrics()["kafka_delivered_total"] < count and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def scenario() -> tuple[KafkaBus, int, int | None, Status]:
        bus = KafkaBus(kafka.bootstrap, topic=topic, partitions=3)
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
    messages = consume_all(kafka, topic, 40 * n)
    assert len(messages) == 40 * n
    assert_exactly_once(messages, 40)


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
