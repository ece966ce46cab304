"""The fan-out baseline: the least a WebSocket server can do per frame.

One uvicorn process (uvloop, httptools), one pre-encoded frame of `--ticks` ticks made per step and
shared by every client, one `send` per client per step, no engine, no hub, no queues. What marketfeed
adds on top of this is what `bench/fanout.py` measures.

Run by bench/fanout.py: `python bench/bare_server.py --port P --rate R --ticks T`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect


def make_frame(step: int, ticks: int) -> str:
    now = time.time_ns()
    data = [
        {
            "symbol": f"S{i:03d}",
            "seq": step + 1,
            "gseq": step * ticks + i + 1,
            "ts": now,
            "time": "2026-01-01T00:00:00.000000Z",
            "price": 100.0,
            "bid": 99.99,
            "ask": 100.01,
            "size": 50,
            "vol": 0.25,
        }
        for i in range(ticks)
    ]
    return orjson.dumps({"type": "ticks", "data": data}).decode()


def build(rate: float, ticks: int) -> Starlette:
    clients: set[asyncio.Queue[str]] = set()

    async def broadcast() -> None:
        step = 0
        period = 1.0 / rate
        deadline = time.monotonic()
        while True:
            frame = make_frame(step, ticks)
            for q in clients:
                if q.full():
                    q.get_nowait()
                q.put_nowait(frame)
            step += 1
            deadline += period
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))

    async def endpoint(ws: WebSocket) -> None:
        await ws.accept()
        q: asyncio.Queue[str] = asyncio.Queue(64)
        clients.add(q)
        try:
            await ws.receive_text()  # the subscribe message
            while True:
                await ws.send_text(await q.get())
        except WebSocketDisconnect:
            pass
        finally:
            clients.discard(q)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(broadcast())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return Starlette(routes=[WebSocketRoute("/stream/ws", endpoint)], lifespan=lifespan)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--rate", type=float, default=25.0)
    p.add_argument("--ticks", type=int, default=100)
    args = p.parse_args()
    uvicorn.run(
        build(args.rate, args.ticks),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        ws_per_message_deflate=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
