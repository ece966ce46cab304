"""The Kafka producer process: the engine's ticks are produced from a process of its own.

confluent-kafka's `produce` holds the GIL for the whole call (1.3 microseconds with our three headers),
so at hundreds of thousands of ticks a second a producer thread in the server would hold the GIL most
of the time and the event loop would wait for it. A child process has a GIL of its own. The KafkaBus
starts it (`python -m marketfeed.streams.kafka_producer CONFIG`), writes one frame per engine step
to its stdin and reads its counters from its stdout:

    server: publish -> outbox -> sender thread --stdin--> child main thread: produce() per tick
    server: counters <- reader thread <--stdout-- child status thread: poll(), a Status every 50 ms

Frames, both ways: a 4-byte big-endian length, then a pickle. To the child: (step, keys, values) for
one engine step; the end of its stdin (the server closing it, or dying) asks it to flush and exit.
From the child: a `Status` as a tuple, the last one with `final` set.
"""

from __future__ import annotations

import contextlib
import json
import logging
import pickle
import struct
import sys
import threading
from typing import Any, BinaryIO, NamedTuple

log = logging.getLogger(__name__)

#: How often the child reports its counters (and polls for delivery reports).
STATUS_S = 0.05
#: How long the child's shutdown waits for the broker to confirm what it holds.
FLUSH_S = 15.0
_LENGTH = struct.Struct(">I")


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
    def __init__(self, bootstrap: str, topic: str, buffer_messages: int, schema_version: int) -> None:
        from confluent_kafka import KafkaError, Message, Producer

        self.topic = topic
        self.schema = str(schema_version).encode()
        self.produced = self.failed = self.buffer_full = self.errors = 0
        self.error: str | None = None
        self._out_lock = threading.Lock()
        # Callbacks run in whichever thread polls (both may): their counts are kept under a lock.
        self._count_lock = threading.Lock()
        self._stop = threading.Event()

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                self._note(f"delivery failed: {err.str()}", failed=1)

        def on_error(err: KafkaError) -> None:
            self._note(err.str())

        config = producer_config(bootstrap, buffer_messages)
        self.producer = Producer(config | {"on_delivery": on_delivery, "error_cb": on_error})

    def _note(self, message: str, *, failed: int = 0) -> None:
        with self._count_lock:
            self.failed += failed
            self.errors += 1
            self.error = message

    def report(self, out: BinaryIO, *, final: bool = False) -> None:
        status = Status(
            self.produced, len(self.producer), self.failed, self.buffer_full, self.errors, self.error, final
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
        produce, poll = self.producer.produce, self.producer.poll
        while (frame := read_frame(inp)) is not None:
            step, keys, values = pickle.loads(frame)
            headers: list[tuple[str, str | bytes | None]] = [
                ("schema-version", self.schema),
                ("step", b"%d" % step),
                ("batch-size", b"%d" % len(keys)),
            ]
            for key, value in zip(keys, values, strict=True):
                try:
                    produce(self.topic, value=value, key=key, headers=headers)
                except BufferError:
                    self.buffer_full += 1
                    self._note("producer buffer full: the broker is not taking ticks")
                    continue
                self.produced += 1
            poll(0)
        self._stop.set()
        reporter.join()
        remaining = self.producer.flush(FLUSH_S)
        if remaining:
            log.error("kafka: %d ticks still undelivered at shutdown", remaining)
        with contextlib.suppress(BrokenPipeError):  # the server is gone: nobody to tell
            self.report(out, final=True)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="kafka-producer: %(levelname)s %(message)s")
    config = json.loads(sys.argv[1])
    child = Child(config["bootstrap"], config["topic"], config["buffer_messages"], config["schema_version"])
    child.run(sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    main()
