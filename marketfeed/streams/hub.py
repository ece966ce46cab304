"""The fan-out hub: one publisher (the engine step, or a bus consumer), many clients.

`Hub.publish` runs on the event loop once per engine step and never awaits: each client has a bounded
queue of batches; a client whose queue is full gets its backlog conflated to the newest tick of each
symbol, and one that stays behind for too long is closed with a reason. So a slow client can never
slow the engine or another client.

The hub also keeps a ring of recent batches (so a reconnecting client is served its gap from memory)
and the latest tick of each symbol (the snapshot a new subscriber gets first).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable

from marketfeed.ticks import SymbolSet, Tick, TickBatch, conflate

log = logging.getLogger(__name__)

#: How often the hub wakes subscribers whose idle wait has run out (SSE keep-alives): one timer for
#: all of them, instead of one per wait. An idle wake-up comes at most this late.
IDLE_BEAT_S = 0.05


class Subscriber:
    """One client's view of the hub: a symbol filter and a bounded, conflating queue of batches."""

    def __init__(self, hub: Hub, symbols: SymbolSet, maxlen: int, slow_after: float) -> None:
        self._hub = hub
        self.symbols: SymbolSet = symbols
        self._maxlen = maxlen
        self._slow_after = slow_after
        self._queue: deque[TickBatch] = deque()
        self._ready = asyncio.Event()
        self._behind_since: float | None = None
        self._overflowed = False
        self.conflated_ticks = 0  #: ticks this client never got because it was too slow
        self.closed_reason: str | None = None
        self.closed = asyncio.Event()
        self.notices: list[bytes] = []  #: market events (scenarios) as JSON, sent before the next ticks
        self.idle_deadline: float | None = None  #: loop time at which an idle `get` gives up
        #: Sends a batch at once, bypassing the queue, and returns True, or returns False having sent
        #: nothing (see `Session.send_now`); only called while nothing is queued, so order holds.
        self.send_now: Callable[[TickBatch], bool] | None = None

    def offer(self, batch: TickBatch) -> None:
        if self.closed_reason is not None:
            return
        if self.send_now is not None and not self._queue and not self.notices and self._sent_now(batch):
            self._behind_since = None
            return
        if len(self._queue) >= self._maxlen:
            now = time.monotonic()
            if self._behind_since is None:
                self._behind_since = now
            elif now - self._behind_since > self._slow_after:
                self.close(f"slow consumer: more than {self._slow_after:g} s behind the market")
                return
            self._overflowed = True
            pending = [*self._queue, batch]
            merged = conflate(pending)
            dropped = sum(len(b) for b in pending) - len(merged)
            self.conflated_ticks += dropped
            self._hub.conflated_ticks += dropped
            self._queue.clear()
            self._queue.append(merged)
        else:
            self._queue.append(batch)
        self._ready.set()

    def _sent_now(self, batch: TickBatch) -> bool:
        # Called from publish, so an error here would stop the engine task for every client: this
        # client goes on through its queue instead, and the error is logged once.
        try:
            return self.send_now is not None and self.send_now(batch)
        except Exception:
            log.exception("a direct send failed; this client's frames take the queue from now on")
            self.send_now = None
            return False

    async def get(self, idle_seconds: float | None = None) -> list[TickBatch]:
        """Everything queued, waiting up to `idle_seconds` for something; [] on timeout or close."""
        await self.wait(idle_seconds)
        return self.take()

    async def wait(self, idle_seconds: float | None = None) -> None:
        """Until something is queued (a batch or a notice) or the subscriber is closed, or at most
        `idle_seconds`; takes nothing."""
        if not self._queue and not self.notices and self.closed_reason is None:
            self._ready.clear()
            if idle_seconds is not None:
                # The hub's heartbeat wakes us when this passes. A timeout per wait (asyncio.timeout
                # arms and cancels a timer each time) was a tenth of the server's CPU at 1,000 SSE
                # clients and 25 frames a second, where the wait almost never runs out.
                self.idle_deadline = asyncio.get_running_loop().time() + idle_seconds
                self._hub.watch_idle(self)
            try:
                await self._ready.wait()
            finally:
                self.idle_deadline = None

    def take(self) -> list[TickBatch]:
        """Everything queued now, without waiting."""
        batches = list(self._queue)
        self._queue.clear()
        if not self._overflowed:
            self._behind_since = None  # its queue did not overflow since the last read: caught up
        self._overflowed = False
        return batches

    @property
    def backlog(self) -> int:
        return len(self._queue)

    def close(self, reason: str) -> None:
        """Stop feeding this client; its reader wakes up and sees `closed_reason`."""
        if self.closed_reason is None:
            self.closed_reason = reason
            self._queue.clear()
            self._hub.unsubscribe(self)
            self._ready.set()
            self.closed.set()

    def notify(self, notice: bytes) -> None:
        if self.closed_reason is None and len(self.notices) < 100:
            self.notices.append(notice)
            self._ready.set()

    def wake(self) -> None:
        """End a waiting `get` now (it returns what is queued, possibly nothing)."""
        self._ready.set()

    def take_notices(self) -> list[bytes]:
        notices, self.notices = self.notices, []
        return notices

    def set_symbols(self, symbols: SymbolSet) -> None:
        self._hub.retarget(self, symbols)


class Hub:
    """In-process fan-out of tick batches to subscribers, with a resume ring and latest quotes."""

    def __init__(
        self, *, ring_ticks: int = 200_000, client_queue: int = 256, slow_after: float = 10.0
    ) -> None:
        self._ring: deque[TickBatch] = deque()
        self._ring_ticks = 0
        self._ring_limit = ring_ticks
        self._client_queue = client_queue
        self._slow_after = slow_after
        self._subscribers: set[Subscriber] = set()
        self._idle: set[Subscriber] = set()  #: subscribers in an idle-limited wait
        self._beat: asyncio.TimerHandle | None = None
        self._sets: dict[frozenset[str], frozenset[str]] = {}
        self.latest: dict[str, Tick] = {}
        self.watchers: Counter[str] = Counter()  #: live subscribers per symbol (hot symbols)
        self.published_ticks = 0
        self.conflated_ticks = 0
        self.slow_disconnects = 0
        self.sent_now = 0  #: WebSocket frames and SSE chunks written straight from `publish`, not queued

    # --- publishing ------------------------------------------------------------------------------
    def publish(self, batch: TickBatch) -> None:
        if not batch.ticks:
            return
        if self._ring and batch.ticks[0].gseq <= self._ring[-1].last_gseq:
            return  # a re-delivery (bus replay after a reconnect): clients already have it
        self._ring.append(batch)
        self._ring_ticks += len(batch)
        while self._ring_ticks > self._ring_limit and len(self._ring) > 1:
            self._ring_ticks -= len(self._ring.popleft())
        for t in batch.ticks:
            self.latest[t.symbol] = t
        self.published_ticks += len(batch)
        for sub in list(self._subscribers):
            sub.offer(batch)
            if sub.closed_reason is not None and sub.closed_reason.startswith("slow"):
                self.slow_disconnects += 1

    def announce(self, notice: bytes) -> None:
        """A market event (a scenario) for every client, ahead of the ticks it affects."""
        for sub in list(self._subscribers):
            sub.notify(notice)

    @property
    def last_gseq(self) -> int:
        return self._ring[-1].last_gseq if self._ring else 0

    def recent(self, after_gseq: int) -> list[TickBatch] | None:
        """Batches holding every tick newer than `after_gseq`, or None if the ring no longer reaches back."""
        if not self._ring or self._ring[0].ticks[0].gseq > after_gseq + 1:
            return None  # the ring starts after the client's position: the caller fills from history
        return [b for b in self._ring if b.last_gseq > after_gseq]

    @property
    def oldest_gseq(self) -> int | None:
        return self._ring[0].ticks[0].gseq if self._ring else None

    def snapshot(self, symbols: Iterable[str]) -> list[Tick]:
        return [self.latest[s] for s in symbols if s in self.latest]

    # --- subscribers -----------------------------------------------------------------------------
    def intern(self, symbols: SymbolSet) -> SymbolSet:
        """One shared object per distinct symbol set: frame caches then match by identity, not by
        comparing sets element by element, on every frame of every client."""
        if symbols is None:
            return None
        if len(self._sets) > 10_000:  # a storm of distinct sets must not grow memory without bound
            self._sets.clear()
        return self._sets.setdefault(symbols, symbols)

    def subscribe(self, symbols: SymbolSet) -> Subscriber:
        symbols = self.intern(symbols)
        sub = Subscriber(self, symbols, self._client_queue, self._slow_after)
        self._subscribers.add(sub)
        self._count(symbols, +1)
        return sub

    def watch_idle(self, sub: Subscriber) -> None:
        self._idle.add(sub)
        if self._beat is None:
            self._beat = asyncio.get_running_loop().call_later(IDLE_BEAT_S, self._heartbeat)

    def _heartbeat(self) -> None:
        self._beat = None
        now = asyncio.get_running_loop().time()
        for sub in list(self._idle):
            if sub.idle_deadline is None:  # it got something (or was closed) since
                self._idle.discard(sub)
            elif now >= sub.idle_deadline:
                self._idle.discard(sub)
                sub.wake()
        if self._idle:
            self._beat = asyncio.get_running_loop().call_later(IDLE_BEAT_S, self._heartbeat)

    def unsubscribe(self, sub: Subscriber) -> None:
        self._idle.discard(sub)
        if sub in self._subscribers:
            self._subscribers.discard(sub)
            self._count(sub.symbols, -1)

    def retarget(self, sub: Subscriber, symbols: SymbolSet) -> None:
        symbols = self.intern(symbols)
        if sub in self._subscribers:
            self._count(sub.symbols, -1)
            self._count(symbols, +1)
        sub.symbols = symbols

    def _count(self, symbols: SymbolSet, delta: int) -> None:
        for s in symbols if symbols is not None else self.latest.keys():
            self.watchers[s] += delta
            if self.watchers[s] <= 0:
                del self.watchers[s]

    @property
    def clients(self) -> int:
        return len(self._subscribers)

    def close_all(self, reason: str) -> None:
        for sub in list(self._subscribers):
            sub.close(reason)
