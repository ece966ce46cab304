"""The Python client against real servers: streams that survive a restart, history as DataFrames."""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from serverproc import ServerFactory, ServerProcess
from websockets.asyncio.client import ClientConnection

from marketfeed.client import Stream, StreamError, Transport, history
from marketfeed.engine import Universe
from marketfeed.ticks import Tick

TRANSPORTS: list[Transport] = ["ws", "sse"]


def assert_once_in_order(ticks: list[Tick]) -> None:
    """Strictly increasing gseq (no duplicate) and, per symbol, seq 1 apart (no loss)."""
    gseqs = [t.gseq for t in ticks]
    assert gseqs == sorted(set(gseqs)), "duplicated or out-of-order ticks"
    last: dict[str, int] = {}
    for t in ticks:
        if t.symbol in last:
            assert t.seq == last[t.symbol] + 1, f"{t.symbol}: seq {last[t.symbol]} -> {t.seq}"
        last[t.symbol] = t.seq


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_stream_yields_ticks(server: ServerProcess, transport: Transport) -> None:
    async def scenario() -> list[Tick]:
        got: list[Tick] = []
        async with Stream(server.url, symbols=["nova", "QBIT"], transport=transport) as stream:
            async for tick in stream:
                got.append(tick)
                if len(got) == 30:
                    break
        return got

    ticks = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert all(isinstance(t, Tick) for t in ticks)
    assert {t.symbol for t in ticks} == {"NOVA", "QBIT"}
    assert_once_in_order(ticks)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_restart_mid_stream_loses_and_duplicates_nothing(
    server: ServerProcess, transport: Transport
) -> None:
    async def scenario() -> tuple[list[Tick], Stream]:
        got: list[Tick] = []
        stream = Stream(
            server.url,
            symbols=["NOVA", "OILX", "UTIL"],
            transport=transport,
            backoff_initial=0.1,
            backoff_max=1.0,
        )

        def bounce() -> None:
            server.stop()  # graceful: the streams end, the history is flushed
            server.start()
            time.sleep(1.0)  # the new server runs on while the client is not reading: ticks to replay

        async with stream:
            async for tick in stream:
                got.append(tick)
                if len(got) == 30:
                    # The client is suspended at its yield meanwhile: it notices the closed connection
                    # only when iterated again, so ticks of both servers are missed until it resumes.
                    await asyncio.to_thread(bounce)
                if len(got) >= 30 + 120:
                    break
        return got, stream

    ticks, stream = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert stream.connections >= 2, "the stream never reconnected"
    assert server.starts == 2
    assert_once_in_order(ticks)
    # And they are the ticks the server stored, price for price, across the restart.
    mine = [t for t in ticks if t.symbol == "OILX"]
    deadline = time.monotonic() + 10
    while True:  # the newest ticks reach the store a flush interval after they were streamed
        stored = httpx.get(
            server.url + "/history/ticks", params={"symbol": "OILX", "limit": 10_000}, timeout=10
        ).json()["ticks"]
        if (stored and stored[-1]["gseq"] >= mine[-1].gseq) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    by_gseq = {t["gseq"]: t for t in stored}
    assert len(mine) > 20
    for t in mine:
        assert t.gseq in by_gseq
        assert (t.seq, t.price, t.bid, t.ask, t.size) == tuple(
            by_gseq[t.gseq][k] for k in ("seq", "price", "bid", "ask", "size")
        )


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_consumer_too_slow_for_the_server_still_sees_every_tick(
    server_factory: ServerFactory, tmp_path: Path, transport: Transport
) -> None:
    # 200 symbols at 50 steps a second (about 2 MB/s): a consumer that pauses for seconds fills the
    # socket buffers, and the server conflates its backlog to the newest tick per symbol. The client
    # sees the seq jump and has the server fill it (replay or Last-Event-ID) before going on.
    data = Universe.default().to_dict()
    data["assets"] = [dict(data["assets"][i % 20], symbol=f"S{i:03d}") for i in range(200)]
    universe = tmp_path / "universe.json"
    universe.write_text(json.dumps(data))
    server = server_factory(tick_rate=50, client_queue=4, slow_client_seconds=60, universe=universe).start()

    async def scenario() -> tuple[list[Tick], Stream]:
        got: list[Tick] = []
        resynced_at = 0
        async with Stream(server.url, transport=transport) as stream:
            async for tick in stream:
                got.append(tick)
                if len(got) == 400:
                    await asyncio.sleep(6)  # not reading
                if stream.resyncs and not resynced_at:
                    resynced_at = len(got)  # the backlog in the socket is read: the jump came
                if resynced_at and len(got) >= resynced_at + 50 * 200:
                    break
        return got, stream

    ticks, stream = asyncio.run(asyncio.wait_for(scenario(), 90))
    metrics = httpx.get(server.url + "/metrics", timeout=10).text
    conflated = re.search(r"^marketfeed_queue_conflated_ticks_total (\d+)", metrics, flags=re.MULTILINE)
    assert conflated is not None
    assert int(conflated.group(1)) > 0, "the server never conflated: the test did not test anything"
    assert stream.resyncs >= 1
    assert stream.gaps == 0
    assert_once_in_order(ticks)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_unknown_symbol_fails_at_once_instead_of_retrying(
    server: ServerProcess, transport: Transport
) -> None:
    async def scenario() -> None:
        async for _ in Stream(server.url, symbols=["NOPE"], transport=transport, max_retries=0):
            pass

    with pytest.raises(StreamError, match="NOPE"):
        asyncio.run(asyncio.wait_for(scenario(), 15))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_api_keys(server_factory: ServerFactory, transport: Transport) -> None:
    server = server_factory(api_keys="k-123").start()

    async def first(key: str | None) -> Tick:
        async with Stream(server.url, symbols=["NOVA"], transport=transport, api_key=key) as stream:
            async for tick in stream:
                return tick
        raise AssertionError("the stream ended")

    assert asyncio.run(asyncio.wait_for(first("k-123"), 15)).symbol == "NOVA"
    with pytest.raises(StreamError, match=r"key|401"):
        asyncio.run(asyncio.wait_for(first("wrong"), 15))  # refused for good, not retried
    assert "gseq" in history(server.url, "NOVA", api_key="k-123").columns
    with pytest.raises(ValueError, match="401"):
        history(server.url, "NOVA")


def test_a_refused_key_fails_at_once_even_when_the_close_comes_before_the_subscribe(
    server_factory: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server closes a refused WebSocket right after accepting it. A client slowed down (a loaded
    # machine) has the close in hand before it sends its subscribe, and that send fails: once, that
    # was taken for a lost connection and retried with backoff instead of failing.
    server = server_factory(api_keys="k-123").start()
    send = ClientConnection.send

    async def late_send(self: ClientConnection, *args: Any, **kwargs: Any) -> None:
        await asyncio.sleep(0.5)
        await send(self, *args, **kwargs)

    monkeypatch.setattr(ClientConnection, "send", late_send)

    async def scenario() -> None:
        async for _ in Stream(server.url, symbols=["NOVA"], transport="ws", api_key="wrong"):
            pass

    with pytest.raises(StreamError, match="key"):
        asyncio.run(asyncio.wait_for(scenario(), 5))


def test_a_server_that_never_comes_gives_up_after_max_retries() -> None:
    async def scenario() -> None:
        stream = Stream("http://127.0.0.1:9", symbols=["NOVA"], backoff_initial=0.01, max_retries=2)
        async for _ in stream:
            pass

    with pytest.raises(ConnectionError, match="2 reconnect attempts"):
        asyncio.run(asyncio.wait_for(scenario(), 15))


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    stream = Stream("http://127.0.0.1:8000", backoff_initial=0.5, backoff_max=8.0)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (5, 8.0), (40, 8.0)]:
        delays = [stream._delay(attempt) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling / 4  # jittered, not one fixed value


def raw_tick_pages(url: str, params: dict[str, str | int]) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    cursor = None
    while True:
        page = httpx.get(
            url + "/history/ticks", params={**params, **({"cursor": cursor} if cursor else {})}, timeout=10
        ).json()
        rows.extend(page["ticks"])
        cursor = page["next_cursor"]
        if cursor is None:
            return rows


def stored_range(server: ServerProcess, seconds: float) -> tuple[str, str]:
    """A closed time range holding `seconds` of ticks, already flushed to the history store."""
    start = datetime.now(UTC).isoformat()
    time.sleep(seconds)
    end = datetime.now(UTC).isoformat()
    time.sleep(0.5)  # past the flush interval: nothing in the range is still on its way to the store
    return start, end


def test_history_paging_equals_the_raw_pages(server: ServerProcess) -> None:
    start, end = stored_range(server, 2.5)
    frame = history(server.url, "NOVA", start, end, page_size=7)
    raw = raw_tick_pages(server.url, {"symbol": "NOVA", "start": start, "end": end, "limit": 7})
    assert len(raw) > 3 * 7  # several pages
    assert list(frame.columns) == [
        "symbol",
        "seq",
        "gseq",
        "ts",
        "time",
        "price",
        "bid",
        "ask",
        "size",
        "vol",
    ]
    assert isinstance(frame["time"].dtype, pd.DatetimeTZDtype)
    assert frame["gseq"].tolist() == [r["gseq"] for r in raw]
    for name in ("symbol", "seq", "ts", "price", "bid", "ask", "size", "vol"):
        assert frame[name].tolist() == [r[name] for r in raw], name
    assert (frame["time"] == pd.to_datetime(frame["ts"], unit="ns", utc=True)).all()
    assert frame["time"].iloc[0] >= pd.Timestamp(start)
    assert frame["time"].iloc[-1] < pd.Timestamp(end)


def test_candles_dataframe(server: ServerProcess) -> None:
    start, end = stored_range(server, 4.0)
    frame = history(server.url, "QBIT", start, end, interval="1s", page_size=2)  # pages of two candles
    raw = httpx.get(
        server.url + "/history/candles",
        params={"symbol": "QBIT", "interval": "1s", "start": start, "end": end, "limit": 1000},
        timeout=10,
    ).json()["candles"]
    assert len(raw) >= 4
    assert list(frame.columns) == [
        "start",
        "time",
        "open",
        "high",
        "low",
        "close",
        "volume",
        "trades",
        "vwap",
    ]
    assert frame["start"].tolist() == [c["start"] for c in raw]
    for name in ("open", "high", "low", "close", "volume", "trades", "vwap"):
        assert frame[name].tolist() == [c[name] for c in raw], name
    assert (frame["time"] == pd.to_datetime(frame["start"], unit="ns", utc=True)).all()
    assert (frame["low"] <= frame[["open", "close"]].min(axis=1)).all()
    assert (frame["high"] >= frame[["open", "close"]].max(axis=1)).all()


def test_history_rejects_what_the_server_rejects(server: ServerProcess) -> None:
    with pytest.raises(ValueError, match="404"):
        history(server.url, "NOPE")
    with pytest.raises(ValueError, match="interval"):
        history(server.url, "NOVA", interval="7m")
