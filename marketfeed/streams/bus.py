"""The bus contract: how tick batches leave the engine process and reach edge processes.

Backends: `memory` (in-process, the embedded default) and `kafka`. The engine side calls `publish`
once per step; it must never block the event loop for long, and a backend that cannot deliver keeps a
bounded buffer and reports `degraded` instead of stopping the engine. Edge processes iterate
`subscribe()` and feed their own hub.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from marketfeed.health import Health
from marketfeed.ticks import TickBatch


class Bus(Protocol):
    name: str

    async def start(self) -> None: ...

    async def close(self) -> None:
        """Deliver what is pending (bounded by a timeout), then disconnect."""

    async def publish(self, batch: TickBatch) -> None: ...

    def subscribe(self) -> AsyncIterator[TickBatch]:
        """Batches in gseq order from now on, for as long as the bus is open."""
        ...

    def health(self) -> Health: ...

    def metrics(self) -> dict[str, float]: ...
