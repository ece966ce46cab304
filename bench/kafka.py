"""Kafka benchmark: ticks per second produced through the KafkaBus with delivery confirmed, and what it
costs the event loop (a timer task measures how late it wakes), against a plain confluent-kafka
producer loop (no event loop, same settings, same messages) measured in the same run. Both message
layouts: a message per tick (the default), and a message per engine step and partition
(`MARKETFEED_KAFKA_MESSAGES=step`).

    .venv/bin/python bench/kafka.py            # 1,000,000 ticks in steps of 100
    .venv/bin/python bench/kafka.py --quick    # a tiny run (the test suite uses it)

The broker is started the way the tests start it (tests/services.py): KRaft, on a free port.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from marketfeed.streams.kafka import KafkaBus
from marketfeed.streams.kafka_producer import KafkaMessages, by_partition
from marketfeed.ticks import Tick, TickBatch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from services import start_kafka


def make_batches(steps: int, assets: int) -> list[TickBatch]:
    now = time.time_ns()
    return [
        TickBatch(
            step=s,
            ticks=[
                Tick(f"S{i:03d}", s + 1, s * assets + i + 1, now, 100.0, 99.99, 100.01, 10, 0.2)
                for i in range(assets)
            ],
        )
        for s in range(steps)
    ]


async def through_bus(
    bootstrap: str, batches: list[TickBatch], messages: KafkaMessages = KafkaMessages.TICK
) -> tuple[float, list[float]]:
    bus = KafkaBus(bootstrap, topic=f"bench-{uuid.uuid4().hex[:6]}", partitions=6, messages=messages)
    await bus.start()
    lags: list[float] = []
    stop = asyncio.Event()

    async def timer() -> None:  # how late does a 1 ms sleep wake up while we produce?
        while not stop.is_set():
            t0 = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append((time.perf_counter() - t0 - 0.001) * 1000)

    # The first step starts the producer process and its connection; the timing starts once it is in.
    first, rest = batches[0], batches[1:]
    await bus.publish(first)
    while bus.metrics()["kafka_delivered_total"] < len(first):
        await asyncio.sleep(0.005)
    watcher = asyncio.create_task(timer())
    total = sum(len(b) for b in batches)
    t0 = time.perf_counter()
    for b in rest:
        await bus.publish(b)
        await asyncio.sleep(0)  # one engine step at a time, as the engine loop does
        while bus.metrics()["kafka_in_flight"] > 400_000:  # within the producer buffer (500,000)
            await asyncio.sleep(0.005)
    while bus.metrics()["kafka_delivered_total"] < total:
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - t0
    stop.set()
    await watcher
    await bus.close()
    return (total - len(first)) / elapsed, lags


def connected_producer(bootstrap: str, first: TickBatch) -> tuple[Producer, str]:
    """A plain producer with the bus's settings and a new topic, connected by producing `first` (the
    bus's timing also starts once its first step is in)."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                         "linger.ms": 5, "batch.num.messages": 10_000, "compression.type": "lz4",
                         "queue.buffering.max.messages": 500_000})  # fmt: skip
    topic = f"plain-{uuid.uuid4().hex[:6]}"
    # The same six partitions as the bus's topic: more partitions, smaller batches, more requests.
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 6)])[topic].result(30)
    for t, value in zip(first.ticks, first.encoded, strict=True):
        producer.produce(topic, value=value, key=t.symbol)
    producer.flush(30)
    return producer, topic


def produce_waiting(producer: Producer, topic: str, **message: Any) -> None:
    """produce(), waiting for room while the producer's buffer is full (a plain loop loses nothing)."""
    while True:
        try:
            producer.produce(topic, **message)
            return
        except BufferError:
            producer.poll(0.01)


def plain(bootstrap: str, batches: list[TickBatch], *, headers: bool = False) -> float:
    producer, topic = connected_producer(bootstrap, batches[0])
    t0 = time.perf_counter()
    for b in batches[1:]:
        # The bus's three headers per message (schema, step, batch size) nearly double produce()'s cost.
        h: list[tuple[str, str | bytes | None]] | None = None
        if headers:
            h = [("schema-version", b"1"), ("step", b"%d" % b.step), ("batch-size", b"%d" % len(b))]
        for t, value in zip(b.ticks, b.encoded, strict=True):
            produce_waiting(producer, topic, value=value, key=t.symbol, headers=h)
        producer.poll(0)
    if producer.flush(60):  # what is left after the wait was not confirmed
        raise RuntimeError("plain loop: ticks still unconfirmed after 60 s")
    rate = sum(len(b) for b in batches[1:]) / (time.perf_counter() - t0)
    del producer
    return rate


def plain_batched(bootstrap: str, batches: list[TickBatch]) -> float:
    """The tick layout's messages from a plain loop: each step's ticks grouped by partition, all but
    each partition's last in one produce_batch() call without headers, then the last with them."""
    producer, topic = connected_producer(bootstrap, batches[0])
    parts: dict[str, int] = {}
    t0 = time.perf_counter()
    for b in batches[1:]:
        keys = [t.symbol for t in b.ticks]
        h: list[tuple[str, str | bytes | None]] = [
            ("schema-version", b"1"), ("step", b"%d" % b.step), ("batch-size", b"%d" % len(b))
        ]  # fmt: skip
        messages: list[dict[str, Any]] = []
        closing: list[tuple[int, int]] = []
        for p, indexes in by_partition(keys, 6, parts).items():
            messages += [{"key": keys[i], "value": b.encoded[i], "partition": p} for i in indexes[:-1]]
            closing.append((p, indexes[-1]))
        while producer.produce_batch(topic, messages) < len(messages):
            messages = [{k: v for k, v in m.items() if k != "_error"} for m in messages if "_error" in m]
            producer.poll(0.01)
        for p, i in closing:
            produce_waiting(producer, topic, value=b.encoded[i], key=keys[i], partition=p, headers=h)
        producer.poll(0)
    if producer.flush(60):
        raise RuntimeError("plain batched loop: ticks still unconfirmed after 60 s")
    rate = sum(len(b) for b in batches[1:]) / (time.perf_counter() - t0)
    del producer
    return rate


def plain_steps(bootstrap: str, batches: list[TickBatch]) -> float:
    """The step layout's messages from a plain loop: each step's ticks grouped by partition, a message
    per group with the four headers, every delivery reported (to count the ticks confirmed)."""
    first, rest = batches[0], batches[1:]
    producer, topic = connected_producer(bootstrap, first)
    confirmed = 0

    def counter(n: int) -> Callable[[Any, Any], None]:
        def on_delivery(err: Any, msg: Any) -> None:
            nonlocal confirmed
            if err is None:
                confirmed += n

        return on_delivery

    parts: dict[str, int] = {}
    t0 = time.perf_counter()
    for b in rest:
        groups = {
            p: [b.encoded[i] for i in ix]
            for p, ix in by_partition((t.symbol for t in b.ticks), 6, parts).items()
        }
        h: list[tuple[str, str | bytes | None]] = [
            ("schema-version", b"1"), ("step", b"%d" % b.step), ("batch-size", b"%d" % len(b))
        ]  # fmt: skip
        for p, lines in groups.items():
            n = len(lines)
            produce_waiting(producer, topic, value=b"\n".join(lines), partition=p,
                            headers=[*h, ("ticks", b"%d" % n)], on_delivery=counter(n))  # fmt: skip
        producer.poll(0)
    if producer.flush(60):
        raise RuntimeError("plain step loop: messages still unconfirmed after 60 s")
    total = sum(len(b) for b in rest)
    rate = total / (time.perf_counter() - t0)
    del producer
    if confirmed != total:
        raise RuntimeError(f"plain step loop: {confirmed} of {total} ticks confirmed")
    return rate


T = TypeVar("T")


def with_cpu(run: Callable[[], T]) -> tuple[T, float, float]:
    """run()'s result and the CPU seconds (user + system) it took in this process and in the child
    processes that exited meanwhile (the bus's producer process; the broker runs on). Connecting and
    the first step are included, so these are a little over the steady cost."""

    def cpu(who: int) -> float:
        r = resource.getrusage(who)
        return r.ru_utime + r.ru_stime

    here, children = cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN)
    result = run()
    return result, cpu(resource.RUSAGE_SELF) - here, cpu(resource.RUSAGE_CHILDREN) - children


def cpu_text(ticks: int, here: float, child: float = 0.0) -> str:
    per = 1e6 / ticks
    if not child:
        return f"{here * per:.2f} CPU-s per million ticks"
    return (
        f"{(here + child) * per:.2f} CPU-s per million ticks "
        f"({here * per:.2f} server, {child * per:.2f} producer process)"
    )


def lag_text(lags: list[float]) -> str:
    if not lags:
        return "loop lag not measured"
    lags = sorted(lags)
    p99 = lags[min(len(lags) - 1, int(0.99 * len(lags)))]
    return f"loop lag p50 {statistics.median(lags):.2f} ms, p99 {p99:.2f} ms"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10_000)
    p.add_argument("--assets", type=int, default=100)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.steps, args.assets = 20, 10
    broker = start_kafka("bench-kafka")
    if broker is None:
        print("kafka: jars or java missing (sudo bash .ci/install-services.sh); skipped")
        return
    try:
        batches = make_batches(args.steps, args.assets)
        base = plain(broker.bootstrap, batches)
        base_headers = plain(broker.bootstrap, batches, headers=True)
        base_batched, plain_cpu, _ = with_cpu(lambda: plain_batched(broker.bootstrap, batches))
        (rate, lags), bus_cpu, child_cpu = with_cpu(
            lambda: asyncio.run(through_bus(broker.bootstrap, batches))
        )
        base_steps, plain_steps_cpu, _ = with_cpu(lambda: plain_steps(broker.bootstrap, batches))
        (rate_steps, lags_steps), bus_steps_cpu, child_steps_cpu = with_cpu(
            lambda: asyncio.run(through_bus(broker.bootstrap, batches, KafkaMessages.STEP))
        )
        total = args.steps * args.assets
        print(f"kafka benchmark: {total:,} ticks in steps of {args.assets}, delivery confirmed "
              "(acks=all, idempotent, lz4)")  # fmt: skip
        print("  a message per tick (MARKETFEED_KAFKA_MESSAGES=tick, the default)")
        print(f"    KafkaBus from the event loop: {rate:>12,.0f} ticks/s; {lag_text(lags)}")
        print(f"    plain producer loop, same messages: {base_batched:>6,.0f} ticks/s   "
              f"(ratio {rate / base_batched:.2f})")  # fmt: skip
        # On two cores shared with the broker, CPU is what the bus's rate is short of (docs/performance.md).
        print(f"    cost: KafkaBus {cpu_text(total, bus_cpu, child_cpu)}; "
              f"plain loop {cpu_text(total, plain_cpu)}")  # fmt: skip
        print(f"    plain loop, produce() per tick, headers on each: {base_headers:>9,.0f} ticks/s   "
              f"(ratio {rate / base_headers:.2f})")  # fmt: skip
        print(f"    plain loop, produce() per tick, no headers: {base:>14,.0f} ticks/s   "
              f"(ratio {rate / base:.2f})")  # fmt: skip
        print("  a message per step and partition (MARKETFEED_KAFKA_MESSAGES=step)")
        print(f"    KafkaBus from the event loop: {rate_steps:>12,.0f} ticks/s; {lag_text(lags_steps)}")
        print(f"    plain producer loop, same messages: {base_steps:>6,.0f} ticks/s   "
              f"(ratio {rate_steps / base_steps:.2f})")  # fmt: skip
        print(f"    cost: KafkaBus {cpu_text(total, bus_steps_cpu, child_steps_cpu)}; "
              f"plain loop {cpu_text(total, plain_steps_cpu)}")  # fmt: skip
    finally:
        broker.stop()
        broker.kill()
        shutil.rmtree(broker.workdir, ignore_errors=True)  # a broker's log segments: gigabytes


if __name__ == "__main__":
    main()
