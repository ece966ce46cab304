"""Scale-out over Kafka: one engine process, two edge processes; clients on either edge see the same
ticks with the same sequence numbers."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import httpx
import pytest
from serverproc import ServerFactory
from services import Kafka
from websockets.asyncio.client import connect

pytestmark = pytest.mark.integration


async def collect(url: str, seconds: float) -> list[dict[str, Any]]:
    ticks: list[dict[str, Any]] = []
    async with connect(url) as ws:
        await ws.send(json.dumps({"action": "subscribe", "symbols": ["NOVA", "OILX", "UTIL"]}))
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            message = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if message["type"] == "ticks":
                ticks.extend(message["data"])
    return ticks


@pytest.mark.parametrize("layout", ["tick", "step"])  # the engine's MARKETFEED_KAFKA_MESSAGES
def test_two_edges_serve_identical_streams(server_factory: ServerFactory, kafka: Kafka, layout: str) -> None:
    topic = f"scale-{uuid.uuid4().hex[:8]}"
    engine = server_factory(role="engine", kafka=kafka.bootstrap, kafka_topic=topic, kafka_messages=layout)
    engine.start()
    edges = [server_factory(role="edge", kafka=kafka.bootstrap, kafka_topic=topic).start() for _ in range(2)]
    time.sleep(3.0)  # the edges have their partitions

    async def both() -> list[list[dict[str, Any]]]:
        return list(await asyncio.gather(*(collect(e.ws_url, 4.0) for e in edges)))

    a, b = asyncio.run(both())
    assert len(a) > 30
    assert len(b) > 30
    common = set(t["gseq"] for t in a) & set(t["gseq"] for t in b)
    assert len(common) > 30
    pick_a = [t for t in a if t["gseq"] in common]
    pick_b = [t for t in b if t["gseq"] in common]
    assert pick_a == pick_b  # same ticks, same seq, same prices, same order
    for ticks in (a, b):
        last: dict[str, int] = {}
        for t in ticks:
            if t["symbol"] in last:
                assert t["seq"] == last[t["symbol"]] + 1
            last[t["symbol"]] = t["seq"]
    health = httpx.get(engine.url + "/health").json()
    assert health["role"] == "engine"
    assert health["backends"]["bus"]["name"] == "kafka"
    assert httpx.get(edges[0].url + "/health").json()["role"] == "edge"
