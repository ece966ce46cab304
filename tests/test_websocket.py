"""The WebSocket protocol against a real server, with the `websockets` client bots use, and the
session's ordering of snapshots and live frames on its own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import httpx
import pytest
from serverproc import ServerFactory, ServerProcess
from websockets.asyncio.client import ClientConnection, connect
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from marketfeed.streams.hub import Hub
from marketfeed.streams.websocket import Session
from marketfeed.streams.wire import EXTENSION
from marketfeed.ticks import Tick, TickBatch, text_frame


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
    """What a Session's send side uses, recording every frame it sends. `direct`: its scope offers
    the direct write of `streams/wire.py`, which takes frames while `ready` (a transport not over its
    high-water mark) and refuses them otherwise; `direct_frames` counts what it took."""

    def __init__(self, *, direct: bool = False) -> None:
        self.frames: list[dict[str, Any]] = []
        self.ready = True
        self.direct_frames = 0
        self.scope: dict[str, Any] = {"extensions": {EXTENSION: {"write": self.write}} if direct else {}}

    async def send_text(self, text: str) -> None:
        self.frames.append(json.loads(text))

    def write(self, wire: bytes) -> bool:
        if not self.ready:
            return False
        frame = parse_frame(wire)
        assert frame.opcode is Opcode.TEXT
        assert frame.fin
        self.frames.append(json.loads(bytes(frame.data)))
        self.direct_frames += 1
        return True


def parse_frame(wire: bytes) -> Frame:
    """`wire` read back by the `websockets` library's own frame parser, which must use all of it."""
    reader = StreamReader()
    reader.feed_data(wire)
    parser = Frame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as done:
        assert not reader.buffer, "bytes after the frame"
        return cast(Frame, done.value)
    raise AssertionError("the frame is incomplete")


@pytest.mark.parametrize("size", [0, 125, 126, 65_535, 65_536, 200_000])
def test_a_text_frame_is_one_whole_unmasked_frame_at_every_length_encoding(size: int) -> None:
    payload = bytes(range(97, 123)) * (size // 26) + b"z" * (size % 26)
    frame = parse_frame(text_frame(payload))
    assert (frame.opcode, frame.fin, frame.data) == (Opcode.TEXT, True, payload)


def ticks_of(symbols: str, step: int) -> TickBatch:
    """One step of `symbols` (one letter each), gseq numbering them in order."""
    n = len(symbols)
    ticks = [
        Tick(s, step + 1, n * step + i + 1, step, 10.0, 9.9, 10.1, 1, 0.2) for i, s in enumerate(symbols)
    ]
    return TickBatch(step=step, ticks=ticks)


@pytest.fixture(params=[False, True], ids=["asgi", "direct"])
def direct(request: pytest.FixtureRequest) -> bool:
    """Each Session test twice: every frame through ASGI, and live frames written from `publish`."""
    return cast(bool, request.param)


def session_frames(
    symbols: str, script: Callable[[Session, Hub], Awaitable[None]], *, direct: bool = False,
    ws: RecordingSocket | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Run `script` against a Session whose send loop is running, then let it send what is left; the
    frames it sent. No server: the test decides exactly when steps are published."""

    async def scenario() -> list[dict[str, Any]]:
        hub = Hub()
        socket = ws or RecordingSocket(direct=direct)
        session = Session(
            cast(Any, socket), hub, cast(Any, None), list(symbols), max_symbols=10, shutdown=asyncio.Event()
        )
        sender = asyncio.create_task(session._send_loop())
        await asyncio.sleep(0)  # the send loop waits for something to send
        await script(session, hub)
        for _ in range(3):
            await asyncio.sleep(0)
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        return socket.frames

    return asyncio.run(scenario())


def test_a_batch_queued_before_a_subscribe_is_not_sent_again_after_the_snapshot(direct: bool) -> None:
    # The race a real server hit now and then: a batch is queued while the connection watches
    # nothing, the subscribe's snapshot already holds that batch's ticks, and the send loop then sent
    # the same batch for the new symbols too (the snapshot's seq, then the same seq again).
    async def script(session: Session, hub: Hub) -> None:
        hub.publish(ticks_of("AB", 0))  # queued for the connection (no symbols yet); the loop is woken
        await session._subscribe(frozenset({"A"}))  # before the send loop has run
        for step in (1, 2):
            await asyncio.sleep(0)
            hub.publish(ticks_of("AB", step))

    frames = session_frames("AB", script, direct=direct)
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


def test_a_replay_after_live_frames_sent_directly_covers_what_it_asked_for() -> None:
    # Written from publish, the three steps are out before the replay is asked for, so nothing is
    # queued for it to take: it sends 1-3 as asked (the client merges by gseq), then live goes on.
    async def script(session: Session, hub: Hub) -> None:
        await session._subscribe(frozenset({"A"}))
        for step in range(3):
            hub.publish(ticks_of("A", step))
        await session._replay({"from_seq": 1})
        hub.publish(ticks_of("A", 3))

    frames = session_frames("A", script, direct=True)
    sent = [(f["type"], [t["gseq"] for t in f.get("data", [])]) for f in frames[2:]]
    assert sent == [("ticks", [1]), ("ticks", [2]), ("ticks", [3]), ("replay", [1]), ("replay", [2]),
                    ("replay", [3]), ("replay_end", []), ("ticks", [4])]  # fmt: skip


def test_live_frames_go_direct_while_the_client_keeps_up_and_queue_in_order_while_it_does_not() -> None:
    ws = RecordingSocket(direct=True)

    async def script(session: Session, hub: Hub) -> None:
        await session._subscribe(frozenset({"A"}))
        hub.publish(ticks_of("A", 0))  # written from publish itself
        assert ws.direct_frames == 1
        ws.ready = False  # the transport is over its high-water mark: the next two are queued
        hub.publish(ticks_of("A", 1))
        hub.publish(ticks_of("A", 2))
        ws.ready = True
        hub.publish(ticks_of("A", 3))  # still queued: two are ahead of it
        assert ws.direct_frames == 1
        for _ in range(3):
            await asyncio.sleep(0)  # the send loop sends the three through ASGI
        hub.publish(ticks_of("A", 4))  # nothing queued any more: direct again
        assert ws.direct_frames == 2
        assert hub.sent_now == 2

    frames = session_frames("A", script, ws=ws)
    assert [f["type"] for f in frames] == ["subscribed", "snapshot", *["ticks"] * 5]
    assert [f["data"][0]["seq"] for f in frames[2:]] == [1, 2, 3, 4, 5]


def test_a_scenario_notice_goes_out_before_the_ticks_published_after_it(direct: bool) -> None:
    async def script(session: Session, hub: Hub) -> None:
        await session._subscribe(frozenset({"A"}))
        hub.announce(b'{"id":1}')
        hub.publish(ticks_of("A", 0))  # behind the notice, so not direct
        for _ in range(3):
            await asyncio.sleep(0)
        hub.publish(ticks_of("A", 1))

    frames = session_frames("A", script, direct=direct)
    assert [f["type"] for f in frames] == ["subscribed", "snapshot", "scenario", "ticks", "ticks"]


def direct_frames(server: ServerProcess) -> float:
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if line.startswith("marketfeed_direct_writes_total "):
            return float(line.split()[1])
    raise AssertionError("no marketfeed_direct_writes_total in /metrics")


@pytest.mark.parametrize("compression", [False, True], ids=["plain", "permessage-deflate"])
def test_a_real_server_writes_live_frames_directly_unless_compression_was_negotiated(
    server_factory: ServerFactory, compression: bool
) -> None:
    server = server_factory(ws_compression=compression).start()

    async def scenario() -> None:
        async with connect(server.ws_url, compression="deflate" if compression else None) as ws:
            await ws.send(json.dumps({"action": "subscribe", "symbols": ["NOVA"]}))
            await recv_type(ws, "snapshot")
            seq = None
            for _ in range(5):
                frame = await recv(ws)
                assert frame["type"] == "ticks"
                assert [t["symbol"] for t in frame["data"]] == ["NOVA"]
                seq = frame["data"][0]["seq"] if seq is None else seq + 1
                assert frame["data"][0]["seq"] == seq

    asyncio.run(scenario())
    assert (direct_frames(server) > 0) is not compression
