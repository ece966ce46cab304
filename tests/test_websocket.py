"""The WebSocket protocol against a real server, with the `websockets` client bots use, and the
session's ordering of snapshots and live frames on its own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import pytest
from serverproc import ServerProcess
from websockets.asyncio.client import ClientConnection, connect

from marketfeed.streams.hub import Hub
from marketfeed.streams.websocket import Session
from marketfeed.ticks import Tick, TickBatch


async def recv(ws: ClientConnection, seconds: float = 5.0) -> dict[str, Any]:
    message = json.loads(await asyncio.wait_for(ws.recv(), seconds))
    assert isinstance(message, dict)
    return message


async def recv_type(ws: ClientConnection, kind: str, seconds: float = 5.0) -> dict[str, Any]:
    """The next message of type `kind`, skipping acks and tick frames that may arrive before it."""
    while True:
        message = await recv(ws, seconds)
        if message["type"] == kind:
            return message
        assert message["type"] in ("ticks", "subscribed", "snapshot", "replay"), message


def test_subscribe_snapshot_ticks_unsubscribe(server: ServerProcess) -> None:
    async def scenario() -> None:
        async with connect(server.ws_url) as ws:
            await ws.send(json.dumps({"action": "subscribe", "symbols": ["NOVA", "bnkr"]}))
            assert await recv(ws) == {"type": "subscribed", "symbols": ["BNKR", "NOVA"]}
            snapshot = await recv(ws)
            assert snapshot["type"] == "snapshot"
            assert sorted(t["symbol"] for t in snapshot["data"]) == ["BNKR", "NOVA"]
            seen: dict[str, int] = {t["symbol"]: t["seq"] for t in snapshot["data"]}
            for _ in range(5):
                frame = await recv(ws)
                assert frame["type"] == "ticks"
                assert {t["symbol"] for t in frame["data"]} <= {"BNKR", "NOVA"}
                for t in frame["data"]:  # live ticks continue the snapshot with no gap
                    assert t["seq"] == seen[t["symbol"]] + 1
                    seen[t["symbol"]] = t["seq"]
            await ws.send(json.dumps({"action": "unsubscribe", "symbols": ["NOVA"]}))
            assert (await recv_type(ws, "unsubscribed"))["symbols"] == ["BNKR"]
            for _ in range(3):
                frame = await recv(ws)
                assert {t["symbol"] for t in frame["data"]} == {"BNKR"}

    asyncio.run(scenario())


def test_bad_messages_get_error_frames_and_the_connection_goes_on(server: ServerProcess) -> None:
    async def scenario() -> None:
        async with connect(server.ws_url) as ws:
            cases: list[tuple[str | bytes, str]] = [
                ("{not json", "bad_json"),
                ("[1, 2]", "bad_message"),
                (json.dumps({"action": "dance"}), "unknown_action"),
                (json.dumps({"action": "subscribe", "symbols": ["NOVA", "ZZZZ"]}), "unknown_symbols"),
                (json.dumps({"action": "subscribe", "symbols": "NOVA" * 0}), "bad_symbols"),
                (json.dumps({"action": "subscribe", "symbols": [1, 2]}), "bad_symbols"),
                (json.dumps({"action": "replay", "from_seq": "x"}), "bad_from_seq"),
                (b"\x00\x01binary", "bad_frame"),
            ]
            for message, code in cases:
                await ws.send(message)
                error = await recv(ws)
                assert (error["type"], error["code"]) == ("error", code), (message, error)
                assert error["message"]
            await ws.send(json.dumps({"action": "ping", "id": 7}))
            pong = await recv(ws)
            assert pong["type"] == "pong"
            assert pong["id"] == 7
            await ws.send(json.dumps({"action": "subscribe", "symbols": ["UTIL"]}))
            assert (await recv(ws))["type"] == "subscribed"

    asyncio.run(scenario())


def test_replay_fills_a_gap_from_the_ring_and_history(server: ServerProcess) -> None:
    async def scenario() -> None:
        async with connect(server.ws_url) as ws:
            await ws.send(json.dumps({"action": "subscribe", "symbols": ["AERO"]}))
            await recv_type(ws, "snapshot")
            await asyncio.sleep(1.0)
            await ws.send(json.dumps({"action": "replay", "from_seq": 1}))
            replayed: list[dict[str, Any]] = []
            while True:
                message = await recv(ws)
                if message["type"] == "replay":
                    replayed.extend(message["data"])
                elif message["type"] == "replay_end":
                    break
            seqs = [t["seq"] for t in replayed]
            assert seqs[0] == 1
            assert seqs == list(range(1, len(seqs) + 1))
            assert all(t["symbol"] == "AERO" for t in replayed)

    asyncio.run(scenario())


def test_replay_a_stored_range_with_pause_and_resume(server: ServerProcess) -> None:
    import httpx

    time.sleep(2.0)
    stored = httpx.get(server.url + "/history/ticks", params={"symbol": "MEDI", "limit": 20}).json()["ticks"]

    async def scenario() -> None:
        async with connect(server.ws_url) as ws:
            await ws.send(
                json.dumps(
                    {"action": "replay_range", "symbols": ["MEDI"], "start": stored[0]["time"],
                     "end": stored[-1]["time"], "speed": 1}
                )
            )  # fmt: skip
            first = await recv(ws)
            assert first["type"] == "replay"
            await ws.send(json.dumps({"action": "pause"}))
            assert (await recv_type(ws, "replay_paused"))["type"] == "replay_paused"
            with pytest.raises(TimeoutError):  # paused: nothing comes
                await asyncio.wait_for(ws.recv(), 0.6)
            await ws.send(json.dumps({"action": "resume"}))
            got = list(first["data"])
            while True:
                message = await recv(ws, 10)
                if message["type"] == "replay":
                    got.extend(message["data"])
                elif message["type"] == "replay_end":
                    assert message["ticks"] == len(got)
                    break
            assert got == stored[:-1]  # [start, end): the live schema, in order
            await ws.send(json.dumps({"action": "pause"}))
            assert (await recv(ws))["code"] == "no_replay"

    asyncio.run(scenario())


class RecordingSocket:
    """The two calls a Session's send side makes, recording every frame it sends."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []

    async def send_text(self, text: str) -> None:
        self.frames.append(json.loads(text))


def ticks_of(symbols: str, step: int) -> TickBatch:
    """One step of `symbols` (one letter each), gseq numbering them in order."""
    n = len(symbols)
    ticks = [
        Tick(s, step + 1, n * step + i + 1, step, 10.0, 9.9, 10.1, 1, 0.2) for i, s in enumerate(symbols)
    ]
    return TickBatch(step=step, ticks=ticks)


def session_frames(symbols: str, script: Callable[[Session, Hub], Awaitable[None]]) -> list[dict[str, Any]]:
    """Run `script` against a Session whose send loop is running, then let it send what is left; the
    frames it sent. No server: the test decides exactly when steps are published."""

    async def scenario() -> list[dict[str, Any]]:
        hub, ws = Hub(), RecordingSocket()
        session = Session(
            cast(Any, ws), hub, cast(Any, None), list(symbols), max_symbols=10, shutdown=asyncio.Event()
        )
        sender = asyncio.create_task(session._send_loop())
        await asyncio.sleep(0)  # the send loop waits for something to send
        await script(session, hub)
        for _ in range(3):
            await asyncio.sleep(0)
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        return ws.frames

    return asyncio.run(scenario())


def test_a_batch_queued_before_a_subscribe_is_not_sent_again_after_the_snapshot() -> None:
    # The race a real server hit now and then: a batch is queued while the connection watches
    # nothing, the subscribe's snapshot already holds that batch's ticks, and the send loop then sent
    # the same batch for the new symbols too (the snapshot's seq, then the same seq again).
    async def script(session: Session, hub: Hub) -> None:
        hub.publish(ticks_of("AB", 0))  # queued for the connection (no symbols yet); the loop is woken
        await session._subscribe(frozenset({"A"}))  # before the send loop has run
        for step in (1, 2):
            await asyncio.sleep(0)
            hub.publish(ticks_of("AB", step))

    frames = session_frames("AB", script)
    assert [f["type"] for f in frames] == ["subscribed", "snapshot", "ticks", "ticks"]
    seqs = [t["seq"] for f in frames if f["type"] in ("snapshot", "ticks") for t in f["data"]]
    assert seqs == [1, 2, 3]  # the snapshot's tick, then each later one once


def test_a_replay_does_not_repeat_what_was_queued_for_the_live_stream() -> None:
    async def script(session: Session, hub: Hub) -> None:
        await session._subscribe(frozenset({"A"}))
        for step in range(3):
            hub.publish(ticks_of("A", step))
        await session._replay({"from_seq": 1})  # before the send loop has sent the queued steps
        hub.publish(ticks_of("A", 3))

    frames = session_frames("A", script)
    gseqs = [t["gseq"] for f in frames if f["type"] in ("replay", "ticks") for t in f["data"]]
    assert gseqs == [1, 2, 3, 4]  # replayed 1-3 (from the ring), then live from 4, each once
    assert [f["type"] for f in frames][-2:] == ["replay_end", "ticks"]
