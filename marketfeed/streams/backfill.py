"""Filling a client's gap: recent ticks from the hub's ring, older ones from the history store.

Used by SSE resume (`Last-Event-ID`) and the WebSocket `replay` action. The caller subscribes to the
hub *before* backfilling, so nothing published meanwhile is missed; it then skips live batches it has
already sent by gseq, so nothing is sent twice.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from marketfeed.history.store import HistoryStore
from marketfeed.streams.hub import Hub
from marketfeed.ticks import SymbolSet, TickBatch

PAGE = 5000


async def backfill(
    hub: Hub, history: HistoryStore, symbols: SymbolSet, after_gseq: int
) -> AsyncIterator[TickBatch]:
    """Batches holding every tick of `symbols` with gseq > `after_gseq` that the hub has published."""
    last = after_gseq
    while True:
        recent = hub.recent(last)
        if recent is not None:
            for batch in recent:
                yield batch
            return
        oldest = hub.oldest_gseq
        ticks = await history.ticks(symbols=symbols, after_gseq=last, limit=PAGE)
        if oldest is not None:
            ticks = [t for t in ticks if t.gseq < oldest]
        if not ticks:
            if oldest is None:
                return  # nothing published yet since start, and history has nothing newer
            last = oldest - 1  # history has nothing more for these symbols: the ring takes over
            continue
        yield TickBatch(step=-1, ticks=ticks)
        last = ticks[-1].gseq
