"""The fan-out hub: bounded queues, conflation of slow clients, the resume ring."""

from __future__ import annotations

import asyncio

import pytest

from marketfeed.streams.hub import Hub
from marketfeed.ticks import Tick, TickBatch

SYMBOLS = ["AAA", "BBB", "CCC"]


def batch(step: int) -> TickBatch:
    n = len(SYMBOLS)
    return TickBatch(
        step=step,
        ticks=[
            Tick(s, step + 1, step * n + i + 1, step * 10**9, 100.0 + step, 99.9, 100.1, 10, 0.2)
            for i, s in enumerate(SYMBOLS)
        ],
    )


def test_subscribers_get_every_batch_in_order() -> None:
    async def scenario() -> None:
        hub = Hub(client_queue=100)
        sub = hub.subscribe(frozenset({"BBB"}))
        for step in range(5):
            hub.publish(batch(step))
        got = await sub.get(1.0)
        assert [b.step for b in got] == [0, 1, 2, 3, 4]
        frame = got[0].ws_frame(sub.symbols)
        assert frame is not None
        assert '"BBB"' in frame
        assert '"AAA"' not in frame
        assert await sub.get(0.01) == []  # nothing more: times out empty

    asyncio.run(scenario())


def test_a_full_queue_conflates_to_the_latest_tick_per_symbol() -> None:
    async def scenario() -> None:
        hub = Hub(client_queue=4, slow_after=60)
        sub = hub.subscribe(None)
        for step in range(10):
            hub.publish(batch(step))
        got = await sub.get(1.0)
        ticks = [t for b in got for t in b.ticks]
        latest = {t.symbol: t.seq for t in ticks}
        assert latest == dict.fromkeys(SYMBOLS, 10)  # the newest tick of each symbol survives
        assert len(ticks) < 10 * len(SYMBOLS)
        assert sub.conflated_ticks == hub.conflated_ticks > 0
        gseqs = [t.gseq for t in ticks]
        assert gseqs == sorted(set(gseqs))

    asyncio.run(scenario())


def test_a_client_behind_for_too_long_is_closed_with_a_reason() -> None:
    async def scenario() -> None:
        hub = Hub(client_queue=2, slow_after=0.05)
        sub = hub.subscribe(None)
        other = hub.subscribe(None)
        for step in range(3):
            hub.publish(batch(step))
        await asyncio.sleep(0.1)
        for step in range(3, 6):
            hub.publish(batch(step))
            await other.get(0.1)  # a healthy client keeps up
        assert sub.closed_reason is not None
        assert sub.closed_reason.startswith("slow consumer")
        assert sub.closed.is_set()
        assert other.closed_reason is None
        assert hub.clients == 1
        assert hub.slow_disconnects == 1

    asyncio.run(scenario())


def test_the_ring_serves_recent_gaps_and_says_when_it_cannot() -> None:
    hub = Hub(ring_ticks=1000)
    assert hub.recent(0) is None  # nothing yet: the caller asks history
    for step in range(2, 400):
        hub.publish(batch(step))
    oldest = hub.oldest_gseq
    assert oldest is not None
    assert oldest > 7  # evicted down to about 1,000 ticks
    assert hub.recent(oldest - 5) is None
    recent = hub.recent(hub.last_gseq - 4)
    assert recent is not None
    assert [t.gseq for b in recent for t in b.ticks][-4:] == list(range(hub.last_gseq - 3, hub.last_gseq + 1))
    hub.publish(batch(100))  # a re-delivery of an old step is ignored
    assert hub.last_gseq == 400 * 3


@pytest.mark.parametrize("symbols", [None, frozenset({"AAA", "CCC"})])
def test_watchers_count_subscribers_per_symbol(symbols: frozenset[str] | None) -> None:
    hub = Hub()
    hub.publish(batch(0))
    sub = hub.subscribe(symbols)
    expected = symbols if symbols is not None else set(SYMBOLS)
    assert set(hub.watchers) == expected
    sub.set_symbols(frozenset({"BBB"}))
    assert dict(hub.watchers) == {"BBB": 1}
    hub.unsubscribe(sub)
    assert not hub.watchers


def test_a_direct_send_that_fails_leaves_that_client_on_its_queue_and_the_others_served(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        hub = Hub(client_queue=100)
        broken, fine = hub.subscribe(None), hub.subscribe(None)
        sent: list[int] = []

        def fails(b: TickBatch) -> bool:
            raise OSError("the connection broke mid-write")

        def works(b: TickBatch) -> bool:
            sent.append(b.step)
            return True

        broken.send_now, fine.send_now = fails, works
        for step in range(3):
            hub.publish(batch(step))  # would raise out of the engine task without the guard
        assert sent == [0, 1, 2]
        assert broken.send_now is None  # not tried again
        assert [b.step for b in await broken.get(1.0)] == [0, 1, 2]  # nothing lost: all queued
        assert fine.backlog == 0

    with caplog.at_level("ERROR", logger="marketfeed.streams.hub"):
        asyncio.run(scenario())
    assert [r.message for r in caplog.records].count(
        "a direct send failed; this client's frames take the queue from now on"
    ) == 1
