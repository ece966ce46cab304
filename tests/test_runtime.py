"""The runtime's shutdown: bounded however slow a backend is, and it says where the time went."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from marketfeed import runtime
from marketfeed.config import Settings
from marketfeed.runtime import Runtime
from marketfeed.ticks import TickBatch


def test_a_hung_quote_cache_holds_the_stop_for_drain_s_in_all_and_the_loss_is_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime, "DRAIN_S", 0.5)
    monkeypatch.setattr(runtime, "SLOW_SHUTDOWN_S", 0.2)
    monkeypatch.setattr(runtime, "STILL_RUNNING_S", 0.15)
    updates: list[int] = []

    async def hangs(batch: TickBatch) -> None:
        updates.append(batch.step)
        await asyncio.Event().wait()  # a cache that never answers

    async def body() -> float:
        rt = Runtime(Settings(history_path=tmp_path / "h.sqlite3"))
        monkeypatch.setattr(rt.quotes, "update", hangs)
        for step in range(10):
            rt._cache_queue.put_nowait(TickBatch(step=step, ticks=()))
        t0 = time.monotonic()
        await rt.close()
        took = time.monotonic() - t0
        assert rt.quote_updates_dropped == 9  # the first was tried; the other nine were never sent
        return took

    with caplog.at_level(logging.WARNING, logger="marketfeed.runtime"):
        took = asyncio.run(body())
    assert took < 0.5 + 1.0  # not 10 x the per-update wait
    assert updates == [0]
    messages = [r.getMessage() for r in caplog.records]
    assert any("9 dropped" in m for m in messages), messages
    assert any(m.startswith("shutdown: writing the last quotes took") for m in messages), messages
    # While it ran, it said so (a phase that never ends is named before the process is killed).
    assert any(m.startswith("shutdown: writing the last quotes still running after") for m in messages)
