"""Access control and limits against a real server: keys, redaction, per-address limits, headers."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from serverproc import ServerFactory
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from marketfeed.security import key_allowed

KEY = "k3y-with-some-entropy-0123456789"


def test_key_comparison() -> None:
    assert key_allowed(None, [])
    assert key_allowed("anything", [])
    assert key_allowed(KEY, ["other", KEY])
    assert not key_allowed(None, [KEY])
    assert not key_allowed(KEY[:-1], [KEY])


def test_keys_guard_streams_and_history_and_are_never_logged(server_factory: ServerFactory) -> None:
    server = server_factory(api_keys=f"{KEY},second-key", log_level="info").start()
    r = httpx.get(server.url + "/history/ticks", params={"symbol": "NOVA"})
    assert r.status_code == 401
    assert "API key" in r.json()["detail"]
    assert httpx.get(server.url + "/quotes/latest", headers={"X-API-Key": "wrong"}).status_code == 401
    assert httpx.get(server.url + "/quotes/latest", headers={"X-API-Key": KEY}).status_code == 200
    assert (
        httpx.get(server.url + "/quotes/latest", headers={"Authorization": "Bearer second-key"}).status_code
        == 200
    )
    assert httpx.get(server.url + "/quotes/latest", params={"api_key": KEY}).status_code == 200
    with httpx.stream("GET", server.url + "/stream/sse", params={"api_key": KEY}) as response:
        assert response.status_code == 200
    assert httpx.get(server.url + "/stream/sse").status_code == 401
    assert httpx.get(server.url + "/health").status_code == 200  # probes stay open

    async def ws_without_key() -> None:
        async with connect(server.ws_url) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1008

    async def ws_with_key() -> None:
        async with connect(server.ws_url + f"?api_key={KEY}") as ws:
            await ws.send(json.dumps({"action": "ping"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "pong"

    asyncio.run(ws_without_key())
    asyncio.run(ws_with_key())
    server.stop()
    log = server.log_path.read_text()
    assert "GET /quotes/latest?api_key=***" in log  # the access log ran, with the key redacted
    assert KEY not in log
    assert "second-key" not in log


def test_open_streams_per_address_are_limited(server_factory: ServerFactory) -> None:
    server = server_factory(max_connections_per_ip=2).start()
    with (
        httpx.stream("GET", server.url + "/stream/sse") as first,
        httpx.stream("GET", server.url + "/stream/sse") as second,
    ):
        assert (first.status_code, second.status_code) == (200, 200)
        third = httpx.get(server.url + "/stream/sse")
        assert third.status_code == 429
        assert "too many" in third.json()["detail"]
    metrics = httpx.get(server.url + "/metrics").text
    assert "marketfeed_connections_refused_total 1" in metrics


def test_message_floods_are_refused_and_the_connection_goes_on(server_factory: ServerFactory) -> None:
    server = server_factory(max_messages_per_second=5).start()

    async def scenario() -> None:
        async with connect(server.ws_url) as ws:
            for _ in range(60):
                await ws.send(json.dumps({"action": "ping"}))
            kinds = [json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] for _ in range(60)]
            assert kinds.count("pong") >= 25  # the burst allowance
            assert kinds.count("error") >= 20
            await asyncio.sleep(1.0)
            await ws.send(json.dumps({"action": "ping"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "pong"

    asyncio.run(scenario())


def test_security_headers_and_no_cors_by_default(server_factory: ServerFactory) -> None:
    server = server_factory().start()
    r = httpx.get(server.url + "/", headers={"Origin": "https://evil.example"})
    assert r.status_code == 200
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "access-control-allow-origin" not in r.headers
    allowed = server_factory(cors_origins="https://desk.example").start()
    r = httpx.get(allowed.url + "/symbols", headers={"Origin": "https://desk.example"})
    assert r.headers["access-control-allow-origin"] == "https://desk.example"
