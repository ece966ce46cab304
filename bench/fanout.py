"""Fan-out benchmark: N streaming clients on loopback against the real server, and against a bare one.

    .venv/bin/python bench/fanout.py                      # WebSocket, 10 / 100 / 1,000 clients
    .venv/bin/python bench/fanout.py --transport sse
    .venv/bin/python bench/fanout.py --quick              # a tiny run (the test suite uses it)
    .venv/bin/python bench/fanout.py --edges 2            # engine + 2 edge processes over Kafka
    .venv/bin/python bench/fanout.py --sets 10            # clients on 10 overlapping symbol sets

The server runs the real engine with a universe of `--symbols` symbols at `--rate` steps a second, so
every client subscribed to everything receives one frame of `--symbols` ticks per step. With `--sets K`
the universe is larger and client i subscribes to set i % K: `--symbols` symbols each, every set
overlapping the next by half, so the server filters each step and encodes a frame per set, and every
client still gets a frame of `--symbols` ticks per step. Latency is
engine-to-client: the receive time minus the tick's own `ts`. The baseline (bench/bare_server.py) is
the least a server can do: one shared pre-encoded frame per step and one send per client. The load
generator runs in `--procs` client processes on the same machine, so both servers share the cores
with it alike. With `--edges N` the engine runs alone (role engine) and publishes to a local Kafka
broker, N edge processes (role edge) consume it and serve the clients, split evenly between them:
the scale-out layout, measured in aggregate, latency still from the engine's timestamp.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import uvloop
from procstat import cpu_seconds

from marketfeed.engine import Universe

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def raise_fd_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def universe_file(n: int, directory: Path) -> Path:
    """The default universe tiled to n symbols (same parameters, new names)."""
    data = Universe.default().to_dict()
    data["assets"] = [dict(data["assets"][i % len(data["assets"])], symbol=f"S{i:03d}") for i in range(n)]
    Universe.from_dict(data).validate()
    path = directory / "universe.json"
    path.write_text(json.dumps(data))
    return path


# --- load generator (runs in child processes) -----------------------------------------------------------
# A raw asyncio protocol, not a client library: the load generator shares the two cores with the
# server, so each received frame must cost it as little as possible. It reads the WebSocket frame
# header, counts ticks with bytes.count and reads the first tick's `ts`, nothing more.


def symbol_sets(symbols: int, sets: int) -> list[list[str]] | None:
    """`sets` sets of `symbols` symbols, each overlapping the next by half; None for one set: all."""
    if sets <= 1:
        return None
    half = max(1, symbols // 2)
    return [[f"S{i:03d}" for i in range(k * half, k * half + symbols)] for k in range(sets)]


def universe_size(symbols: int, sets: int) -> int:
    return symbols if sets <= 1 else max(1, symbols // 2) * (sets - 1) + symbols


def subscribe_message(symbols: list[str] | None) -> bytes:
    return json.dumps({"action": "subscribe", "symbols": symbols or ["*"]}, separators=(",", ":")).encode()


def masked_text_frame(payload: bytes) -> bytes:
    if len(payload) >= 65536:
        raise ValueError("subscribe message too long for this load generator")
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    n = len(payload)
    length = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big")
    return bytes([0x81]) + length + mask + body


class Probe(asyncio.Protocol):
    """Counts frames and ticks and samples latency from the bytes as they arrive."""

    def __init__(
        self, path: str, port: int, transport_kind: str, warmup: float, stall: bool, symbols: list[str] | None
    ) -> None:
        self.kind = transport_kind
        self.subscribe = subscribe_message(symbols)
        if transport_kind == "sse" and symbols:
            path += "?symbols=" + ",".join(symbols)
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            + (
                "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                if transport_kind == "ws"
                else "Accept: text/event-stream\r\n"
            )
            + "\r\n"
        ).encode()
        self.warmup = warmup
        self.stall = stall
        self.buf = bytearray()
        self.headers_done = False
        self.frames = 0
        self.ticks = 0
        self.lat: list[float] = []
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = cast(Any, transport)  # uvloop's transports are not asyncio.Transport subclasses
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        if not self.headers_done:
            self.buf += data
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            self.headers_done = True
            data = bytes(self.buf[end + 4 :])
            self.buf.clear()
            if self.kind == "ws":
                self.transport.write(masked_text_frame(self.subscribe))
            if self.stall:
                self.transport.pause_reading()
                return
        if self.kind == "sse":
            self._count(data, now, b"event: tick")
            return
        self.buf += data
        while len(self.buf) >= 2:
            n = self.buf[1] & 0x7F
            head = 2
            if n == 126:
                if len(self.buf) < 4:
                    return
                n, head = int.from_bytes(self.buf[2:4], "big"), 4
            elif n == 127:
                if len(self.buf) < 10:
                    return
                n, head = int.from_bytes(self.buf[2:10], "big"), 10
            if len(self.buf) < head + n:
                return
            payload = bytes(self.buf[head : head + n])
            del self.buf[: head + n]
            if payload.startswith(b'{"type":"ticks"'):
                self._count(payload, now, b'"symbol"')

    def _count(self, payload: bytes, now: int, marker: bytes) -> None:
        i = payload.find(b'"ts":')
        if i < 0 or now / 1e9 < self.warmup:
            return
        self.frames += 1
        self.ticks += payload.count(marker)
        i += 5
        self.lat.append((now - int(payload[i : payload.index(b",", i)])) / 1e6)


async def probe(
    url: str, kind: str, until: float, warmup: float, out: list[Any], stall: bool, symbols: list[str] | None
) -> None:
    rest = url.split("//", 1)[1]
    hostport, path = rest.split("/", 1)
    port = int(hostport.split(":")[1])
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_connection(
        lambda: Probe("/" + path, port, kind, warmup, stall, symbols), "127.0.0.1", port
    )
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(proto.closed), max(0.0, until - time.time()))
    transport.close()
    if not stall:
        out.append((proto.frames, proto.ticks, proto.lat))


def load_process(
    url: str,
    transport: str,
    n: int,
    start: float,
    seconds: float,
    warmup: float,
    stall: int,
    sets: list[list[str]] | None,
    first: int,
    queue: Any,
) -> None:
    raise_fd_limit()

    async def run() -> list[Any]:
        out: list[Any] = []
        until = start + warmup + seconds
        await asyncio.sleep(max(0.0, start - 1.0 - time.time()))
        await asyncio.gather(
            *(
                probe(
                    url,
                    transport,
                    until,
                    start + warmup,
                    out,
                    i < stall,
                    sets[(first + i) % len(sets)] if sets else None,
                )
                for i in range(n)
            )
        )
        return out

    uvloop.install()
    results = asyncio.run(run())
    frames = sum(r[0] for r in results)
    ticks = sum(r[1] for r in results)
    lat = [x for r in results for x in r[2]]
    queue.put((frames, ticks, lat))


@dataclass
class Result:
    clients: int
    frames_per_s: float
    ticks_per_s: float
    p50_ms: float
    p99_ms: float
    #: The server processes' CPU time per frame sent, in microseconds (None: not measured). Steadier
    #: than the rates on two shared cores, where the server gets what the load generator leaves it.
    cpu_us_per_frame: float | None = None


@dataclass(frozen=True)
class Load:
    """How every measured run loads the server, from the command line, in one place."""

    procs: int  #: load-generator processes
    seconds: float  #: the measured window
    warmup: float  #: before it, not counted
    per_frame: int  #: ticks in a frame: one step of a client's set

    @classmethod
    def of(cls, args: argparse.Namespace, procs: int | None = None) -> Load:
        return cls(procs or args.procs, args.seconds, args.warmup, args.symbols)


def measure(
    url: str | list[str],
    transport: str,
    clients: int,
    load: Load,
    stall: int = 0,
    sets: list[list[str]] | None = None,
    pids: Sequence[int] = (),
) -> Result:
    """`clients` clients against `url`; with `pids`, the CPU time those server processes spend in the
    measured window too, per frame sent (counted from the ticks, as an SSE client reads several
    events at once)."""
    procs, seconds, warmup = load.procs, load.seconds, load.warmup
    urls = [url] if isinstance(url, str) else url  # load process i talks to urls[i % len(urls)]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    start = time.time() + 1.0 + clients / 500  # time for every process to connect its clients
    per = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    firsts = [sum(per[:i]) for i in range(procs)]  # client numbers, for their symbol sets
    workers = [
        ctx.Process(
            target=load_process,
            args=(
                urls[i % len(urls)],
                transport,
                n,
                start,
                seconds,
                warmup,
                stall if i == 0 else 0,
                sets,
                firsts[i],
                queue,
            ),
        )
        for i, n in enumerate(per)
        if n
    ]
    for w in workers:
        w.start()
    cpu = None
    if pids:  # the same window as the clients': after the warm-up, for `seconds`
        time.sleep(max(0.0, start + warmup - time.time()))
        c0 = cpu_seconds(pids)
        time.sleep(max(0.0, start + warmup + seconds - time.time()))
        cpu = cpu_seconds(pids) - c0
    parts = [queue.get(timeout=seconds + warmup + 120) for _ in workers]
    for w in workers:
        w.join()
    frames = sum(p[0] for p in parts)
    ticks = sum(p[1] for p in parts)
    lat = np.array([x for p in parts for x in p[2]] or [float("nan")])
    return Result(
        clients,
        frames / seconds,
        ticks / seconds,
        float(np.percentile(lat, 50)),
        float(np.percentile(lat, 99)),
        cpu / (ticks / load.per_frame) * 1e6 if cpu is not None and ticks else None,
    )


class Server:
    def __init__(self, argv: list[str], env: dict[str, str], port: int) -> None:
        self.port = port
        self.proc = subprocess.Popen(argv, env=env, preexec_fn=raise_fd_limit)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("server did not start")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def marketfeed_server(
    args: argparse.Namespace, workdir: Path, extra: dict[str, str] | None = None
) -> tuple[Server, str, str]:
    port = free_port()
    env = (
        (extra or {})
        | {k: v for k, v in os.environ.items() if not k.startswith("MARKETFEED_")}
        | {
            "MARKETFEED_PORT": str(port),
            "MARKETFEED_TICK_RATE": str(args.rate),
            "MARKETFEED_UNIVERSE": str(universe_file(universe_size(args.symbols, args.sets), workdir)),
            "MARKETFEED_HISTORY_PATH": str(workdir / f"history-{port}.sqlite3"),
            "MARKETFEED_MAX_CONNECTIONS_PER_IP": "100000",
            "MARKETFEED_SLOW_CLIENT_SECONDS": "5",
            "MARKETFEED_LOG_LEVEL": "warning",
        }
    )
    server = Server([sys.executable, "-m", "marketfeed", "serve"], env, port)
    time.sleep(0.5)
    return server, f"ws://127.0.0.1:{port}/stream/ws", f"http://127.0.0.1:{port}/stream/sse"


def bare_server(args: argparse.Namespace) -> tuple[Server, str]:
    port = free_port()
    argv = [
        sys.executable,
        str(ROOT / "bench" / "bare_server.py"),
        "--port",
        str(port),
        "--rate",
        str(args.rate),
        "--ticks",
        str(args.symbols),
    ]
    return Server(argv, dict(os.environ), port), f"ws://127.0.0.1:{port}/stream/ws"


def row(name: str, r: Result, base: Result | None = None) -> str:
    ratio = f"{r.frames_per_s / base.frames_per_s:6.2f}" if base and base.frames_per_s else "     -"
    cpu = f"{r.cpu_us_per_frame:10.1f}" if r.cpu_us_per_frame is not None else f"{'-':>10}"
    return (
        f"{name:<22}{r.clients:>8}{r.frames_per_s:>12,.0f}{r.ticks_per_s:>14,.0f}"
        f"{r.p50_ms:>10.1f}{r.p99_ms:>10.1f}{ratio:>8}{cpu}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", default="10,100,1000", help="comma-separated client counts")
    p.add_argument("--transport", choices=["ws", "sse"], default="ws")
    p.add_argument("--symbols", type=int, default=100, help="symbols (= ticks per frame)")
    p.add_argument("--rate", type=float, default=25.0, help="engine steps per second")
    p.add_argument("--seconds", type=float, default=8.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--procs", type=int, default=2, help="load-generator processes")
    p.add_argument("--no-stall", action="store_true", help="skip the one-stalled-client runs")
    p.add_argument("--pairs", type=int, default=4, help="alternating runs without / with a stalled client")
    p.add_argument("--edges", type=int, default=0, help="N edge processes behind an engine, over Kafka")
    p.add_argument("--sets", type=int, default=1, help="symbol sets the clients subscribe to (1: all)")
    p.add_argument("--quick", action="store_true", help="tiny configuration for the test suite")
    args = p.parse_args()
    if args.quick:
        args.clients, args.symbols, args.rate, args.seconds, args.warmup, args.procs, args.pairs = (
            "3",
            5,
            10.0,
            1.0,
            0.5,
            1,
            1,
        )
    raise_fd_limit()
    counts = [int(c) for c in args.clients.split(",")]
    print(
        f"fan-out over {args.transport}: {args.symbols} ticks per frame, {args.rate:g} frames/s per client, "
        f"{args.procs} load processes, {os.cpu_count()} cores"
        + (
            f"; {args.sets} symbol sets of {args.symbols} in a universe of "
            f"{universe_size(args.symbols, args.sets)}, client i on set i % {args.sets}"
            if args.sets > 1
            else "; every client on all symbols"
        )
    )
    print(
        f"{'server':<22}{'clients':>8}{'frames/s':>12}{'ticks/s':>14}{'p50 ms':>10}{'p99 ms':>10}{'ratio':>8}"
        f"{'us/frame':>10}"
    )
    if args.edges:
        scale_out(args, counts)
        return
    with tempfile.TemporaryDirectory() as tmp:
        for n in counts:
            base = None
            if args.transport == "ws":
                bare, bare_url = bare_server(args)
                try:
                    base = measure(bare_url, "ws", n, Load.of(args), pids=[bare.proc.pid])
                finally:
                    bare.close()
                print(row("bare (baseline)", base))
            server, ws_url, sse_url = marketfeed_server(args, Path(tmp))
            url = ws_url if args.transport == "ws" else sse_url
            try:
                if args.no_stall:
                    r = measure(
                        url,
                        args.transport,
                        n,
                        Load.of(args),
                        sets=symbol_sets(args.symbols, args.sets),
                        pids=[server.proc.pid],
                    )
                    print(row("marketfeed", r, base))
                else:
                    stalled_client_pairs(url, args, n, base, server.proc.pid)
            finally:
                server.close()


def stalled_client_pairs(url: str, args: argparse.Namespace, n: int, base: Result | None, pid: int) -> None:
    """Runs without and with one stalled client, alternating, on the same server: one pair's p99s
    differ by tens of percent from noise alone on two shared cores (and drift over a server's life),
    so the change is the ratio of the medians over `--pairs` pairs, each pair printed as well. Every
    second pair runs the stalled client first, so that a drift between the first and the second run
    of a pair does not count as the stalled client's doing."""
    plain, stalled = [], []
    sets = symbol_sets(args.symbols, args.sets)
    for k in range(args.pairs):
        order = (0, 1) if k % 2 == 0 else (1, 0)
        runs = {
            stall: measure(url, args.transport, n, Load.of(args), stall=stall, sets=sets, pids=[pid])
            for stall in order
        }
        r, s = runs[0], runs[1]
        change = f"   p99 change {100 * (s.p99_ms / r.p99_ms - 1):+.0f}%"
        first = "" if k % 2 == 0 else "   (stalled run first)"
        print(row("marketfeed", r, base))
        # No ratio: the stalled client's frames are not counted, so frames/s is of n - 1 clients.
        print(row("marketfeed +1 stalled", s) + change + first)
        plain.append(r.p99_ms)
        stalled.append(s.p99_ms)
    before, after = float(np.median(plain)), float(np.median(stalled))
    print(
        f"{'':<22}{n:>8}  one stalled client, {args.pairs} pair{'s' * (args.pairs != 1)}: "
        f"median p99 {before:.1f} -> {after:.1f} ms ({100 * (after / before - 1):+.0f}%)"
    )


def scale_out(args: argparse.Namespace, counts: list[int]) -> None:
    """One engine process and `args.edges` edge processes over a local Kafka broker."""
    sys.path.insert(0, str(ROOT / "tests"))
    from services import start_kafka

    broker = start_kafka("bench-fanout-kafka")
    if broker is None:
        print("kafka: jars or java missing (sudo bash .ci/install-services.sh); skipped")
        return
    servers: list[Server] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            kafka = {"MARKETFEED_KAFKA": broker.bootstrap, "MARKETFEED_KAFKA_PARTITIONS": "2"}
            engine, _, _ = marketfeed_server(args, Path(tmp), kafka | {"MARKETFEED_ROLE": "engine"})
            servers.append(engine)
            urls = []
            for _ in range(args.edges):
                edge, ws_url, sse_url = marketfeed_server(
                    args, Path(tmp), kafka | {"MARKETFEED_ROLE": "edge"}
                )
                servers.append(edge)
                urls.append(ws_url if args.transport == "ws" else sse_url)
            load = Load.of(args, procs=max(args.procs, args.edges))
            for n in counts:
                r = measure(
                    urls,
                    args.transport,
                    n,
                    load,
                    sets=symbol_sets(args.symbols, args.sets),
                    pids=[s.proc.pid for s in servers],
                )
                print(row(f"engine + {args.edges} edges", r))
    finally:
        for server in servers:
            server.close()
        broker.stop()
        broker.kill()
        shutil.rmtree(broker.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
