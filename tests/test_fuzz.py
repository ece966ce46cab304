"""Bad input from every direction: the HTTP API fuzzed from its own OpenAPI document, and the
WebSocket protocol fed garbage, floods and storms. No 5xx, no crash, clear errors, others unaffected."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from serverproc import ServerFactory, ServerProcess
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


def test_http_api_fuzzed_from_its_openapi_document(server: ServerProcess) -> None:
    # The SSE stream never ends, so it is fuzzed by the tests in test_sse.py instead.
    result = subprocess.run(
        [
            str(SCHEMATHESIS), "run", server.url + "/openapi.json",
            "--exclude-path", "/stream/sse",
            "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
            "response_schema_conformance",
            "--max-examples", "40", "--request-timeout", "10",
            "--generation-deterministic", "--no-color",
        ],
        capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:]
    tested = re.search(r"Tested: (\d+)", result.stdout)
    assert tested is not None
    assert int(tested.group(1)) >= 10  # every operation but the live stream


async def expect_error(ws: ClientConnection, code: str) -> None:
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), 5))
        if message["type"] == "error":
            assert message["code"] == code, message
            return


def test_websocket_garbage_floods_and_storms(server_factory: ServerFactory) -> None:
    server = server_factory(max_symbols=50, max_message_bytes=65536, max_messages_per_second=1000).start()

    async def bystander(stop: asyncio.Event, gaps: list[int]) -> int:
        """An ordinary client whose stream must not notice the abuse next door."""
        received, last = 0, 0
        async with connect(server.ws_url) as ws:
            await ws.send(json.dumps({"action": "subscribe", "symbols": ["NOVA"]}))
            while not stop.is_set():
                message = json.loads(await asyncio.wait_for(ws.recv(), 5))
                for t in message.get("data", []) if message["type"] == "ticks" else []:
                    if last and t["seq"] != last + 1:
                        gaps.append(t["seq"] - last)
                    last = t["seq"]
                    received += 1
        return received

    async def scenario() -> None:
        stop, gaps = asyncio.Event(), list[int]()
        watcher = asyncio.create_task(bystander(stop, gaps))
        async with connect(server.ws_url, max_size=2**22) as ws:
            garbage = [
                ("", "bad_json"),
                ("\x00" * 10, "bad_json"),
                ("null", "bad_message"),
                ("{}", "unknown_action"),
                ('{"action": null}', "unknown_action"),
                ('{"action": "subscribe"}', "bad_symbols"),
                ('{"action": "subscribe", "symbols": {"a": 1}}', "bad_symbols"),
                ('{"action": "replay", "from_seq": -5}', "bad_from_seq"),
                ('{"action": "replay", "from_seq": 1}', "not_subscribed"),
            ]
            for message, code in garbage:
                await ws.send(message)
                await expect_error(ws, code)
        async with connect(server.ws_url, max_size=2**22) as ws:
            # A subscribe/unsubscribe storm, all symbols, many times over.
            listing = await asyncio.to_thread(httpx.get, server.url + "/symbols")
            symbols = [s["symbol"] for s in listing.json()]
            for _ in range(200):
                await ws.send(json.dumps({"action": "subscribe", "symbols": symbols}))
                await ws.send(json.dumps({"action": "unsubscribe", "symbols": symbols}))
            await ws.send(json.dumps({"action": "subscribe", "symbols": [f"X{i}" for i in range(5000)]}))
            await expect_error(ws, "unknown_symbols")
            await ws.send(json.dumps({"action": "ping"}))
        async with connect(server.ws_url) as ws:  # a frame over the size limit closes with 1009
            await ws.send("x" * 100_000)
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1009
        await asyncio.sleep(1.0)
        stop.set()
        received = await watcher
        assert received >= 20
        assert gaps == []

    asyncio.run(scenario())
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
