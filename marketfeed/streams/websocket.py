"""The WebSocket protocol for bots, in the style of the market-data APIs they already speak.

Client -> server (JSON text frames):
    {"action": "subscribe",   "symbols": ["NOVA", "QBIT"]}   ("*" means every symbol)
    {"action": "unsubscribe", "symbols": ["QBIT"]}
    {"action": "ping"}
    {"action": "replay", "from_seq": 12345}                  (every tick with gseq >= from_seq)
    {"action": "replay_range", "start": "2026-11-25T10:00:00Z", "end": ..., "speed": 10}
    {"action": "pause"} / {"action": "resume"} / {"action": "stop"}   (for a range replay)
Server -> client:
    {"type": "subscribed", "symbols": [...]}  then  {"type": "snapshot", "data": [tick, ...]}
    {"type": "unsubscribed", "symbols": [...]}
    {"type": "ticks", "data": [tick, ...]}     one frame per engine step
    {"type": "replay", "data": [...]} ...      then {"type": "replay_end", "last_gseq": N}
      (a range replay: one frame per stored step at `speed` times real time, then replay_end;
      pause/resume/stop are acknowledged with replay_paused/replay_resumed/replay_stopped)
      (a replay covers from_seq up to the newest tick published when it began; live frames go on
      independently, so a client merges by gseq)
    {"type": "pong", "ts": ns}
    {"type": "scenario", "data": {...}}        a scenario injected into the market (admin endpoints)
    {"type": "error", "code": "...", "message": "..."}   and the connection goes on

A client that falls too far behind is closed with code 1008 and the reason; at shutdown, 1001.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from marketfeed.history.store import HistoryStore
from marketfeed.security import TokenBucket
from marketfeed.streams.backfill import backfill
from marketfeed.streams.hub import Hub, Subscriber
from marketfeed.streams.wire import direct_write
from marketfeed.ticks import SymbolSet, Tick, TickBatch

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN = 1013
#: Messages refused for rate in a row before the connection is closed as abusive.
MAX_REFUSALS = 100
#: How long a closing connection may take to take its close frame.
CLOSE_WAIT_S = 10.0


class ProtocolError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _frame(obj: dict[str, Any]) -> str:
    return orjson.dumps(obj).decode()


def _ticks_frame(kind: str, ticks: Sequence[Tick]) -> str:
    data = ",".join(t.to_json().decode() for t in ticks)
    return f'{{"type":"{kind}","data":[{data}]}}'


class Session:
    """One WebSocket connection: a receive loop for commands and a send loop for ticks."""

    def __init__(
        self,
        ws: WebSocket,
        hub: Hub,
        history: HistoryStore,
        symbols: Sequence[str],
        *,
        max_symbols: int,
        shutdown: asyncio.Event,
        max_rate: float = 20.0,
    ) -> None:
        self.ws = ws
        self.hub = hub
        self.history = history
        self.known = frozenset(symbols)
        self.max_symbols = max_symbols
        self.shutdown = shutdown
        self.sub: Subscriber = hub.subscribe(frozenset())
        self.bucket = TokenBucket(max_rate, 5 * max_rate)
        self.range_task: asyncio.Task[None] | None = None
        self.range_running = asyncio.Event()
        self.refusals = 0
        # Snapshots, acks and tick frames must not interleave: a new symbol's snapshot goes out before
        # any of its live ticks.
        self.lock = asyncio.Lock()
        self._write = direct_write(ws.scope)
        if self._write is not None:
            self.sub.send_now = self.send_now

    def send_now(self, batch: TickBatch) -> bool:
        """From the hub's publish: write the batch's frame straight to the connection (`streams/wire`)
        unless the send loop is busy (it holds the lock for a snapshot, an ack or queued batches) or
        the client is not keeping up; False to have it queued instead."""
        if self.lock.locked():
            return False
        wire = batch.ws_wire(self.sub.symbols)
        if wire is None:
            return True  # none of its ticks are watched here: nothing to send either way
        if self._write is None or not self._write(wire):
            return False
        self.hub.sent_now += 1
        return True

    async def run(self) -> None:
        tasks = [
            asyncio.create_task(self._receive_loop()),
            asyncio.create_task(self._send_loop()),
            asyncio.create_task(self.shutdown.wait()),
            asyncio.create_task(self.sub.closed.wait()),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.hub.unsubscribe(self.sub)
            if self.range_task is not None:
                tasks.append(self.range_task)
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, OSError, RuntimeError):
                    await t
        if (
            self.ws.application_state is WebSocketState.CONNECTED
            and self.ws.client_state is WebSocketState.CONNECTED
        ):
            code, reason = (
                (CLOSE_GOING_AWAY, "server shutting down")
                if self.shutdown.is_set()
                else (
                    CLOSE_POLICY,
                    self.sub.closed_reason or "closed",
                )
            )
            with contextlib.suppress(Exception):
                # The close frame queues behind what the client has not read yet: give a slow reader
                # time to reach it, so it learns why it was dropped.
                await asyncio.wait_for(self.ws.close(code=code, reason=reason[:120]), CLOSE_WAIT_S)

    # --- sending ---------------------------------------------------------------------------------
    async def _send_loop(self) -> None:
        while True:
            await self.sub.wait()
            if self.sub.closed_reason is not None:
                return
            async with self.lock:
                # Taken under the lock, so what is queued always goes out for the symbols it was
                # queued under: a (un)subscribe, holding the lock, first sends what was queued before
                # it, for the old set.
                batches = self.sub.take()
                for notice in self.sub.take_notices():
                    await self.ws.send_text('{"type":"scenario","data":' + notice.decode() + "}")
                await self._send_batches(batches, self.sub.symbols)

    async def _send_batches(self, batches: list[TickBatch], symbols: SymbolSet) -> None:
        for b in batches:
            frame = b.ws_frame(symbols)
            if frame is not None:
                await self.ws.send_text(frame)

    async def _send(self, obj: dict[str, Any]) -> None:
        await self.ws.send_text(_frame(obj))

    # --- receiving -------------------------------------------------------------------------------
    async def _receive_loop(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            try:
                if not self.bucket.take():
                    self.refusals += 1
                    if self.refusals > MAX_REFUSALS:
                        self.sub.close("message rate limit exceeded repeatedly")
                        return
                    raise ProtocolError("rate_limited", "too many messages: slow down")
                self.refusals = 0
                if text is None:
                    raise ProtocolError("bad_frame", "send JSON text frames, not binary")
                await self._handle(_parse(text))
            except ProtocolError as exc:
                async with self.lock:
                    await self._send({"type": "error", "code": exc.code, "message": str(exc)})

    async def _handle(self, msg: dict[str, Any]) -> None:
        action = msg.get("action")
        if action == "ping":
            async with self.lock:
                await self._send(
                    {"type": "pong", "ts": time.time_ns(), **({"id": msg["id"]} if "id" in msg else {})}
                )
        elif action == "subscribe":
            await self._subscribe(self._symbols(msg))
        elif action == "unsubscribe":
            await self._unsubscribe(self._symbols(msg))
        elif action == "replay":
            await self._replay(msg)
        elif action == "replay_range":
            self._start_range(msg)
        elif action in ("pause", "resume", "stop"):
            await self._control_range(action)
        else:
            raise ProtocolError(
                "unknown_action",
                f"unknown action {action!r}: use subscribe, unsubscribe, ping, replay, replay_range, pause, "
                "resume or stop",
            )

    def _symbols(self, msg: dict[str, Any]) -> frozenset[str]:
        raw = msg.get("symbols")
        if isinstance(raw, str):
            raw = [s for s in raw.split(",") if s]
        if not isinstance(raw, list) or not raw or not all(isinstance(s, str) for s in raw):
            raise ProtocolError("bad_symbols", '"symbols" must be a non-empty list of symbol strings')
        if "*" in raw:
            return self.known
        wanted = frozenset(s.strip().upper() for s in raw)
        unknown = sorted(wanted - self.known)
        if unknown:
            raise ProtocolError("unknown_symbols", f"unknown symbols: {', '.join(unknown[:20])}")
        return wanted

    async def _subscribe(self, symbols: frozenset[str]) -> None:
        current = self.sub.symbols or frozenset()
        target = current | symbols
        if len(target) > self.max_symbols:
            raise ProtocolError("too_many_symbols", f"at most {self.max_symbols} symbols per connection")
        added = sorted(target - current)
        async with self.lock:
            # One step with no await: the batches queued so far (for the old symbols), the new set,
            # and the snapshot of the latest ticks, which those batches are the last of. Every batch
            # after it goes out for the new set, so a new symbol's ticks continue its snapshot: no
            # tick twice (a batch queued before and sent after the snapshot did that), none missed.
            pending = self.sub.take()
            self.sub.set_symbols(target)
            snapshot = self.hub.snapshot(added)
            await self._send_batches(pending, current)
            await self._send({"type": "subscribed", "symbols": sorted(target)})
            await self.ws.send_text(_ticks_frame("snapshot", snapshot))

    async def _unsubscribe(self, symbols: frozenset[str]) -> None:
        current = self.sub.symbols or frozenset()
        target = current - symbols
        async with self.lock:
            pending = self.sub.take()  # published before the request: sent before its answer
            self.sub.set_symbols(target)
            await self._send_batches(pending, current)
            await self._send({"type": "unsubscribed", "symbols": sorted(target)})

    # --- replaying a stored time range at N times real time, with pause and resume ------------------
    def _start_range(self, msg: dict[str, Any]) -> None:
        if self.range_task is not None and not self.range_task.done():
            raise ProtocolError("replay_busy", "a range replay is running: stop it first")
        try:
            start = to_ns(_TIME.validate_python(msg.get("start")))
            end = to_ns(_TIME.validate_python(msg["end"])) if msg.get("end") is not None else None
        except (ValidationError, KeyError, OverflowError, ValueError):
            raise ProtocolError(
                "bad_range", '"start" (and "end") must be ISO 8601 times or Unix seconds'
            ) from None
        speed = msg.get("speed", 1.0)
        if isinstance(speed, bool) or not isinstance(speed, int | float) or not 0 <= speed <= 10_000:
            raise ProtocolError("bad_speed", '"speed" must be a number from 0 (as fast as possible) to 10000')
        symbols = self._symbols(msg) if "symbols" in msg else None
        self.range_running.set()
        self.range_task = asyncio.create_task(self._run_range(start, end, float(speed), symbols))

    async def _control_range(self, action: str) -> None:
        if self.range_task is None or self.range_task.done():
            raise ProtocolError("no_replay", f"nothing to {action}: start one with replay_range")
        if action == "pause":
            self.range_running.clear()
        elif action == "resume":
            self.range_running.set()
        else:
            self.range_task.cancel()
        async with self.lock:
            await self._send({"type": f"replay_{action}d" if action != "stop" else "replay_stopped"})

    async def _run_range(
        self, start: int, end: int | None, speed: float, symbols: frozenset[str] | None
    ) -> None:
        after, previous, sent = 0, None, 0
        while True:
            page = await self.history.ticks(
                symbols=symbols, start_ns=start, end_ns=end, after_gseq=after, limit=5000
            )
            i = 0
            while i < len(page):
                j = i
                while j < len(page) and page[j].ts == page[i].ts:  # one engine step: one frame
                    j += 1
                if speed > 0 and previous is not None:
                    await asyncio.sleep(min((page[i].ts - previous) / 1e9 / speed, 60.0))
                previous = page[i].ts
                while True:  # a pause acknowledged before this frame holds it back
                    await self.range_running.wait()
                    async with self.lock:
                        if self.range_running.is_set():
                            await self.ws.send_text(_ticks_frame("replay", page[i:j]))
                            break
                sent += j - i
                i = j
            if len(page) < 5000:
                break
            after = page[-1].gseq
        async with self.lock:
            await self._send({"type": "replay_end", "ticks": sent})

    async def _replay(self, msg: dict[str, Any]) -> None:
        start = msg.get("from_seq")
        if isinstance(start, bool) or not isinstance(start, int) or start < 1:
            raise ProtocolError("bad_from_seq", '"from_seq" must be a positive integer (a gseq)')
        symbols = self.sub.symbols
        if not symbols:
            raise ProtocolError("not_subscribed", "subscribe to symbols before asking for a replay")
        async with self.lock:  # live frames wait (queued, bounded) until the replay is out
            # What is queued now is at most `upto`, which the replay covers: sent live as well, those
            # ticks would arrive twice. What is published from here on is newer, and goes out live.
            self.sub.take()
            last, upto = start - 1, self.hub.last_gseq
            async for batch in backfill(self.hub, self.history, symbols, start - 1):
                if batch.ticks and batch.ticks[0].gseq > upto:
                    break
                ticks = [t for t in batch.ticks if last < t.gseq <= upto and t.symbol in symbols]
                if ticks:
                    await self.ws.send_text(_ticks_frame("replay", ticks))
                last = max(last, batch.last_gseq)
            await self._send({"type": "replay_end", "last_gseq": last})


_TIME = TypeAdapter(datetime)


def to_ns(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def _parse(text: str) -> dict[str, Any]:
    try:
        msg = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError("bad_json", f"message is not valid JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise ProtocolError("bad_message", 'a message must be a JSON object with an "action"')
    return msg
