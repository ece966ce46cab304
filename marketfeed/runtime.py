"""The running server's moving parts: the engine loop, the edge consumer, and their backends.

Opened and closed by the app's lifespan (see ARCHITECTURE.md for the tasks and the shutdown order).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import logging
import resource
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson

from marketfeed.backends import make_bus, make_history, make_quote_cache
from marketfeed.config import Settings
from marketfeed.engine import SECONDS_PER_YEAR, Simulator, SimulatorState, Universe
from marketfeed.health import Status
from marketfeed.history.store import HistoryStore
from marketfeed.market import Market
from marketfeed.scenarios import Scenario, ScenarioBook, apply_crash
from marketfeed.schedule import Schedule
from marketfeed.security import ConnectionLimiter
from marketfeed.streams.bus import Bus
from marketfeed.streams.hub import Hub
from marketfeed.streams.quotes import QuoteCache
from marketfeed.ticks import TickBatch

log = logging.getLogger(__name__)


#: A shutdown phase slower than this is logged as a warning, with how long it took.
SLOW_SHUTDOWN_S = 1.0
STILL_RUNNING_S = 5.0
#: How long shutdown waits for the background tasks to end once cancelled (they end at once).
TASKS_STOP_S = 10.0
#: How long shutdown gives the quote cache, in all, for the updates still queued.
DRAIN_S = 2.0


@contextlib.asynccontextmanager
async def _timed(phase: str) -> AsyncIterator[None]:
    """Log a phase slower than SLOW_SHUTDOWN_S when it ends, and every STILL_RUNNING_S while it runs:
    a phase that never ends (a stop that a test harness killed after 60 s) then says which it was."""
    t0 = time.monotonic()

    async def watch() -> None:
        while True:
            await asyncio.sleep(STILL_RUNNING_S)
            log.warning("shutdown: %s still running after %.0f s", phase, time.monotonic() - t0)

    watchdog = asyncio.create_task(watch(), name=f"shutdown watchdog: {phase}")
    try:
        yield
    finally:
        watchdog.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watchdog
        if (took := time.monotonic() - t0) > SLOW_SHUTDOWN_S:
            log.warning("shutdown: %s took %.1f s", phase, took)


def quiet_garbage_collector() -> None:
    """Keep CPython's full collections out of the streams' latency (called once by `marketfeed serve`).

    The resume ring holds about a million live objects that turn over every minute or two, so the
    automatic collector ran a full collection every few seconds under load, each a 100-150 ms stop
    that was the whole p99 of 1,000 streaming clients (bench/fanout.py: p99 107-151 ms with it, 31-42
    ms without). Objects alive at start-up are frozen out of collections, young collections run
    every 50,000 allocations instead of 700, and full ones only when the runtime asks
    (`gc_full_seconds`), so cyclic garbage is still reclaimed. The ticks themselves are left untracked
    (`_engine.untrack_ticks`), so those full collections no longer walk the ring: 12-21 ms, not 150.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1_000_000_000)


def raise_open_file_limit() -> None:
    """Each client is a socket: lift the soft descriptor limit (often 1,024) to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class IncompatibleHistoryError(RuntimeError):
    """The history store holds a different market (another seed, universe, scheme or speed)."""


class NoEngineError(RuntimeError):
    """A control request reached a process that runs no engine (role edge)."""


#: How long a control request waits for the engine to take it (it runs between two steps).
COMMAND_TIMEOUT_S = 10.0

Event = dict[str, Any]


@dataclass
class Command:
    """A change to the market, run on the engine thread between two steps; `apply` returns the
    details of the event it becomes."""

    type: str
    apply: Callable[[Market], Event]
    done: asyncio.Future[Event]


#: A step's commands, each with the event it became or the error it raised.
Done = list[tuple[Command, Event | Exception]]


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.universe = Universe.from_json(settings.universe) if settings.universe else Universe.default()
        if settings.hurst is not None:
            self.universe = self.universe.with_hurst(settings.hurst)
        self.universe.validate()
        self.symbols = self.universe.symbols
        self.hub = Hub(
            ring_ticks=settings.ring_ticks,
            client_queue=settings.client_queue,
            slow_after=settings.slow_client_seconds,
        )
        self.bus = make_bus(settings)
        self.quotes = make_quote_cache(settings)
        self.history = make_history(settings)
        self.market: Market | None = None
        self.limiter = ConnectionLimiter(settings.max_connections_per_ip)
        self.shutdown = asyncio.Event()
        self.started_ns = time.time_ns()
        self.steps = 0
        self.ticks_generated = 0
        self.late_steps = 0
        self.quote_updates_dropped = 0
        self._commands: deque[Command] = deque()
        self.scenario_log: list[Event] = []
        self.book = ScenarioBook(dt_seconds=settings.dt_years * SECONDS_PER_YEAR)
        self.active_scenarios: list[dict[str, Any]] = []  #: the book's report after the latest step
        self.overlay: dict[str, Any] = {"var_scale": 1.0, "correlation": None}
        self._overlay_set = False
        self._changed_universe: dict[str, Any] | None = None  #: after /admin/params: saved with the state
        self.step_seconds = 0.0
        self.gc_pause_seconds = 0.0
        self._cache_queue: asyncio.Queue[TickBatch] = asyncio.Queue(maxsize=64)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="engine")
        self._tasks: list[asyncio.Task[None]] = []

    # --- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        raise_open_file_limit()
        await self.history.start()
        await self.quotes.start()
        await self.bus.start()
        if self.settings.runs_engine:
            self.market = await self._make_market()
            self._spawn(self._engine_loop(self.market), "engine")
            self._spawn(self._cache_writer(), "quote-cache")
        else:
            self._spawn(self._edge_loop(), "edge")
        self._spawn(self._watchers_loop(), "watchers")
        if self.settings.gc_full_seconds:
            self._spawn(self._gc_loop(self.settings.gc_full_seconds), "gc")

    async def _make_market(self) -> Market:
        s = self.settings
        saved = await self.history.load_state()
        if saved is None:
            return Market(self.simulator_for(self.universe), spread_bps=s.spread_bps, trades=s.trade_model)
        try:
            state = SimulatorState.from_json(saved)
            # Parameters changed over /admin/params and the scenarios in force were saved with the
            # state: the path carries on with them, as if the server had never stopped.
            changed = state.control.get("universe")
            universe = self.universe if changed is None else Universe.from_dict(changed)
            if universe.symbols != self.symbols:
                raise ValueError(f"its symbols are {universe.symbols}, the settings' {self.symbols}")
            market = Market(self.simulator_for(universe), spread_bps=s.spread_bps, trades=s.trade_model)
            market.restore(state)
            if "scenarios" in state.control:
                self.book.restore(state.control["scenarios"])
        except ValueError as exc:
            raise IncompatibleHistoryError(
                f"the history store holds another market ({exc}); use the settings it was made with "
                "or point MARKETFEED_HISTORY_PATH / MARKETFEED_DATABASE somewhere else"
            ) from exc
        if changed is not None:
            self.universe, self._changed_universe = universe, changed
            log.warning("resumed with the parameters last set over /admin/params, not the configured ones")
        log.info("resumed the engine at step %d from the history store", market.next_step)
        return market

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._task_done)
        self._tasks.append(task)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    async def close(self) -> None:
        """Stop producing, tell clients, then flush every backend (history last: it holds the most).

        A phase slower than SLOW_SHUTDOWN_S is logged as a warning, so a stop that takes long says
        where its time went (a broker slow to confirm, a database slow to take the last batch)."""
        self.shutdown.set()
        async with _timed("stopping the background tasks"):
            for task in self._tasks:
                task.cancel()
            # Bounded: a task that does not end when cancelled must not keep the backends below from
            # flushing what they hold (a stop in CI once waited here until the harness killed it).
            stuck = (await asyncio.wait(self._tasks, timeout=TASKS_STOP_S))[1] if self._tasks else set()
            for task in stuck:
                stack = io.StringIO()
                task.print_stack(file=stack)
                log.error(
                    "shutdown: background task %s did not end within %.0f s of its cancel; going on without "
                    "it. Its stack:\n%s",
                    task.get_name(),
                    TASKS_STOP_S,
                    stack.getvalue(),
                )
        self._tasks.clear()
        while self._commands:  # their requests would otherwise wait for a step that never comes
            command = self._commands.popleft()
            if not command.done.done():
                command.done.set_exception(NoEngineError("the server is shutting down"))
        self.hub.close_all("server shutting down")
        async with _timed("writing the last quotes"):
            await self._drain_cache_queue()
        for what, closer in (("bus", self.bus), ("quote cache", self.quotes), ("history", self.history)):
            async with _timed(f"closing the {what} ({closer.name})"):
                try:
                    await closer.close()
                except Exception:
                    log.exception("error while closing the %s", what)
        self._executor.shutdown(wait=True)

    # --- engine side -----------------------------------------------------------------------------
    def _steps(self, market: Market, schedule: Schedule) -> tuple[list[tuple[TickBatch, Done]], str]:
        """On the engine thread: the steps that are due, and the state after the last of them (all a
        store keeps is the state that goes with its newest ticks: one per run of steps is enough)."""
        return schedule.run(lambda: self._step(market)), self._state(market)

    def _step(self, market: Market) -> tuple[TickBatch, Done]:
        # Commands and the overlay are applied here, on the engine thread that owns the simulator.
        done = []
        while self._commands:
            done.append(self._run_command(market, self._commands.popleft()))
        self._apply_overlay(market)
        return market.step(), done

    def _state(self, market: Market) -> str:
        state = market.state()
        if self._changed_universe is not None or self.book.used:
            state.control["universe"] = self._changed_universe
            state.control["scenarios"] = self.book.to_dict()
        return state.to_json()

    @staticmethod
    def _run_command(market: Market, command: Command) -> tuple[Command, Event | Exception]:
        record: Event = {"type": command.type, "at_step": market.next_step, "ts": time.time_ns()}
        try:
            return command, {**record, **command.apply(market)}
        except Exception as exc:  # the request that sent it gets the error; the engine goes on
            return command, exc

    def _apply_overlay(self, market: Market) -> None:
        if not self.book.active and not self._overlay_set:
            return
        sim, step = market.sim, market.next_step
        overlay = self.book.overlay(step, sim.universe.regime_correlations()[sim.regime])
        sim.set_overlay(overlay.var_scale, overlay.correlation)
        self._overlay_set = not overlay.neutral
        corr = overlay.correlation
        self.overlay = {
            "var_scale": overlay.var_scale,
            "correlation": None if corr is None else corr.round(6).tolist(),
        }
        self.active_scenarios = self.book.report(step)

    def _record_events(self, done: Done) -> None:
        """Announce and store the events of a step's commands, before that step's ticks."""
        for command, outcome in done:
            if isinstance(outcome, Exception):
                if not command.done.done():
                    command.done.set_exception(outcome)
                continue
            if not command.done.done():  # else its request gave up waiting; the change happened anyway
                command.done.set_result(outcome)
            self.scenario_log.append(outcome)
            self.hub.announce(orjson.dumps(outcome))
            self.history.write_event(outcome)

    async def _command(self, kind: str, apply: Callable[[Market], Event]) -> Event:
        """Queue a change for the engine thread and wait for the event it becomes."""
        if self.market is None:
            raise NoEngineError("this process runs no engine (role edge)")
        done: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._commands.append(Command(kind, apply, done))
        return await asyncio.wait_for(asyncio.shield(done), COMMAND_TIMEOUT_S)

    async def inject(self, scenario: Scenario) -> Event:
        """Apply a (validated) scenario before the next step; returns its event."""

        def apply(market: Market) -> Event:
            if scenario.kind == "crash":
                apply_crash(market, scenario)
            return {"id": self.book.add(scenario, market.next_step), **scenario.to_dict()}

        return await self._command("scenario", apply)

    async def clear_scenarios(self) -> Event:
        """End every active overlay before the next step (a crash already happened: it stays)."""
        return await self._command("scenarios_cleared", lambda market: {"cleared": self.book.clear()})

    def simulator_for(self, universe: Universe) -> Simulator:
        """A simulator of `universe` with this market's settings; raises ValueError naming a bad
        parameter. Built on the event loop, so the request sees the error; the engine thread then only
        moves the state into it."""
        s = self.settings
        return Simulator(
            universe,
            dt=s.dt_years,
            seed=s.seed,
            scheme=s.scheme,
            jumps=s.jumps,
            rough_factors=s.rough_factors,
        )

    async def change_params(self, universe: Universe, sim: Simulator, changes: dict[str, Any]) -> Event:
        """Carry on with `sim` (of `universe`) from the next step; `changes` describes the event."""
        if self.market is None:
            raise NoEngineError("this process runs no engine (role edge)")
        self.universe = universe  # the next change builds on this one even before it is applied

        def apply(market: Market) -> Event:
            market.replace_simulator(sim)
            self._changed_universe = universe.to_dict()  # saved with every state from now on
            return {"changes": changes}

        return await self._command("params", apply)

    async def _engine_loop(self, market: Market) -> None:
        loop = asyncio.get_running_loop()
        schedule = Schedule(1.0 / self.settings.tick_rate)
        while True:
            t0 = time.perf_counter()
            steps, state = await loop.run_in_executor(self._executor, self._steps, market, schedule)
            self.step_seconds = (time.perf_counter() - t0) / len(steps)
            self.late_steps = schedule.restarts
            # Everything but the bus first, with no await between two steps: the history's writer
            # cannot then take a step's ticks without the state that goes with the run's last one.
            for i, (batch, done) in enumerate(steps):
                self.steps += 1
                self.ticks_generated += len(batch)
                self._record_events(done)
                # Even without ticks: the state moved on (overnight).
                self.history.write(batch, state if i == len(steps) - 1 else None)
                if batch.ticks:  # a closed market, or no trade arrived: nothing for clients or caches
                    if self.settings.serves_clients:
                        self.hub.publish(batch)
                    self._queue_cache_update(batch)
            for batch, _ in steps:
                if batch.ticks:
                    await self.bus.publish(batch)
            await asyncio.sleep(schedule.delay())

    def _queue_cache_update(self, batch: TickBatch) -> None:
        if self._cache_queue.full():  # a slow cache backend loses its oldest update, not the engine's time
            self._cache_queue.get_nowait()
            self.quote_updates_dropped += 1
        self._cache_queue.put_nowait(batch)

    async def _cache_writer(self) -> None:
        while True:
            batch = await self._cache_queue.get()
            try:
                await self.quotes.update(batch)
            except Exception as exc:  # the backend reports itself degraded; streams go on
                log.warning("quote cache update failed: %s", exc)
                await asyncio.sleep(0.5)

    async def _drain_cache_queue(self) -> None:
        """The quote updates still queued, within DRAIN_S in all (not each: 64 queued updates to an
        unreachable cache would otherwise hold the stop for minutes)."""
        deadline = time.monotonic() + DRAIN_S
        while not self._cache_queue.empty():
            batch = self._cache_queue.get_nowait()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.quotes.update(batch), max(deadline - time.monotonic(), 0.0))
            if time.monotonic() >= deadline:
                dropped = self._cache_queue.qsize()
                self.quote_updates_dropped += dropped
                log.warning("shutdown: the quote cache took no more updates in %.0f s; %d dropped",
                            DRAIN_S, dropped)  # fmt: skip
                return

    # --- edge side -------------------------------------------------------------------------------
    async def _edge_loop(self) -> None:
        async for batch in self.bus.subscribe():
            self.ticks_generated += len(batch)
            self.hub.publish(batch)

    async def _gc_loop(self, every: float) -> None:
        """The full garbage collections `quiet_garbage_collector` took off the automatic schedule."""
        while True:
            await asyncio.sleep(every)
            t0 = time.perf_counter()
            gc.collect()
            self.gc_pause_seconds = time.perf_counter() - t0

    async def _watchers_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            with contextlib.suppress(Exception):
                await self.quotes.set_watchers(dict(self.hub.watchers))

    # --- observability ---------------------------------------------------------------------------
    def health(self) -> dict[str, object]:
        backends: dict[str, Bus | QuoteCache | HistoryStore] = {
            "bus": self.bus,
            "quotes": self.quotes,
            "history": self.history,
        }
        report: dict[str, dict[str, str]] = {}
        status = Status.OK
        for role, backend in backends.items():
            h = backend.health()
            report[role] = {"name": backend.name, "status": h.status.value, "detail": h.detail}
            if h.status is not Status.OK:
                status = Status.DEGRADED
        if any(t.done() for t in self._tasks) and not self.shutdown.is_set():
            status = Status.DEGRADED
            report["engine"] = {"name": "engine", "status": "degraded", "detail": "a background task stopped"}
        return {
            "status": status.value,
            "role": self.settings.role.value,
            "step": self.market.next_step if self.market else None,
            "last_gseq": self.hub.last_gseq,
            "clients": self.hub.clients,
            "backends": report,
        }

    def metrics(self) -> dict[str, float]:
        m: dict[str, float] = {
            "ticks_generated_total": self.ticks_generated,
            "engine_steps_total": self.steps,
            "engine_late_steps_total": self.late_steps,
            "engine_step_seconds": self.step_seconds,
            "gc_full_collection_seconds": self.gc_pause_seconds,
            "clients": self.hub.clients,
            "ticks_published_total": self.hub.published_ticks,
            "queue_conflated_ticks_total": self.hub.conflated_ticks,
            "slow_client_disconnects_total": self.hub.slow_disconnects,
            "direct_writes_total": self.hub.sent_now,
            "quote_updates_dropped_total": self.quote_updates_dropped,
            "connections_refused_total": self.limiter.refused,
        }
        for backend in (self.bus, self.quotes, self.history):
            m.update(backend.metrics())
        return m
