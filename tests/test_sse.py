"""SSE against a real server: ticks flow in order, resume has no gap and no duplicate, bad input is 4xx."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, cast

import httpx
import pytest
from serverproc import ServerFactory, ServerProcess

from marketfeed.streams.hub import Hub
from marketfeed.streams.sse import EventStream
from marketfeed.streams.wire import HTTP_EXTENSION
from marketfeed.ticks import Tick, TickBatch


def events(response: httpx.Response) -> Iterator[tuple[str, str, str]]:
    """(event, id, data) of each SSE event; comments and the retry hint are skipped."""
    event, eid, data = "message", "", list[str]()
    for line in response.iter_lines():
        if not line:
            if data:
                yield event, eid, "\n".join(data)
            event, eid, data = "message", "", list[str]()
        elif line.startswith(":") or line.startswith("retry:"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "id":
                eid = value
            elif name == "data":
                data.append(value)


def read_ticks(url: str, n: int, *, headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    ticks: list[dict[str, Any]] = []
    with httpx.stream("GET", url, headers=headers, timeout=10.0) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for event, eid, data in events(response):
            assert event == "tick"
            tick = json.loads(data)
            assert int(eid) == tick["gseq"]
            ticks.append(tick)
            if len(ticks) == n:
                break
    return ticks


def assert_continuous(ticks: list[dict[str, Any]]) -> None:
    """gseq strictly increasing; each symbol's seq goes up by exactly one."""
    gseqs = [t["gseq"] for t in ticks]
    assert gseqs == sorted(set(gseqs)), "gseq must strictly increase with no duplicate"
    last: dict[str, int] = {}
    for t in ticks:
        if t["symbol"] in last:
            assert t["seq"] == last[t["symbol"]] + 1, f"gap or duplicate in {t['symbol']}: {t}"
        last[t["symbol"]] = t["seq"]


def test_ticks_flow_in_order_for_the_requested_symbols(server: ServerProcess) -> None:
    ticks = read_ticks(server.url + "/stream/sse?symbols=NOVA,QBIT", 40)
    assert {t["symbol"] for t in ticks} == {"NOVA", "QBIT"}
    assert_continuous(ticks)
    for t in ticks:
        assert t["bid"] < t["ask"]
        assert t["bid"] <= t["price"] <= t["ask"]
        assert t["size"] >= 1
        assert t["vol"] > 0


def test_resume_after_disconnect_has_no_gap_and_no_duplicate(server: ServerProcess) -> None:
    url = server.url + "/stream/sse?symbols=NOVA,OILX"
    first = read_ticks(url, 10)
    time.sleep(1.0)  # the market moves on while the client is away (20 steps)
    second = read_ticks(url, 60, headers={"Last-Event-ID": str(first[-1]["gseq"])})
    assert second[0]["gseq"] > first[-1]["gseq"]
    assert_continuous(first + second)


def test_resume_across_a_server_restart(server: ServerProcess) -> None:
    url = server.url + "/stream/sse?symbols=CHIP"
    first = read_ticks(url, 5)
    time.sleep(0.5)
    server.stop()
    server.start()
    # The gap spans the ticks made before the stop (now only in the history file) and those after.
    second = read_ticks(url, 30, headers={"Last-Event-ID": str(first[-1]["gseq"])})
    assert_continuous(first + second)


def test_resume_from_history_when_the_ring_no_longer_reaches(server_factory: ServerFactory) -> None:
    server = server_factory(ring_ticks=1000, tick_rate=100).start()  # 1,000 ticks = 2.5 s of market
    url = server.url + "/stream/sse?symbols=GENE"
    first = read_ticks(url, 3)
    time.sleep(4.0)
    second = read_ticks(url, 500, headers={"Last-Event-ID": str(first[-1]["gseq"])})
    assert_continuous(first + second)


def test_bad_requests_get_a_clear_4xx(server: ServerProcess) -> None:
    r = httpx.get(server.url + "/stream/sse?symbols=NOVA,NOPE")
    assert r.status_code == 404
    assert "NOPE" in r.json()["detail"]
    r = httpx.get(server.url + "/stream/sse", headers={"Last-Event-ID": "12; DROP TABLE ticks"})
    assert r.status_code == 400
    assert "Last-Event-ID" in r.json()["detail"]


def test_a_client_that_never_reads_does_not_delay_another(server_factory: ServerFactory) -> None:
    server = server_factory(tick_rate=50, client_queue=8, slow_client_seconds=2).start()
    stalled = socket.create_connection(("127.0.0.1", server.port))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(b"GET /stream/sse HTTP/1.1\r\nHost: x\r\n\r\n")  # and then never reads
    try:
        time.sleep(1.0)
        start = time.time_ns()
        ticks = read_ticks(server.url + "/stream/sse", 20 * 50 * 3)  # 3 s of the whole market
        elapsed = (time.time_ns() - start) / 1e9
        lags = sorted((time.time_ns() - t["ts"]) / 1e9 for t in ticks[-200:])
        assert_continuous(ticks)
        assert elapsed < 5.0, f"3 s of ticks took {elapsed:.1f} s to arrive"
        assert lags[-1] < 1.0, f"the reading client fell {lags[-1]:.2f} s behind"
        metrics = httpx.get(server.url + "/metrics").text
        assert "marketfeed_clients" in metrics
    finally:
        stalled.close()


def test_replay_streams_a_stored_range_at_speed(server: ServerProcess) -> None:
    time.sleep(2.0)
    stored = httpx.get(server.url + "/history/ticks", params={"symbol": "NOVA", "limit": 30}).json()["ticks"]
    start, end = stored[0]["time"], stored[-1]["time"]
    url = server.url + f"/replay/sse?symbols=NOVA&start={start}&end={end}&speed=2"
    began = time.monotonic()
    replayed = read_ticks(url, len(stored) - 1)
    elapsed = time.monotonic() - began
    assert replayed == stored[:-1]  # the live schema, the same ticks, in order
    span = (stored[-2]["ts"] - stored[0]["ts"]) / 1e9
    assert span / 2 * 0.8 < elapsed < span / 2 + 2.0  # paced at twice real time


def test_poisson_arrivals_stream_gap_free_seq_across_a_restart(server_factory: ServerFactory) -> None:
    # 20 steps a second of 0.05 s: a symbol trades in ~1 step of 7, so most steps emit few ticks.
    server = server_factory(arrivals="poisson", trade_rate=3.0).start()
    model = httpx.get(server.url + "/model").json()
    assert model["ticks"]["arrivals"] == "poisson"
    assert model["ticks"]["trade_rate"] == 3.0
    url = server.url + "/stream/sse"
    first = read_ticks(url, 60)
    server.stop()
    server.start()  # the tick counters come back with the engine state from the history file
    second = read_ticks(url, 120, headers={"Last-Event-ID": str(first[-1]["gseq"])})
    ticks = first + second
    assert_continuous(ticks)
    n = len(model["assets"])
    steps = {(t["gseq"] - 1) // n for t in ticks}
    per_step = len(ticks) / (max(steps) - min(steps) + 1)
    assert per_step < n / 3, "irregular arrivals: far fewer ticks than symbols per step"


def sse_direct_writes(server: ServerProcess) -> float:
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if line.startswith("marketfeed_direct_writes_total "):
            return float(line.split()[1])
    raise AssertionError("no marketfeed_direct_writes_total in /metrics")


def test_a_real_server_writes_live_chunks_directly(server: ServerProcess) -> None:
    before = sse_direct_writes(server)
    assert_continuous(read_ticks(server.url + "/stream/sse?symbols=NOVA", 20))
    assert sse_direct_writes(server) > before


def stream_output(
    script: Callable[[Hub, list[bool]], Awaitable[None]], *, direct: bool, ping_seconds: float = 60.0
) -> str:
    """(event, id) of everything an EventStream wrote, through ASGI and, with `direct`, through a
    fake of the direct write (`streams/wire.py`), in the order it was written; `script` publishes,
    and sets the one flag to make the direct write refuse, as over a high-water mark."""
    out: list[bytes] = []
    refuse = [False]

    def write(body: bytes) -> bool:
        if refuse[0]:
            return False
        out.append(body)
        return True

    async def scenario() -> None:
        hub, shutdown, never = Hub(), asyncio.Event(), asyncio.Event()
        stream = EventStream(
            hub, cast(Any, None), frozenset({"A"}), None, ping_seconds=ping_seconds, shutdown=shutdown
        )
        scope = {"type": "http", "extensions": {HTTP_EXTENSION: {"write": write}} if direct else {}}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                out.append(message["body"])

        async def receive() -> dict[str, Any]:
            await never.wait()
            return {"type": "http.disconnect"}

        task = asyncio.create_task(stream(cast(Any, scope), cast(Any, receive), cast(Any, send)))
        for _ in range(3):
            await asyncio.sleep(0)  # the stream is live: it waits for the hub
        await script(hub, refuse)
        for _ in range(5):
            await asyncio.sleep(0)
        shutdown.set()
        await task

    asyncio.run(scenario())
    return b"".join(out).decode()


def sse_events(text: str) -> list[tuple[str, str]]:
    found = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in fields:
            found.append((fields["event"], fields.get("id", "")))
    return found


def one_step(step: int) -> TickBatch:
    return TickBatch(step=step, ticks=[Tick(s, step + 1, 2 * step + i + 1, step, 10.0, 9.9, 10.1, 1, 0.2)
                                       for i, s in enumerate("AB")])  # fmt: skip


@pytest.mark.parametrize("direct", [False, True], ids=["asgi", "direct"])
def test_an_event_stream_writes_each_tick_once_in_order_whichever_path_it_takes(direct: bool) -> None:
    async def script(hub: Hub, refuse: list[bool]) -> None:
        hub.publish(one_step(0))
        refuse[0] = True  # over the high-water mark: these two are queued
        hub.publish(one_step(1))
        hub.announce(b'{"id":1}')
        hub.publish(one_step(2))
        refuse[0] = False
        hub.publish(one_step(3))  # still behind the queue
        for _ in range(3):
            await asyncio.sleep(0)
        hub.publish(one_step(4))  # nothing queued: direct again

    found = sse_events(stream_output(script, direct=direct))
    # A's gseq in step k is 2k + 1. A notice goes out ahead of every tick still queued, so before step
    # 0 when all of them wait in the queue, and after it when step 0 was written directly.
    ticks = [("tick", str(2 * k + 1)) for k in range(5)]
    expected = [("scenario", ""), *ticks] if not direct else [ticks[0], ("scenario", ""), *ticks[1:]]
    assert found == expected


def test_a_stream_fed_directly_sends_no_keep_alive_and_an_idle_one_does() -> None:
    async def script(hub: Hub, refuse: list[bool]) -> None:
        for step in range(15):  # 0.3 s of steps, every one written directly
            hub.publish(one_step(step))
            await asyncio.sleep(0.02)

    busy = stream_output(script, direct=True, ping_seconds=0.1)
    assert len(sse_events(busy)) == 15
    assert ": ping" not in busy

    async def idle(hub: Hub, refuse: list[bool]) -> None:
        await asyncio.sleep(0.3)

    assert ": ping" in stream_output(idle, direct=True, ping_seconds=0.1)
