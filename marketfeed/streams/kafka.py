"""The Kafka bus (confluent-kafka): the engine produces every tick, edges consume and regroup them.

confluent-kafka is not asyncio, so nothing here blocks the event loop: `publish` hands the batch to a
producer thread (one `produce` call per tick is about a microsecond and a half each, too much to run
on the loop at hundreds of thousands of ticks a second), a background thread polls for delivery
reports and hands their counts to the loop with `call_soon_threadsafe`, and topic administration,
flushing and consuming run on threads.

Topic layout: one message per tick, key = symbol (so each symbol stays in order in its partition),
value = the tick JSON (the bytes encoded once per batch), headers `schema-version`, `step` and
`batch-size` (so an edge knows when it holds a whole engine step, whatever the partitions).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from confluent_kafka import (
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from marketfeed.health import Health
from marketfeed.ticks import SCHEMA_VERSION, Tick, TickBatch

log = logging.getLogger(__name__)

#: An edge waits this long for the rest of a step spread over several partitions before moving on.
STEP_WAIT_S = 1.0
#: Longest wait of an edge's consume() call for more messages before it hands over what it has.
CONSUME_WAIT_S = 0.005
#: The producer thread lets the GIL go after this many `produce` calls, so the event loop never waits
#: for it more than about a tenth of a millisecond (Python's own switch interval is 5 ms).
PRODUCE_SLICE = 64


class KafkaBus:
    name = "kafka"

    def __init__(
        self,
        bootstrap: str,
        *,
        topic: str = "marketfeed.ticks",
        partitions: int = 6,
        buffer_messages: int = 500_000,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.partitions = partitions
        self.buffer_messages = buffer_messages
        self._loop: asyncio.AbstractEventLoop | None = None
        self._producer: Producer | None = None
        self._poller: threading.Thread | None = None
        self._outbox: queue.SimpleQueue[TickBatch | None] = queue.SimpleQueue()
        self._sender: threading.Thread | None = None
        self._stopping = threading.Event()
        self._error: str | None = None
        self._failed_pending = 0  # counted on the poll thread, handed to the loop in bulk
        self.produced = 0
        self.handed_over = 0  #: ticks given to the producer thread (produced, or dropped when full)
        self.delivered = 0
        self.failed = 0
        self.buffer_full = 0
        self.consumed = 0

    # --- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            await asyncio.to_thread(self._ensure_topic)
        except KafkaException as exc:  # the broker may come later: produce buffers meanwhile
            self._set_error(f"cannot create topic {self.topic}: {exc}")

    def _ensure_topic(self) -> None:
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        if self.topic in admin.list_topics(timeout=10).topics:
            return
        futures = admin.create_topics(
            [NewTopic(self.topic, num_partitions=self.partitions, replication_factor=-1)]
        )
        try:
            futures[self.topic].result(timeout=30)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:  # another process made it first
                raise

    def producer(self) -> Producer:
        if self._producer is None:
            self._producer = Producer(
                {
                    "bootstrap.servers": self.bootstrap,
                    "enable.idempotence": True,  # no duplicates from internal retries
                    "acks": "all",
                    "linger.ms": 5,  # let a step's ticks share requests
                    "batch.num.messages": 10_000,
                    "compression.type": "lz4",
                    # Bounded: an unreachable broker fills this, then produce() raises BufferError and we
                    # count the drop rather than grow without limit.
                    "queue.buffering.max.messages": self.buffer_messages,
                    "queue.buffering.max.kbytes": 256 * 1024,
                    # Keep retrying for five minutes, so a broker restart loses nothing.
                    "message.timeout.ms": 300_000,
                    # A Python callback per delivered message would cost more than producing it: only
                    # failures are reported; successes are what left the queue without failing.
                    "delivery.report.only.error": True,
                    "on_delivery": self._on_delivery,
                    "error_cb": self._on_error,
                }
            )
            self._poller = threading.Thread(target=self._poll, name="kafka-poll", daemon=True)
            self._poller.start()
            self._sender = threading.Thread(target=self._send, name="kafka-produce", daemon=True)
            self._sender.start()
        return self._producer

    async def close(self) -> None:
        if self._sender is not None:  # every batch handed over is produced before the flush
            self._outbox.put(None)
            await asyncio.to_thread(self._sender.join)
        if self._producer is not None:
            remaining = await asyncio.to_thread(self._producer.flush, 15.0)
            if remaining:
                log.error("kafka: %d ticks still undelivered at shutdown", remaining)
            self._stopping.set()
            if self._poller is not None:
                await asyncio.to_thread(self._poller.join, 5.0)
            self._collect(len(self._producer))
        self._stopping.set()

    # --- producing (engine side) -----------------------------------------------------------------
    async def publish(self, batch: TickBatch) -> None:
        self.producer()
        self.handed_over += len(batch)
        self._outbox.put(batch)

    def _send(self) -> None:  # the producer thread: batches in order, so each symbol stays in order
        producer = self.producer()
        calls = 0
        while (batch := self._outbox.get()) is not None:
            headers: list[tuple[str, str | bytes | None]] = [
                ("schema-version", str(SCHEMA_VERSION).encode()),
                ("step", str(batch.step).encode()),
                ("batch-size", str(len(batch)).encode()),
            ]
            for t, value in zip(batch.ticks, batch.encoded, strict=True):
                calls += 1
                if calls % PRODUCE_SLICE == 0:
                    time.sleep(0)  # releases the GIL: the loop gets it within this slice
                try:
                    producer.produce(self.topic, value=value, key=t.symbol, headers=headers)
                except BufferError:
                    self.buffer_full += 1
                    self._set_error("producer buffer full: the broker is not taking ticks")
                    continue
                self.produced += 1

    def _poll(self) -> None:
        while not self._stopping.is_set():
            if self._producer is not None:
                self._producer.poll(0.1)
                if self._loop is not None:
                    with contextlib.suppress(RuntimeError):  # the loop is closing
                        self._loop.call_soon_threadsafe(self._collect, len(self._producer))

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:  # on the poll thread
        if err is not None:
            self._failed_pending += 1
            self._error = f"delivery failed: {err.str()}"

    def _collect(self, queued: int) -> None:
        """On the loop: `queued` messages are still in librdkafka; the rest succeeded or failed."""
        failed = self._failed_pending
        self._failed_pending -= failed
        self.failed += failed
        delivered = self.produced - self.failed - queued
        if delivered > self.delivered and not failed:
            self._error = None  # the broker takes ticks again
        self.delivered = max(self.delivered, delivered)

    def _on_error(self, err: KafkaError) -> None:  # on librdkafka's threads
        self._set_error(err.str())

    def _set_error(self, message: str) -> None:
        if self._error is None:
            log.warning("kafka degraded: %s", message)
        self._error = message

    # --- consuming (edge side) -------------------------------------------------------------------
    async def subscribe(self) -> AsyncIterator[TickBatch]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[TickBatch] = asyncio.Queue(maxsize=1024)
        stop = threading.Event()

        def deliver(batch: TickBatch) -> None:
            if queue.full():  # a stalled edge loses its oldest step rather than the broker's memory
                queue.get_nowait()
            queue.put_nowait(batch)

        thread = threading.Thread(
            target=self._consume, args=(stop, lambda b: loop.call_soon_threadsafe(deliver, b)), daemon=True
        )
        thread.start()
        try:
            while True:
                yield await queue.get()
        finally:
            stop.set()
            await asyncio.to_thread(thread.join, 5.0)

    def _consume(self, stop: threading.Event, emit: Any) -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": "marketfeed-edge",  # required by librdkafka; partitions are assigned by hand
                "enable.auto.commit": False,
                "auto.offset.reset": "latest",
            }
        )
        try:
            while not stop.is_set():
                try:
                    meta = consumer.list_topics(self.topic, timeout=5)
                    parts = meta.topics[self.topic].partitions
                    if parts:
                        break
                except KafkaException as exc:
                    self._set_error(f"edge cannot read topic metadata: {exc}")
                time.sleep(1.0)
            else:
                return
            # Every edge reads every partition from the end, on its own: no group coordination to wait for.
            consumer.assign([TopicPartition(self.topic, p, OFFSET_END) for p in parts])
            regroup = Regrouper(emit)
            while not stop.is_set():
                # consume() returns early only with num_messages in hand, so its timeout is the
                # batching delay every tick pays on its way to the clients: 0.1 s here made the
                # edges' median latency 60 ms (bench/fanout.py --edges 2).
                messages = consumer.consume(num_messages=5000, timeout=CONSUME_WAIT_S)
                for m in messages:
                    if m.error() is not None:
                        continue
                    headers = header_map(m)
                    regroup.add(int(headers["step"]), int(headers["batch-size"]), m.value() or b"")
                self.consumed += len(messages)
                regroup.flush_stale()
        finally:
            consumer.close()

    # --- observability ---------------------------------------------------------------------------
    def health(self) -> Health:
        if self._error is not None:
            return Health.degraded(f"kafka: {self._error}")
        return Health.ok(f"{self.bootstrap} topic {self.topic}")

    def metrics(self) -> dict[str, float]:
        return {
            "kafka_produced_total": self.produced,
            "kafka_delivered_total": self.delivered,
            "kafka_delivery_failed_total": self.failed,
            "kafka_buffer_full_total": self.buffer_full,
            "kafka_in_flight": self.handed_over - self.buffer_full - self.delivered - self.failed,
            "kafka_consumed_total": self.consumed,
        }


def header_map(message: Message) -> dict[str, bytes]:
    raw: Any = message.headers() or []  # a list of (key, value) pairs as produced
    return {k: v for k, v in raw if isinstance(v, bytes)}


class Regrouper:
    """Rebuilds engine steps from ticks that arrive over several partitions, and emits them in order.

    A step is emitted when all its ticks are in; one still incomplete after STEP_WAIT_S (a tick lost,
    or a partition lagging) is emitted with what arrived, so the stream never stalls. Steps that began
    before this edge joined the topic are partial and dropped.
    """

    def __init__(self, emit: Any) -> None:
        self.emit = emit
        self.pending: dict[int, tuple[int, float, dict[int, tuple[Tick, bytes]]]] = {}
        self.next_step: int | None = None

    def add(self, step: int, size: int, value: bytes) -> None:
        if self.next_step is not None and step < self.next_step:
            return  # already emitted (a re-delivery)
        tick = Tick.from_json(value)
        _, _, ticks = self.pending.setdefault(step, (size, time.monotonic(), {}))
        ticks[tick.gseq] = (tick, value)
        self._emit_ready()

    def _emit_ready(self) -> None:
        while self.pending:
            step = min(self.pending)
            size, _, ticks = self.pending[step]
            if self.next_step is None:
                if len(ticks) < size:
                    complete = [s for s, (n, _, t) in self.pending.items() if len(t) >= n]
                    if not complete:
                        return
                    for s in [s for s in self.pending if s < min(complete)]:
                        del self.pending[s]  # partial steps from before this edge joined
                    continue
                self.next_step = step
            if len(ticks) < size:
                return
            self._emit(step)

    def _emit(self, step: int) -> None:
        _, _, ticks = self.pending.pop(step)
        pairs = [ticks[g] for g in sorted(ticks)]
        self.emit(TickBatch(step=step, ticks=[p[0] for p in pairs], encoded=[p[1] for p in pairs]))
        self.next_step = step + 1

    def flush_stale(self) -> None:
        now = time.monotonic()
        while self.pending and self.next_step is not None:
            step = min(self.pending)
            if now - self.pending[step][1] < STEP_WAIT_S:
                break
            self._emit(step)
        self._emit_ready()
