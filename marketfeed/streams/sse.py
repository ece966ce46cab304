"""Server-Sent Events, written directly as an ASGI response.

Why not sse-starlette: it encodes every event per client, which cost 5-6x the CPU of writing bytes
that were encoded once per batch (see ticks.py). What it does well is kept here: a `retry` hint,
keep-alive comments, disconnect detection, and ending every stream promptly at shutdown (uvicorn
waits for open responses before it runs the lifespan shutdown, so streams watch `Runtime.shutdown`,
which the CLI's server sets as soon as it is asked to exit).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from marketfeed.history.store import HistoryStore
from marketfeed.streams.backfill import backfill
from marketfeed.streams.hub import Hub, Subscriber
from marketfeed.streams.wire import HTTP_EXTENSION, DirectWrite, direct_write
from marketfeed.ticks import SymbolSet, TickBatch

RETRY_MS = 2000

HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # tell nginx-style proxies not to buffer the stream
]


async def _closed(sub: Subscriber) -> None:
    """Ends when the hub drops the client, after a grace second to write the reason."""
    await sub.closed.wait()
    await asyncio.sleep(1.0)


class EventStream(Response):
    """`tick` events (id = gseq) for `symbols`, resuming after `last_event_id` when given.

    A `Response` so FastAPI passes it through untouched; its body is written by `__call__`.
    """

    def __init__(
        self,
        hub: Hub,
        history: HistoryStore,
        symbols: SymbolSet,
        last_event_id: int | None,
        *,
        ping_seconds: float,
        shutdown: asyncio.Event,
        on_close: Callable[[], None] = lambda: None,
    ) -> None:
        self.on_close = on_close
        self.hub = hub
        self.history = history
        self.symbols = symbols
        self.last_event_id = last_event_id
        self.ping_seconds = ping_seconds
        self.shutdown = shutdown
        self.last = 0  #: the newest gseq written (or skipped as not watched)
        self.busy = True  #: the writer task is between two waits: publish must queue, not write
        self.wrote = False  #: a chunk went out directly since the writer's wait began (no ping due)
        self._direct: DirectWrite | None = None
        super().__init__(status_code=200, media_type="text/event-stream")

    def _send_now(self, batch: TickBatch) -> bool:
        """From the hub's publish: the batch's chunk straight to the connection (`streams/wire.py`),
        unless the writer task is busy, the batch reaches back to a resume point, or the client is
        not keeping up; False to have it queued instead."""
        if self.busy or self._direct is None or (batch.ticks and batch.ticks[0].gseq <= self.last):
            return False
        chunk = batch.sse_chunk(self.symbols, self.last)
        if chunk:
            if not self._direct(chunk):
                return False
            self.hub.sent_now += 1
            self.wrote = True
        self.last = max(self.last, batch.last_gseq)
        return True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sub = self.hub.subscribe(self.symbols)  # before any backfill, so no tick falls in between
        self.symbols = sub.symbols  # the hub's interned set, which the batches' chunks are keyed by
        self._direct = direct_write(scope, HTTP_EXTENSION)
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        writer = asyncio.create_task(self._write(sub, send))
        watchers = [
            asyncio.create_task(self._disconnected(receive)),
            asyncio.create_task(self.shutdown.wait()),
            asyncio.create_task(_closed(sub)),
        ]
        try:
            await asyncio.wait([writer, *watchers], return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.hub.unsubscribe(sub)
            self.on_close()
            for task in (writer, *watchers):
                task.cancel()
            for task in (writer, *watchers):
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await task
        if watchers[0].cancelled():
            # Still connected: end the response cleanly (shutdown or a slow-consumer close).
            with contextlib.suppress(OSError):
                await asyncio.wait_for(
                    send({"type": "http.response.body", "body": b"", "more_body": False}), 1.0
                )

    @staticmethod
    async def _disconnected(receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    async def _write(self, sub: Subscriber, send: Send) -> None:
        async def write(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})

        await write(b"retry: %d\n\n" % RETRY_MS)
        if self.last_event_id is None:
            self.last = self.hub.last_gseq
        else:
            self.last = self.last_event_id
            async for batch in backfill(self.hub, self.history, sub.symbols, self.last):
                chunk = batch.sse_chunk(sub.symbols, self.last)
                if chunk:
                    await write(chunk)
                self.last = max(self.last, batch.last_gseq)
        sub.send_now = self._send_now
        while True:
            self.busy, self.wrote = False, False
            batches = await sub.get(self.ping_seconds)
            self.busy = True  # from here to the next wait, publish queues
            if sub.closed_reason is not None:
                await write(b"event: close\ndata: %s\n\n" % sub.closed_reason.encode())
                return
            notices = sub.take_notices()
            if notices:
                await write(b"".join(b"event: scenario\ndata: %s\n\n" % n for n in notices))
            if not batches:
                if not notices and not self.wrote:  # an idle stream: tell proxies it is alive
                    await write(b": ping\n\n")
                continue
            chunk = b"".join(b.sse_chunk(sub.symbols, self.last) for b in batches)
            self.last = max(self.last, batches[-1].last_gseq)
            if chunk:
                await write(chunk)
