"""The Kafka producer process: the engine's ticks are produced from a process of its own.

confluent-kafka's `produce` holds the GIL for the whole call (1.3 microseconds with our three headers),
so at hundreds of thousands of ticks a second a producer thread in the server would hold the GIL most
of the time and the event loop would wait for it. A child process has a GIL of its own. The KafkaBus
starts it (`python -m marketfeed.streams.kafka_producer CONFIG`), writes one frame per engine step
to its stdin and reads its counters from its stdout:

    server: publish -> outbox -> sender thread --stdin--> child main thread: produce_batch() per step
    server: counters <- reader thread <--stdout-- child status thread: poll(), a Status every 50 ms

Frames, both ways: a 4-byte big-endian length, then a pickle. To the child: (step, keys, values) for
one engine step; the end of its stdin (the server closing it, or dying) asks it to flush and exit.
From the child: a `Status` as a tuple, the last one with `final` set. The child first makes itself
`nice` (from CONFIG: kafka.PRODUCER_NICE) so that, on a busy machine, the server's event loop gets
the core before this throughput work.

Two message layouts (`KafkaMessages`), both counted in ticks:
- `tick` (the default): a message per tick, key = symbol, value = the tick's JSON, in partition
  crc32(symbol) % partitions (where librdkafka's default partitioner puts the key). Only the last
  message of each partition's share of a step carries the headers; the others go through
  `produce_batch`, which takes no headers and costs about half of produce() with them per message.
- `step`: a message per engine step and partition, no key, value = that partition's ticks of the
  step as JSON lines, and a `ticks` header with their number. Each symbol goes to the partition
  `tick` would give it (crc32, computed here), so it stays in order there. produce() costs about the
  same per message whatever it carries (three headers are most of it), so at a hundred ticks a step
  this is the layout that keeps up with a fast engine on a small machine (docs/performance.md).
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import logging
import os
import pickle
import signal
import struct
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from enum import StrEnum
from typing import Any, BinaryIO, NamedTuple

log = logging.getLogger(__name__)

#: How often the child reports its counters (and polls for delivery reports).
STATUS_S = 0.05
#: How long the child's shutdown waits for the broker to confirm what it holds.
FLUSH_S = 15.0
_LENGTH = struct.Struct(">I")


class KafkaMessages(StrEnum):
    """How ticks are laid out in Kafka messages (the module docstring has the details)."""

    TICK = "tick"  #: one message per tick, key = symbol
    STEP = "step"  #: one message per engine step and partition: the ticks as JSON lines


def partition_of(symbol: str, partitions: int) -> int:
    """The partition librdkafka's default partitioner gives this key: crc32(key) % partitions."""
    return zlib.crc32(symbol.encode()) % partitions


def by_partition(keys: Iterable[str], partitions: int, known: dict[str, int]) -> dict[int, list[int]]:
    """The indexes of a step's keys grouped by the key's partition (`partition_of`), in order within
    each; `known` keeps each key's partition from one step to the next."""
    groups: dict[int, list[int]] = {}
    for i, key in enumerate(keys):
        p = known.get(key)
        if p is None:
            p = known[key] = partition_of(key, partitions)
        groups.setdefault(p, []).append(i)
    return groups


def ensure_topic(bootstrap: str, topic: str, partitions: int) -> int:
    """Create the topic if it does not exist; its number of partitions. Blocking: call from a thread."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    found = admin.list_topics(timeout=10).topics.get(topic)
    if found is not None and found.partitions:
        return len(found.partitions)
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=-1)])
    try:
        futures[topic].result(timeout=30)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:  # another process made it first
            raise
        return len(admin.list_topics(topic, timeout=10).topics[topic].partitions)
    return partitions


class Status(NamedTuple):
    """Counts since the child started. Delivered = produced - failed - queued."""

    produced: int  # taken by librdkafka
    queued: int  # still in librdkafka, not yet confirmed either way
    failed: int  # delivery reported failed
    buffer_full: int  # refused: librdkafka's bounded buffer was full
    errors: int  # errors seen so far; `error` is the last one
    error: str | None
    final: bool = False


def write_frame(out: BinaryIO, payload: bytes) -> None:
    out.write(_LENGTH.pack(len(payload)) + payload)
    out.flush()


def read_frame(inp: BinaryIO) -> bytes | None:
    """The next frame's payload, or None at the end of the stream."""
    head = inp.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    return inp.read(_LENGTH.unpack(head)[0])


def producer_config(bootstrap: str, buffer_messages: int) -> dict[str, Any]:
    return {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,  # no duplicates from internal retries
        "acks": "all",
        "linger.ms": 5,  # let a step's ticks share requests
        "batch.num.messages": 10_000,
        "compression.type": "lz4",
        # Bounded: an unreachable broker fills this, then produce() raises BufferError and the drop is
        # counted rather than memory growing without limit.
        "queue.buffering.max.messages": buffer_messages,
        "queue.buffering.max.kbytes": 256 * 1024,
        # Keep retrying for five minutes, so a broker restart loses nothing.
        "message.timeout.ms": 300_000,
        # A Python callback per delivered message would cost more than producing it: only failures are
        # reported; successes are what left the queue without failing.
        "delivery.report.only.error": True,
    }


class Child:
    def __init__(
        self,
        bootstrap: str,
        topic: str,
        buffer_messages: int,
        schema_version: int,
        messages: KafkaMessages = KafkaMessages.TICK,
        partitions: int = 1,
    ) -> None:
        from confluent_kafka import KafkaError, Message, Producer

        self.bootstrap = bootstrap
        self.topic = topic
        self.messages = messages
        self.partitions = partitions  # the topic's, looked up in run()
        self.schema = str(schema_version).encode()
        self.produced = self.failed = self.buffer_full = self.errors = 0
        self.confirmed = 0  # step layout: ticks whose delivery was confirmed
        self.error: str | None = None
        self._out_lock = threading.Lock()
        # Callbacks run in whichever thread polls (both may): their counts are kept under a lock.
        self._count_lock = threading.Lock()
        self._stop = threading.Event()
        self._parts: dict[str, int] = {}  # each symbol's partition

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                self._note(f"delivery failed: {err.str()}", failed=1)

        def on_error(err: KafkaError) -> None:
            self._note(err.str())

        config = producer_config(bootstrap, buffer_messages)
        if messages is KafkaMessages.STEP:
            # A message is many ticks here, so every report is wanted (a few thousand a second) to count
            # the ticks confirmed; produce_step passes each message's own callback.
            config["delivery.report.only.error"] = False
        self.producer = Producer(config | {"on_delivery": on_delivery, "error_cb": on_error})

    def _note(self, message: str, *, failed: int = 0) -> None:
        with self._count_lock:
            self.failed += failed
            self.errors += 1
            self.error = message

    def queued(self) -> int:
        """Ticks taken by librdkafka and not yet confirmed either way."""
        if self.messages is KafkaMessages.TICK:
            return len(self.producer)  # a message is a tick; successes are not reported
        with self._count_lock:
            return self.produced - self.confirmed - self.failed

    def report(self, out: BinaryIO, *, final: bool = False) -> None:
        status = Status(
            self.produced, self.queued(), self.failed, self.buffer_full, self.errors, self.error, final
        )
        with self._out_lock:
            # A plain tuple: this module runs as __main__ here, so a Status would not unpickle there.
            write_frame(out, pickle.dumps(tuple(status), pickle.HIGHEST_PROTOCOL))

    def _status_loop(self, out: BinaryIO) -> None:
        while not self._stop.wait(STATUS_S):
            # Delivery failures are served by poll(); the main thread polls after every step, this one
            # too when no steps come. Never a waiting poll here: a thread blocked in poll() while the
            # other produces made producing 1.5 times as costly (bench/kafka.py).
            self.producer.poll(0)
            self.report(out)

    def run(self, inp: BinaryIO, out: BinaryIO) -> None:
        reporter = threading.Thread(target=self._status_loop, args=(out,), name="status", daemon=True)
        reporter.start()
        self._find_partitions()
        produce = self.produce_step if self.messages is KafkaMessages.STEP else self.produce_ticks
        while (frame := read_frame(inp)) is not None:
            step, keys, values = pickle.loads(frame)
            headers: list[tuple[str, str | bytes | None]] = [
                ("schema-version", self.schema),
                ("step", b"%d" % step),
                ("batch-size", b"%d" % len(keys)),
            ]
            produce(headers, keys, values)
            self.producer.poll(0)
        self._stop.set()
        reporter.join()
        waiting, t0 = self.queued(), time.monotonic()
        remaining = self.producer.flush(FLUSH_S)
        if remaining:
            log.error("kafka: %d ticks still undelivered at shutdown", remaining)
        elif (took := time.monotonic() - t0) > 1.0:  # a stop that took long says why
            log.warning("kafka: the broker took %.1f s to confirm the last %d ticks", took, waiting)
        with contextlib.suppress(BrokenPipeError):  # the server is gone: nobody to tell
            self.report(out, final=True)

    def _find_partitions(self) -> None:
        """The topic's partitions, which both layouts need before their first message (each message
        names its partition, and one the topic lacks would fail). Steps wait in the pipe meanwhile;
        the server refuses what would not fit in the buffer."""
        from confluent_kafka import KafkaException

        while True:
            try:
                self.partitions = ensure_topic(self.bootstrap, self.topic, self.partitions)
                return
            except KafkaException as exc:
                self._note(f"cannot read the topic's partitions: {exc}")
                time.sleep(1.0)

    def produce_ticks(self, headers: list[tuple[str, str | bytes | None]], keys: list[str],
                      values: list[bytes]) -> None:  # fmt: skip
        # Each partition's last tick of the step is produced after the others, with the headers: an
        # edge holds a partition's headerless ticks until that record names their step.
        batch: list[dict[str, Any]] = []
        closing: list[tuple[int, int]] = []
        for p, indexes in by_partition(keys, self.partitions, self._parts).items():
            batch += [{"key": keys[i], "value": values[i], "partition": p} for i in indexes[:-1]]
            closing.append((p, indexes[-1]))
        try:
            queued = self.producer.produce_batch(self.topic, batch)
        except BufferError:
            queued = 0
        if queued < len(batch):  # each refused message has its error in "_error" (a full buffer, mostly)
            error = next((m["_error"] for m in batch if "_error" in m), "producer buffer full")
            self.buffer_full += len(batch) - queued
            self._note(f"{len(batch) - queued} ticks refused: {error}")
        self.produced += queued
        produce = self.producer.produce
        for p, i in closing:
            try:
                produce(self.topic, value=values[i], key=keys[i], partition=p, headers=headers)
            except BufferError:
                self.buffer_full += 1
                self._note("producer buffer full: the broker is not taking ticks")
                continue
            self.produced += 1

    def produce_step(self, headers: list[tuple[str, str | bytes | None]], keys: list[str],
                     values: list[bytes]) -> None:  # fmt: skip
        for p, indexes in by_partition(keys, self.partitions, self._parts).items():
            lines = [values[i] for i in indexes]
            n = len(lines)
            with self._count_lock:  # counted first: the status thread's poll may confirm it at once
                self.produced += n
            try:
                self.producer.produce(
                    self.topic,
                    value=b"\n".join(lines),
                    partition=p,
                    headers=[*headers, ("ticks", b"%d" % n)],
                    on_delivery=self._delivered(n),
                )
            except BufferError:
                with self._count_lock:
                    self.produced -= n
                self.buffer_full += n
                self._note("producer buffer full: the broker is not taking ticks")

    def _delivered(self, n: int) -> Callable[[Any, Any], None]:
        def on_delivery(err: Any, msg: Any) -> None:
            if err is not None:
                self._note(f"delivery failed: {err.str()}", failed=n)
            else:
                with self._count_lock:
                    self.confirmed += n

        return on_delivery


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="kafka-producer: %(levelname)s %(message)s")
    config = json.loads(sys.argv[1])
    # Before librdkafka starts its threads, which inherit it (Linux keeps a niceness per thread).
    os.nice(int(config.get("nice", 0)))
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # as the server: stacks on `kill -USR1`
    child = Child(
        config["bootstrap"], config["topic"], config["buffer_messages"], config["schema_version"],
        KafkaMessages(config.get("messages", "tick")), config.get("partitions", 1),
    )  # fmt: skip
    child.run(sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    main()
