"""Kafka benchmark: ticks per second produced through the KafkaBus with delivery confirmed, and what it
costs the event loop (a timer task measures how late it wakes), against a plain confluent-kafka
producer loop (no event loop, same settings) measured in the same run.

    .venv/bin/python bench/kafka.py            # 1,000,000 ticks in steps of 100
    .venv/bin/python bench/kafka.py --quick    # a tiny run (the test suite uses it)

The broker is started the way the tests start it (tests/services.py): KRaft, on a free port.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from marketfeed.streams.kafka import KafkaBus
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


async def through_bus(bootstrap: str, batches: list[TickBatch]) -> tuple[float, list[float]]:
    bus = KafkaBus(bootstrap, topic=f"bench-{uuid.uuid4().hex[:6]}", partitions=6)
    await bus.start()
    lags: list[float] = []
    stop = asyncio.Event()

    async def timer() -> None:  # how late does a 1 ms sleep wake up while we produce?
        while not stop.is_set():
            t0 = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append((time.perf_counter() - t0 - 0.001) * 1000)

    watcher = asyncio.create_task(timer())
    total = sum(len(b) for b in batches)
    t0 = time.perf_counter()
    for b in batches:
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
    return total / elapsed, lags


def plain(bootstrap: str, batches: list[TickBatch], *, headers: bool = False) -> float:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                         "linger.ms": 5, "batch.num.messages": 10_000, "compression.type": "lz4",
                         "queue.buffering.max.messages": 500_000})  # fmt: skip
    topic = f"plain-{uuid.uuid4().hex[:6]}"
    # The same six partitions as the bus's topic: more partitions, smaller batches, more requests.
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 6)])[topic].result(30)
    t0 = time.perf_counter()
    for b in batches:
        # The bus's three headers per message (schema, step, batch size) nearly double produce()'s cost.
        h: list[tuple[str, str | bytes | None]] | None = None
        if headers:
            h = [("schema-version", b"1"), ("step", b"%d" % b.step), ("batch-size", b"%d" % len(b))]
        for t, value in zip(b.ticks, b.encoded, strict=True):
            while True:
                try:
                    producer.produce(topic, value=value, key=t.symbol, headers=h)
                    break
                except BufferError:
                    producer.poll(0.01)
        producer.poll(0)
    producer.flush(60)
    rate = sum(len(b) for b in batches) / (time.perf_counter() - t0)
    del producer
    return rate


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
        rate, lags = asyncio.run(through_bus(broker.bootstrap, batches))
        lags.sort()
        p99 = lags[min(len(lags) - 1, int(0.99 * len(lags)))] if lags else float("nan")
        total = args.steps * args.assets
        print(f"kafka benchmark: {total:,} ticks, delivery confirmed (acks=all, idempotent, lz4)")
        print(f"  KafkaBus from the event loop: {rate:>12,.0f} ticks/s; loop lag p50 "
              f"{statistics.median(lags) if lags else float('nan'):.2f} ms, p99 {p99:.2f} ms")  # fmt: skip
        print(f"  plain producer loop:          {base:>12,.0f} ticks/s   (ratio {rate / base:.2f})")
        ratio = rate / base_headers
        print(f"  plain loop, same headers:     {base_headers:>12,.0f} ticks/s   (ratio {ratio:.2f})")
    finally:
        broker.stop()
        broker.kill()


if __name__ == "__main__":
    main()
