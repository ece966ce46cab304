"""The quote-cache contract: the latest tick of each symbol, and which symbols people watch.

Backends: `memory` (the embedded default) and `redis`. `update` is called once per engine step with
the whole batch so a networked backend can pipeline one round trip per step. A failing cache degrades
health; it never stops the streams.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from marketfeed.health import Health
from marketfeed.ticks import Tick, TickBatch


class QuoteCache(Protocol):
    name: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def update(self, batch: TickBatch) -> None: ...

    async def latest(self, symbols: Iterable[str]) -> dict[str, Tick]: ...

    async def set_watchers(self, counts: Mapping[str, int]) -> None:
        """Live subscriber count per symbol (for ranking hot symbols)."""

    async def hot(self, n: int) -> list[tuple[str, int]]:
        """The n most-watched symbols with their subscriber counts, most watched first."""
        ...

    def health(self) -> Health: ...

    def metrics(self) -> dict[str, float]: ...
