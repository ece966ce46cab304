"""Real marketfeed servers for tests: `python -m marketfeed serve` in a subprocess on a free port.

Tests talk to them with real clients (httpx, websockets, a browser), exactly as users do. Settings
go in as `MARKETFEED_*` environment variables, the same way a deployment sets them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class ServerProcess:
    """One server process; `start`/`stop` may be called repeatedly (same port, same history file)."""

    workdir: Path
    settings: dict[str, Any] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/stream/ws"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"server-{self.port}.log"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MARKETFEED_")}
        env |= {
            "MARKETFEED_PORT": str(self.port),
            "MARKETFEED_HISTORY_PATH": str(self.workdir / "history.sqlite3"),
            "MARKETFEED_TICK_RATE": "20",
            "MARKETFEED_FLUSH_MS": "100",
            "MARKETFEED_LOG_LEVEL": "warning",
        }
        env |= {f"MARKETFEED_{k.upper()}": str(v) for k, v in self.settings.items()}
        return env

    def start(self, timeout: float = 20.0) -> ServerProcess:
        """Start and wait until the server is healthy and, if it runs an engine and serves clients
        (role "all", the default), has published its first step: /health answers before the first
        step, and a test that subscribes then would get an empty snapshot (a CI run did, once)."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("server already running")
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "marketfeed", "serve"],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                health = httpx.get(self.url + "/health", timeout=1.0)
                if health.status_code == 200 and (
                    self.settings.get("role", "all") != "all" or health.json()["last_gseq"] > 0
                ):
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"server did not become healthy and ticking in {timeout} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait: the graceful path (streams end, history is flushed).

        The timeout is generous because a graceful stop may use the backends' own flush limits;
        these tests are about what gets flushed, not how fast. A server that still hangs is asked
        for its threads' stacks (SIGUSR1, see `marketfeed serve`) so the failure says where."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGUSR1)
            time.sleep(1.0)
            self.kill()
            raise RuntimeError(
                f"server ignored SIGTERM for {timeout} s; its stacks:\n{self.log_tail(120)}"
            ) from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


ServerFactory = Callable[..., ServerProcess]


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[ServerFactory]:
    """Make (unstarted) servers: `server_factory(seed=3, tick_rate=50)`; all are killed at the end."""
    made: list[ServerProcess] = []

    def make(**settings: Any) -> ServerProcess:
        workdir = tmp_path / f"server{len(made)}"
        workdir.mkdir()
        server = ServerProcess(workdir=workdir, settings=settings)
        made.append(server)
        return server

    yield make
    for server in made:
        server.kill()


@pytest.fixture
def server(server_factory: ServerFactory) -> ServerProcess:
    """A running server on embedded defaults, 20 steps a second."""
    return server_factory().start()
