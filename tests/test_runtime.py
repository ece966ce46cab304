"""The runtime: its shutdown, bounded however slow a backend is and saying where the time went; and
its engine loop when the engine falls behind."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from marketfeed import runtime
from marketfeed.config import Settings
from marketfeed.engine import SimulatorState
from marketfeed.market import Market
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


def test_an_engine_behind_schedule_hands_its_steps_over_in_runs_with_the_state_after_the_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written: list[tuple[int, int | None]] = []  # (step, the step its state resumes at) per write

    async def body() -> None:
        rt = Runtime(Settings(history_path=tmp_path / "h.sqlite3", tick_rate=1000))
        rt.market = Market(rt.simulator_for(rt.universe))
        step = rt._step

        def slow_step(market: Market) -> tuple[TickBatch, runtime.Done]:
            time.sleep(0.0012)  # longer than the 1 ms period: every next step is due at once
            return step(market)

        def write(batch: TickBatch, state: str | None = None) -> None:
            resumes = None if state is None else SimulatorState.from_json(state).step
            written.append((batch.step, resumes))

        monkeypatch.setattr(rt, "_step", slow_step)
        monkeypatch.setattr(rt.history, "write", write)
        task = asyncio.create_task(rt._engine_loop(rt.market))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        rt._executor.shutdown(wait=True)

    asyncio.run(body())
    steps = [s for s, _ in written]
    assert steps == list(range(len(steps)))  # every step written once, in order
    assert len(steps) > 20
    runs = [s for s, resumes in written if resumes is not None]
    assert len(runs) < len(steps) / 2  # steps came in runs of several
    assert all(resumes == s + 1 for s, resumes in written if resumes is not None)  # the state after it
    assert written[-1][1] is not None  # a run ends with its state


def test_a_background_task_that_ignores_its_cancel_does_not_hold_the_stop_and_is_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime, "TASKS_STOP_S", 0.3)
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue  # swallows every cancel, as a library that retries might

    async def body() -> float:
        rt = Runtime(Settings(history_path=tmp_path / "h.sqlite3"))
        rt._spawn(stubborn(), "stubborn")
        await asyncio.sleep(0)
        t0 = time.monotonic()
        await rt.close()
        took = time.monotonic() - t0
        release.set()
        return took

    with caplog.at_level(logging.ERROR, logger="marketfeed.runtime"):
        took = asyncio.run(body())
    assert 0.3 <= took < 5.0
    messages = [r.getMessage() for r in caplog.records]
    assert any("background task stubborn did not end" in m and "stubborn" in m.split("stack:")[1]
               for m in messages), messages  # fmt: skip
