"""A client for bots and notebooks (the `client` extra: httpx, websockets, pandas).

    async for tick in Stream("http://127.0.0.1:8000", symbols=["NOVA", "QBIT"]):
        ...                                   # every tick once, in order, across reconnects

    frame = history("http://127.0.0.1:8000", "NOVA", start="2026-11-25T10:00:00Z")
    bars = history("http://127.0.0.1:8000", "NOVA", interval="1m")

The stream reconnects with exponential backoff (with jitter, capped) and resumes from the last global
sequence number it delivered: over WebSocket with a `replay` request, over SSE with `Last-Event-ID`.
It drops anything it has already delivered, so a bot sees each tick exactly once.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import httpx

from marketfeed.ticks import Tick

if TYPE_CHECKING:
    import pandas as pd

Transport = Literal["ws", "sse"]


def _retryable() -> tuple[type[BaseException], ...]:
    """What a restarting server or a network blip raises: worth a reconnect."""
    errors: tuple[type[BaseException], ...] = (OSError, httpx.TransportError, ConnectionError, TimeoutError)
    try:
        from websockets.exceptions import WebSocketException
    except ImportError:  # SSE-only installs
        return errors
    return (*errors, WebSocketException)


class Stream:
    def __init__(
        self,
        url: str,
        symbols: Iterable[str] = ("*",),
        *,
        transport: Transport = "ws",
        api_key: str | None = None,
        max_backoff: float = 30.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.symbols = list(symbols)
        self.transport = transport
        self.api_key = api_key
        self.max_backoff = max_backoff
        self.last_gseq = 0  #: the newest tick delivered; a reconnect resumes after it
        self.reconnects = 0

    def __aiter__(self) -> AsyncIterator[Tick]:
        return self._run()

    async def _run(self) -> AsyncIterator[Tick]:
        backoff = 0.25
        connect = self._websocket if self.transport == "ws" else self._sse
        while True:
            try:
                async for tick in connect():
                    backoff = 0.25
                    if tick.gseq > self.last_gseq:
                        self.last_gseq = tick.gseq
                        yield tick
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code < 500:
                    raise  # a bad request or key: retrying cannot help
            except _retryable():
                pass
            self.reconnects += 1
            await asyncio.sleep(backoff * (0.5 + random.random()))  # jitter: no synchronized storms
            backoff = min(backoff * 2, self.max_backoff)

    async def _websocket(self) -> AsyncIterator[Tick]:
        from websockets.asyncio.client import connect

        ws_url = self.url.replace("http://", "ws://").replace("https://", "wss://") + "/stream/ws"
        if self.api_key:
            ws_url += f"?api_key={self.api_key}"
        async with connect(ws_url, max_size=2**24) as ws:
            await ws.send(json.dumps({"action": "subscribe", "symbols": self.symbols}))
            resuming = self.last_gseq > 0
            if resuming:
                await ws.send(json.dumps({"action": "replay", "from_seq": self.last_gseq + 1}))
            held: list[Tick] = []
            async for raw in ws:
                message = json.loads(raw)
                kind = message.get("type")
                if kind == "error":
                    raise ConnectionError(f"server refused: {message.get('message')}")
                if kind == "snapshot" and resuming:
                    continue  # the replay gives the ticks themselves, not just the latest
                if kind in ("ticks", "snapshot", "replay"):
                    ticks = [Tick.from_dict(d) for d in message["data"]]
                    if resuming:
                        held.extend(ticks)  # live frames may overtake the replay: merge at its end
                    else:
                        for t in ticks:
                            yield t
                elif kind == "replay_end" and resuming:
                    resuming = False
                    for t in sorted({t.gseq: t for t in held}.values(), key=lambda t: t.gseq):
                        yield t
                    held.clear()

    async def _sse(self) -> AsyncIterator[Tick]:
        headers = {"Accept": "text/event-stream"}
        if self.last_gseq:
            headers["Last-Event-ID"] = str(self.last_gseq)
        if self.api_key:
            headers["X-API-Key"] = self.api_key
        params = {"symbols": ",".join(self.symbols)} if self.symbols != ["*"] else {}
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=60.0)) as client,
            client.stream("GET", self.url + "/stream/sse", params=params, headers=headers) as response,
        ):
            response.raise_for_status()
            event, data = "message", ""
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data = line[5:].strip()
                elif not line and data:
                    if event == "tick":
                        yield Tick.from_json(data)
                    elif event == "close":
                        raise ConnectionError(f"server closed the stream: {data}")
                    event, data = "message", ""


def history(
    url: str,
    symbol: str,
    start: str | datetime | None = None,
    end: str | datetime | None = None,
    interval: str | None = None,
    *,
    api_key: str | None = None,
    page: int = 10_000,
) -> pd.DataFrame:
    """Ticks (or OHLCV candles when `interval` is given) as a DataFrame, paging through the REST API."""
    import pandas as pd

    params: dict[str, Any] = {"symbol": symbol, "limit": page}
    for name, value in (("start", start), ("end", end)):
        if value is not None:
            params[name] = value.isoformat() if isinstance(value, datetime) else value
    headers = {"X-API-Key": api_key} if api_key else {}
    rows: list[dict[str, Any]] = []
    with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=60.0) as client:
        if interval is not None:
            response = client.get("/history/candles", params={**params, "interval": interval})
            response.raise_for_status()
            rows = response.json()["candles"]
            key = "start"
        else:
            key = "ts"
            while True:
                response = client.get("/history/ticks", params=params)
                response.raise_for_status()
                body = response.json()
                rows.extend(body["ticks"])
                if body["next_cursor"] is None:
                    break
                params["cursor"] = body["next_cursor"]
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame.index = pd.to_datetime(frame[key], unit="ns", utc=True)
        frame.index.name = "time"
    return frame
