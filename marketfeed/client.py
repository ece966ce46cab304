"""A Python client for bots and notebooks: live ticks that survive reconnects, history as DataFrames.

    from marketfeed.client import Stream, history

    async for tick in Stream("http://127.0.0.1:8000", symbols=["NOVA", "QBIT"]):
        ...  # every tick once, in gseq order, across dropped connections and server restarts

    df = history("http://127.0.0.1:8000", "NOVA", "2030-01-01T00:00", "2030-01-01T01:00")
    bars = history("http://127.0.0.1:8000", "NOVA", start, end, interval="1m")

How `Stream` sees every tick once: it remembers the gseq of the last tick it yielded. After a reconnect
it asks the server for everything after it (WebSocket: `{"action":"replay","from_seq":last+1}`; SSE:
`Last-Event-ID: last`) while live ticks already flow; it yields the replay first, then the live ticks it
held back, skipping every gseq it has already yielded. A per-symbol `seq` that jumps (the server
conflates the backlog of a client that fell behind) triggers the same resynchronisation, so a slow bot
loses nothing the server still has. A hole the server cannot fill (history deleted) is logged and
counted in `Stream.gaps`, never waited on forever.

Needs the `client` extra: `pip install 'marketfeed[client]'` (httpx, websockets, pandas).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncGenerator, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson
import pandas as pd
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from marketfeed.ticks import Tick

__all__ = ["Stream", "StreamError", "history"]

log = logging.getLogger(__name__)

Transport = Literal["ws", "sse"]
#: A time for `history`: ISO 8601 (naive means UTC), Unix seconds, a datetime, or None for open-ended.
TimeLike = str | int | float | datetime | None

TICK_COLUMNS = ["symbol", "seq", "gseq", "ts", "time", "price", "bid", "ask", "size", "vol"]
CANDLE_COLUMNS = ["start", "time", "open", "high", "low", "close", "volume", "trades", "vwap"]
INTERVAL_SECONDS = {"1s": 1, "1m": 60, "5m": 300, "15m": 900, "1h": 3600, "1d": 86_400}

#: WebSocket close codes the server uses (see marketfeed/streams/websocket.py).
CLOSE_POLICY = 1008


class StreamError(Exception):
    """The server refused the stream for good (unknown symbols, a bad API key): retrying cannot help."""


class _GapError(Exception):
    """Reconnect at once and resume: a gap was seen and the server is asked to fill it."""


def _base_url(url: str) -> tuple[str, str]:
    """`http(s)://host:port[/prefix]` -> (http base, ws base); ws(s):// URLs are accepted too."""
    parts = urlsplit(url.rstrip("/"))
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    if scheme not in ("http", "https"):
        raise ValueError(f"url must start with http://, https://, ws:// or wss:// (got {url!r})")
    path = parts.path
    for suffix in ("/stream/ws", "/stream/sse"):  # accept a stream URL as well as the server's base
        path = path.removesuffix(suffix)
    http = urlunsplit((scheme, parts.netloc, path, "", ""))
    ws = urlunsplit(("wss" if scheme == "https" else "ws", parts.netloc, path, "", ""))
    return http, ws


class Stream:
    """Live ticks of `symbols` (all when None) as `marketfeed.ticks.Tick`, resuming across reconnects.

    `async for tick in Stream(url, symbols=[...])`, or `async with Stream(...) as s: async for tick in s`
    to close the connection deterministically. Reconnects forever by default, with capped exponential
    backoff and jitter; `max_retries` bounds the consecutive failed attempts (then ConnectionError).
    `after_gseq` resumes a previous run from the last gseq it processed.
    """

    def __init__(
        self,
        url: str,
        symbols: Sequence[str] | None = None,
        *,
        transport: Transport = "ws",
        api_key: str | None = None,
        after_gseq: int = 0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        max_retries: int | None = None,
        open_timeout: float = 10.0,
        idle_timeout: float = 60.0,
    ) -> None:
        if transport not in ("ws", "sse"):
            raise ValueError(f"transport must be 'ws' or 'sse' (got {transport!r})")
        if symbols is not None and (isinstance(symbols, str) or not symbols):
            raise ValueError("symbols must be a non-empty list of symbols, or None for all")
        if not 0 < backoff_initial <= backoff_max:
            raise ValueError("backoff_initial must be > 0 and <= backoff_max")
        self.http_url, self.ws_url = _base_url(url)
        self.symbols = None if symbols is None else sorted({s.strip().upper() for s in symbols})
        self.transport = transport
        self.api_key = api_key
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.max_retries = max_retries
        self.open_timeout = open_timeout
        self.idle_timeout = idle_timeout
        #: gseq of the last tick yielded: ticks are yielded in strictly increasing gseq order.
        self.last_gseq = after_gseq
        #: seq of the last tick yielded, per symbol (continuity check).
        self.last_seq: dict[str, int] = {}
        self.connections = 0  #: successful connections so far (1 + reconnects)
        self.gaps = 0  #: holes the server could not fill (ticks it no longer has)
        self.resyncs = 0  #: seq jumps seen on a live stream and filled from the server
        self._gap_retry_at: int | None = None
        self._gen: AsyncGenerator[Tick] | None = None

    # --- the iterator protocol ---------------------------------------------------------------------
    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> Tick:
        if self._gen is None:
            self._gen = self._run()
        return await self._gen.__anext__()

    async def aclose(self) -> None:
        """Close the connection; the iteration ends."""
        if self._gen is not None:
            await self._gen.aclose()

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # --- reconnecting --------------------------------------------------------------------------------
    def _delay(self, attempt: int) -> float:
        # "Equal jitter": half the exponential delay is kept, half is random, so clients dropped together
        # by a restart spread out without any of them retrying at once in a tight loop.
        ceiling = min(self.backoff_max, self.backoff_initial * 2.0 ** min(attempt - 1, 30))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    async def _run(self) -> AsyncGenerator[Tick]:
        failures = 0
        while True:
            session = self._ws_session() if self.transport == "ws" else self._sse_session()
            resync = False
            try:
                async with contextlib.aclosing(session) as ticks:
                    async for tick in ticks:
                        failures = 0  # a connection that delivers resets the backoff
                        yield tick
            except StreamError:
                raise
            except _GapError:
                resync = True
            except (OSError, TimeoutError, ConnectionClosed, InvalidHandshake, httpx.HTTPError) as exc:
                log.info("marketfeed stream: connection lost (%s: %s)", type(exc).__name__, exc)
            if resync:
                continue
            failures += 1
            if self.max_retries is not None and failures > self.max_retries:
                raise ConnectionError(
                    f"marketfeed stream: gave up after {self.max_retries} reconnect attempts"
                )
            delay = self._delay(failures)
            log.info("marketfeed stream: reconnecting in %.2f s (attempt %d)", delay, failures)
            await asyncio.sleep(delay)

    # --- ordering, de-duplication, gaps --------------------------------------------------------------
    def _fresh(self, ticks: Iterable[Tick]) -> Iterator[Tick]:
        """The ticks not yielded yet, in gseq order; updates the resume point as they go out."""
        for t in sorted(ticks, key=lambda t: t.gseq):
            if t.gseq <= self.last_gseq:
                continue  # replayed and live at once, or re-sent after a reconnect
            self.last_gseq = t.gseq
            self.last_seq[t.symbol] = t.seq
            yield t

    def _has_gap(self, ticks: Iterable[Tick]) -> bool:
        """Whether some symbol's seq jumps past the next one expected (gseq order assumed)."""
        expected = dict(self.last_seq)
        for t in sorted(ticks, key=lambda t: t.gseq):
            if t.gseq <= self.last_gseq:
                continue
            if t.symbol in expected and t.seq > expected[t.symbol] + 1:
                return True
            expected[t.symbol] = t.seq
        return False

    def _accept_gap(self) -> bool:
        """True when a resync from this point was already tried and brought nothing: the hole stays.
        Otherwise the caller resyncs, from the last tick yielded."""
        if self._gap_retry_at == self.last_gseq:
            self.gaps += 1
            log.warning("marketfeed stream: the server no longer has ticks after gseq %d", self.last_gseq)
            self._gap_retry_at = None
            return True
        self._gap_retry_at = self.last_gseq
        self.resyncs += 1
        return False

    # --- WebSocket -----------------------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        return {"x-api-key": self.api_key} if self.api_key else {}

    async def _ws_session(self) -> AsyncGenerator[Tick]:
        async with connect(
            self.ws_url + "/stream/ws",
            additional_headers=self._headers(),
            open_timeout=self.open_timeout,
            max_size=64 * 1024 * 1024,  # a replay or snapshot frame of many symbols
            compression=None,
        ) as ws:
            self.connections += 1
            try:
                # Inside the try: a server refusing the key closes at once, and that close can arrive
                # before this first send, which then raises ConnectionClosed too.
                subscribe = {"action": "subscribe", "symbols": self.symbols or ["*"]}
                await ws.send(orjson.dumps(subscribe).decode())
                # Live frames arrive while a replay is out: they wait in `held` and go out after it.
                replaying = self.last_gseq > 0
                if replaying:
                    await self._ask_replay(ws)
                held: list[Tick] = []
                async for raw in ws:
                    msg = orjson.loads(raw)
                    kind = msg.get("type")
                    if kind in ("ticks", "snapshot"):
                        ticks = [Tick.from_dict(d) for d in msg["data"]]
                        if replaying:
                            held.extend(ticks)
                        elif self._has_gap(ticks) and not self._accept_gap():
                            replaying = True
                            held.extend(ticks)
                            await self._ask_replay(ws)
                        else:
                            for t in self._fresh(ticks):
                                yield t
                    elif kind == "replay":
                        before = self.last_gseq
                        for t in self._fresh(Tick.from_dict(d) for d in msg["data"]):
                            yield t
                        if self.last_gseq != before:
                            self._gap_retry_at = None
                    elif kind == "replay_end":
                        # The held live ticks may themselves skip ticks (conflated while the replay ran):
                        # replay again from here, unless that was just tried without progress.
                        if self._has_gap(held) and not self._accept_gap():
                            await self._ask_replay(ws)
                            continue
                        replaying = False
                        ticks, held = held, []
                        for t in self._fresh(ticks):
                            yield t
                    elif kind == "error":
                        code = msg.get("code")
                        if code in ("unknown_symbols", "bad_symbols", "too_many_symbols"):
                            raise StreamError(f"{code}: {msg.get('message')}")
                        log.warning("marketfeed stream: server error %s: %s", code, msg.get("message"))
            except ConnectionClosed:
                # A refused key closes with 1008 and says so: retrying cannot help. Other closes
                # (slow consumer, shutdown, network) are reconnected by _run.
                if ws.close_code == CLOSE_POLICY and "key" in (ws.close_reason or ""):
                    raise StreamError(f"refused: {ws.close_reason}") from None
                raise

    async def _ask_replay(self, ws: ClientConnection) -> None:
        await ws.send(orjson.dumps({"action": "replay", "from_seq": self.last_gseq + 1}).decode())

    # --- Server-Sent Events --------------------------------------------------------------------------
    async def _sse_session(self) -> AsyncGenerator[Tick]:
        headers = {"accept": "text/event-stream", **self._headers()}
        if self.last_gseq:
            headers["last-event-id"] = str(self.last_gseq)
        params = {"symbols": ",".join(self.symbols)} if self.symbols else {}
        timeout = httpx.Timeout(self.open_timeout, read=self.idle_timeout)  # the server pings every 15 s
        async with (
            httpx.AsyncClient(timeout=timeout) as client,
            client.stream("GET", self.http_url + "/stream/sse", params=params, headers=headers) as resp,
        ):
            if resp.status_code in (400, 401, 403, 404):
                body = (await resp.aread()).decode(errors="replace")
                raise StreamError(f"HTTP {resp.status_code}: {body[:300]}")
            resp.raise_for_status()  # 429 and 5xx: retried with backoff
            self.connections += 1
            event, data = "message", []
            async for line in resp.aiter_lines():
                if line:
                    name, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    if name == "event":
                        event = value
                    elif name == "data":
                        data.append(value)
                    continue  # comments (": ping"), id and retry need no action here
                if event == "tick" and data:
                    tick = Tick.from_json("\n".join(data))
                    if self._has_gap([tick]) and not self._accept_gap():
                        raise _GapError  # reconnect with Last-Event-ID: the server backfills the hole
                    for t in self._fresh([tick]):
                        if t.gseq > (self._gap_retry_at or 0):
                            self._gap_retry_at = None
                        yield t
                elif event == "close":
                    log.info("marketfeed stream: server closed the stream: %s", "\n".join(data))
                    return
                event, data = "message", []


# --- history -----------------------------------------------------------------------------------------
def _time_param(value: TimeLike) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.isoformat()
    return str(value)


def history(
    url: str,
    symbol: str,
    start: TimeLike = None,
    end: TimeLike = None,
    interval: str | None = None,
    *,
    api_key: str | None = None,
    page_size: int = 10_000,
    timeout: float = 30.0,
) -> pd.DataFrame:
    """Stored ticks of `symbol` in [start, end), or OHLCV candles when `interval` is given (1s, 1m, 5m,
    15m, 1h, 1d), as a DataFrame whose `time` column is a UTC timestamp. Pages through the REST API
    (`/history/ticks` with `next_cursor`, `/history/candles` by start time) `page_size` rows at a time.
    """
    if interval is not None and interval not in INTERVAL_SECONDS:
        raise ValueError(f"interval must be one of {', '.join(INTERVAL_SECONDS)} (got {interval!r})")
    if page_size < 1:
        raise ValueError("page_size must be >= 1")
    base, _ = _base_url(url)
    params: dict[str, Any] = {"symbol": symbol, "limit": page_size}
    for key, value in (("start", start), ("end", end)):
        text = _time_param(value)
        if text is not None:
            params[key] = text
    headers = {"x-api-key": api_key} if api_key else {}
    with httpx.Client(base_url=base, timeout=timeout, headers=headers) as client:
        if interval is None:
            rows = list(_tick_pages(client, params))
            frame = pd.DataFrame(rows, columns=TICK_COLUMNS)
            frame["time"] = pd.to_datetime(frame["ts"].astype("int64"), unit="ns", utc=True)
        else:
            rows = list(
                _candle_pages(
                    client, {**params, "interval": interval}, INTERVAL_SECONDS[interval], _to_ns(end)
                )
            )
            frame = pd.DataFrame(rows, columns=CANDLE_COLUMNS)
            frame["time"] = pd.to_datetime(frame["start"].astype("int64"), unit="ns", utc=True)
    return frame


def _get(client: httpx.Client, path: str, params: dict[str, Any]) -> dict[str, Any]:
    resp = client.get(path, params=params)
    if resp.status_code >= 400:
        try:
            detail = resp.json().get("detail", resp.text)
        except ValueError:
            detail = resp.text
        raise ValueError(f"{path}: HTTP {resp.status_code}: {detail}")
    body: dict[str, Any] = resp.json()
    return body


def _tick_pages(client: httpx.Client, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
    cursor: str | None = None
    while True:
        page = _get(client, "/history/ticks", {**params, **({"cursor": cursor} if cursor else {})})
        yield from page["ticks"]
        cursor = page.get("next_cursor")
        if not cursor:
            return


def _candle_pages(
    client: httpx.Client, params: dict[str, Any], width_s: int, end_ns: int | None
) -> Iterator[dict[str, Any]]:
    # Candles have no cursor: the next page starts one bucket after the last one returned. The server
    # may cap `limit` below page_size, so only an empty page, or the end of the range, ends the loop.
    while True:
        candles = _get(client, "/history/candles", params)["candles"]
        if not candles:
            return
        yield from candles
        next_start_s = candles[-1]["start"] // 1_000_000_000 + width_s
        if end_ns is not None and next_start_s * 1_000_000_000 >= end_ns:
            return  # asking for an empty range would be a 400
        params = {**params, "start": str(next_start_s)}


def _to_ns(value: TimeLike) -> int | None:
    """The instant a TimeLike names, in ns since the epoch, as the server reads it."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return round(value * 1e9)
    if isinstance(value, str):
        try:
            return round(float(value) * 1e9)
        except ValueError:
            value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
