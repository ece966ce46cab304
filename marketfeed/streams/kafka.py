"""The Kafka bus (confluent-kafka): the engine produces every tick, edges consume and regroup them.

confluent-kafka is not asyncio, so nothing here blocks the event loop. Producing runs in a child
process (kafka_producer.py: `produce` holds the GIL for each of hundreds of thousands of calls a
second, and a thread of ours would take the GIL from the loop for most of that time); `publish` puts
the step on a queue, a sender thread writes it to the child, a reader thread hands the child's
counters to the loop with `call_soon_threadsafe`. Topic administration and consuming run on threads.

Topic layout (`messages`): by default one message per tick, key = symbol (so each symbol stays in
order in its partition), value = the tick JSON (the bytes encoded once per batch), and the headers
`schema-version`, `step` and `batch-size` on the last message of each partition's share of a step
only (an edge holds the messages before it, which have no headers, until it names their step); or,
with `messages="step"`, one message per engine step and partition, value = that partition's ticks as
JSON lines, with the three headers and `ticks` = their number. `batch-size` is the whole step's
number of ticks, so an edge knows when it holds a whole engine step, whatever the partitions; an edge
reads both layouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import pickle
import queue
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    OFFSET_END,
    Consumer,
    KafkaException,
    Message,
    TopicPartition,
)

from marketfeed._engine import untrack_ticks
from marketfeed.health import Health
from marketfeed.streams.kafka_producer import KafkaMessages, Status, ensure_topic, read_frame, write_frame
from marketfeed.ticks import SCHEMA_VERSION, Tick, TickBatch

log = logging.getLogger(__name__)

#: An edge waits this long for the rest of a step spread over several partitions before moving on.
STEP_WAIT_S = 1.0
#: Most ticks an edge holds for one partition while it waits for their step's closing message: a
#: step of a million symbols. Past it (another producer writing ticks without headers) they are dropped.
HELD_MAX = 1_000_000
#: Longest wait of an edge's consume() call for more messages before it hands over what it has.
CONSUME_WAIT_S = 0.005
#: How long close() waits for the producer process to flush and exit (it flushes for 15 s).
CLOSE_WAIT_S = 30.0
#: A producer process that exits before its first report is restarted after a wait that doubles from
#: RESPAWN_MIN_S to RESPAWN_MAX_S (one that cannot start must not be restarted every step).
RESPAWN_MIN_S = 1.0
RESPAWN_MAX_S = 30.0
#: What runs in the producer process (`python -m PRODUCER_MODULE CONFIG`).
PRODUCER_MODULE = "marketfeed.streams.kafka_producer"
#: How much nicer than the server the producer process runs. It is throughput work, and on a busy
#: machine it took the event loop's core for a scheduler slice at a time: bench/kafka.py, five
#: alternating pairs, the loop's p99 lag 3.6 -> 1.8 ms (a message per tick) and 3.1 -> 1.5 ms (per
#: step), at the same ticks/s. The loop is mostly idle, so the producer loses nothing to it.
PRODUCER_NICE = 10

NO_STATUS = Status(0, 0, 0, 0, 0, None)

#: Ticks with their JSON, as an edge reads them.
TickPairs = list[tuple[Tick, bytes]]


@dataclass
class Totals:
    """What producer processes that have exited did, kept when a new one starts."""

    produced: int = 0
    delivered: int = 0
    failed: int = 0
    buffer_full: int = 0


class KafkaBus:
    name = "kafka"

    def __init__(
        self,
        bootstrap: str,
        *,
        topic: str = "marketfeed.ticks",
        partitions: int = 6,
        buffer_messages: int = 500_000,
        messages: KafkaMessages = KafkaMessages.TICK,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.partitions = partitions  #: the topic's, once start() has seen it; else the number to create
        self.messages = KafkaMessages(messages)
        self.buffer_messages = buffer_messages
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outbox: queue.SimpleQueue[TickBatch | None] = queue.SimpleQueue()
        self._sender: threading.Thread | None = None
        self._error: str | None = None
        # On the loop: the running producer process's last Status, and the totals of earlier ones.
        self._status = NO_STATUS
        self._past = Totals()
        self.handed_over = 0  #: ticks given to publish (in flight, delivered, failed or refused)
        self.refused = 0  #: refused by publish: as many ticks in flight as the buffer holds
        self.consumed = 0  #: ticks an edge has read
        self.malformed = 0  #: messages an edge skipped: not a marketfeed tick message
        self.orphaned = 0  #: ticks an edge dropped: their step's closing message never came
        self.producer_pid: int | None = None  #: the producer process now running
        self.spawns = 0  #: producer processes started
        self._reported = False  # the current producer process has sent a status

    # Counters over every producer process this bus has run.
    @property
    def produced(self) -> int:
        return self._past.produced + self._status.produced

    @property
    def delivered(self) -> int:
        st = self._status
        return self._past.delivered + st.produced - st.failed - st.queued

    @property
    def failed(self) -> int:
        return self._past.failed + self._status.failed

    @property
    def buffer_full(self) -> int:
        return self.refused + self._past.buffer_full + self._status.buffer_full

    @property
    def in_flight(self) -> int:
        return self.handed_over - self.buffer_full - self.delivered - self.failed

    # --- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            found = await asyncio.to_thread(ensure_topic, self.bootstrap, self.topic, self.partitions)
            self.partitions = found
        except KafkaException as exc:  # the broker may come later: produce buffers meanwhile
            self._set_error(f"cannot create topic {self.topic}: {exc}")

    async def close(self) -> None:
        if self._sender is not None:  # every batch handed over is produced and flushed first
            self._outbox.put(None)
            # The sender's last callbacks (statuses, the exit) were scheduled on the loop before the
            # join's result, so they have run when this resumes.
            await asyncio.to_thread(self._sender.join)
            if self.in_flight:
                log.error("kafka: %d ticks still undelivered at shutdown", self.in_flight)

    # --- producing (engine side) -----------------------------------------------------------------
    async def publish(self, batch: TickBatch) -> None:
        if self._sender is None:
            self._loop = asyncio.get_running_loop()
            self._sender = threading.Thread(target=self._send, name="kafka-send", daemon=True)
            self._sender.start()
        full = self.in_flight + len(batch) > self.buffer_messages
        self.handed_over += len(batch)
        if full:
            self.refused += len(batch)
            self._set_error("producer buffer full: the broker is not taking ticks")
            return
        self._outbox.put(batch)

    def _call(self, callback: Callable[..., None], *args: Any) -> None:  # from a thread, onto the loop
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                self._loop.call_soon_threadsafe(callback, *args)

    def _spawn(self) -> tuple[subprocess.Popen[bytes], threading.Thread]:
        config = {"bootstrap": self.bootstrap, "topic": self.topic,
                  "buffer_messages": self.buffer_messages, "schema_version": SCHEMA_VERSION,
                  "messages": str(self.messages), "partitions": self.partitions,
                  "nice": PRODUCER_NICE}  # fmt: skip
        child = subprocess.Popen(
            [sys.executable, "-m", PRODUCER_MODULE, json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        reader = threading.Thread(target=self._read, args=(child,), name="kafka-status", daemon=True)
        reader.start()
        return child, reader

    def _send(self) -> None:
        """The sender thread: owns the producer process, writes it each step in order (so each symbol
        stays in order), starts another if it exits, and accounts for what one that exited held. One
        that exits before its first report (it cannot start, say) is restarted only after a wait,
        doubling up to RESPAWN_MAX_S: the steps meanwhile count as failed, and health says why."""
        child: subprocess.Popen[bytes] | None = None
        reader: threading.Thread | None = None
        sent = 0  # ticks written to the current child
        not_before, backoff = 0.0, RESPAWN_MIN_S / 2
        while True:
            batch = self._outbox.get()
            if child is not None and reader is not None and (batch is None or child.poll() is not None):
                with contextlib.suppress(OSError):
                    child.stdin.close()  # type: ignore[union-attr]  # at shutdown: flush, report, exit
                try:
                    child.wait(CLOSE_WAIT_S)
                except subprocess.TimeoutExpired:
                    child.kill()
                reader.join()  # its statuses are on the loop before the exit is
                self._call(self._exited, sent)
                child, reader, sent = None, None, 0
                if batch is not None and not self._reported:  # it died before it ever worked
                    backoff = min(2 * backoff, RESPAWN_MAX_S)
                    not_before = time.monotonic() + backoff
                elif batch is not None:  # it died after working: at once
                    backoff = RESPAWN_MIN_S / 2
            if batch is None:
                return
            if child is None:
                if time.monotonic() < not_before:
                    self._call(self._lost, len(batch))
                    continue
                self._reported = False
                child, reader = self._spawn()
                self.producer_pid = child.pid
                self.spawns += 1
            frame = pickle.dumps((batch.step, [t.symbol for t in batch.ticks], batch.encoded), 5)
            try:
                write_frame(child.stdin, frame)  # type: ignore[arg-type]
                sent += len(batch)
            except OSError:  # the child is gone: this step is lost with what it held
                self._call(self._lost, len(batch))

    def _read(self, child: subprocess.Popen[bytes]) -> None:
        """A reader thread: the child's counters to the loop, until it exits."""
        final = False
        while (frame := read_frame(child.stdout)) is not None:  # type: ignore[arg-type]
            status = Status(*pickle.loads(frame))
            self._reported = True  # read by the sender thread once this one has ended
            final = status.final
            self._call(self._on_status, status)
        child.wait()
        child.stdout.close()  # type: ignore[union-attr]
        if not final:
            self._call(self._set_error, f"kafka producer process exited with code {child.returncode}")

    def _on_status(self, status: Status) -> None:  # on the loop
        seen, delivered, failed = self._status.errors, self.delivered, self.failed
        self._status = status
        if status.errors > seen:
            self._set_error(status.error or "kafka error")
        elif self.delivered > delivered and self.failed == failed:
            self._error = None  # the broker takes ticks again

    def _exited(self, sent: int) -> None:  # on the loop: the producer process has exited
        st = self._status
        delivered = st.produced - st.failed - st.queued
        # Whatever it had not confirmed is lost with it: queued in librdkafka, or still in the pipe.
        lost = sent - delivered - st.failed - st.buffer_full
        self._past.produced += st.produced
        self._past.delivered += delivered
        self._past.failed += st.failed + lost
        self._past.buffer_full += st.buffer_full
        self._status = NO_STATUS
        if lost:
            self._set_error(f"kafka producer process exited with {lost} ticks unconfirmed")

    def _lost(self, ticks: int) -> None:  # on the loop
        self._past.failed += ticks
        self._set_error("kafka producer process gone: steps are lost until it is restarted")

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
            shares = Shares()
            while not stop.is_set():
                # consume() returns early only with num_messages in hand, so its timeout is the
                # batching delay every tick pays on its way to the clients: 0.1 s here made the
                # edges' median latency 60 ms (bench/fanout.py --edges 2).
                messages = consumer.consume(num_messages=5000, timeout=CONSUME_WAIT_S)
                for m in messages:
                    if m.error() is not None:
                        continue
                    try:
                        step, size, ticks = ticks_of(m)
                    except ValueError as exc:  # another producer's message: skipped, counted, logged
                        self.malformed += 1
                        if self.malformed == 1 or self.malformed % 1000 == 0:
                            where = f"partition {m.partition()} offset {m.offset()}"
                            log.warning("kafka edge: %d malformed messages skipped, the last at %s: %s",
                                        self.malformed, where, exc)  # fmt: skip
                        continue
                    self.consumed += len(ticks)
                    ticks = shares.add(m.partition() or 0, step, ticks)
                    self.orphaned = shares.orphaned
                    if step is not None:
                        for tick, value in ticks:
                            regroup.add(step, size, tick, value)
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
            "kafka_in_flight": self.in_flight,
            "kafka_consumed_total": self.consumed,
            "kafka_malformed_total": self.malformed,
            "kafka_orphaned_total": self.orphaned,
        }


def header_map(message: Message) -> dict[str, bytes]:
    raw: Any = message.headers() or []  # a list of (key, value) pairs as produced
    return {k: v for k, v in raw if isinstance(v, bytes)}


def ticks_of(message: Message) -> tuple[int | None, int, TickPairs]:
    """A message's step, that step's number of ticks, and the ticks it carries with their JSON, in
    either layout; step None (and size 0) for a tick without headers, whose step its partition's next
    message with headers names. ValueError for anything else (the topic is open to other producers)."""
    headers = header_map(message)
    value = message.value() or b""
    try:
        if "step" not in headers and "batch-size" not in headers:
            return None, 0, [(Tick.from_json(value), value)]
        step, size = int(headers["step"]), int(headers["batch-size"])
        lines = [value]
        if "ticks" in headers:  # the step layout: the ticks as JSON lines
            lines = value.split(b"\n")
            if int(headers["ticks"]) != len(lines):
                raise ValueError(f"{len(lines)} lines, header ticks = {headers['ticks']!r}")
        return step, size, [(Tick.from_json(line), line) for line in lines]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a marketfeed tick message ({type(exc).__name__}: {exc})") from exc


class Shares:
    """Each partition's ticks without headers, held until the partition's next message with headers
    (the tick layout's last of the step there) names their step.

    The ticks of one step share their timestamp, so held ticks of another timestamp than the next
    tick's belong to a step whose closing message was lost (refused by a full producer buffer): they
    are dropped and counted rather than given to the wrong step; so are HELD_MAX held ticks that no
    closing message follows.
    """

    def __init__(self) -> None:
        self.held: dict[int, TickPairs] = {}
        self.orphaned = 0

    def add(self, partition: int, step: int | None, ticks: TickPairs) -> TickPairs:
        """The ticks a message completes: none while a partition's share is open (step None), else the
        share held so far and the message's own."""
        held = self.held.get(partition)
        if held and ticks and (held[-1][0].ts != ticks[0][0].ts or len(held) >= HELD_MAX):
            self.orphaned += len(held)
            held.clear()
        if step is None:
            self.held.setdefault(partition, []).extend(ticks)
            return []
        if not held:
            return ticks
        del self.held[partition]
        return held + ticks


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

    def add(self, step: int, size: int, tick: Tick, value: bytes) -> None:
        if self.next_step is not None and step < self.next_step:
            return  # already emitted (a re-delivery)
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
        made = tuple(p[0] for p in pairs)
        untrack_ticks(made)  # as the engine's (Market.ticks): an edge keeps a million in its resume ring
        self.emit(TickBatch(step=step, ticks=made, encoded=tuple(p[1] for p in pairs)))
        self.next_step = step + 1

    def flush_stale(self) -> None:
        now = time.monotonic()
        while self.pending and self.next_step is not None:
            step = min(self.pending)
            if now - self.pending[step][1] < STEP_WAIT_S:
                break
            self._emit(step)
        self._emit_ready()
