"""The engine's pacing: a step a period, several in one go only while they are already due."""

from __future__ import annotations

import pytest

from marketfeed.schedule import BURST_S, Schedule


class Clock:
    """A wall clock that moves only when a step runs (each takes `step_s`) or the test moves it."""

    def __init__(self, step_s: float) -> None:
        self.now = 100.0
        self.step_s = step_s
        self.steps = 0

    def __call__(self) -> float:
        return self.now

    def step(self) -> int:
        self.now += self.step_s
        self.steps += 1
        return self.steps


def test_on_schedule_one_step_runs_at_a_time_and_the_loop_waits_for_the_next() -> None:
    clock = Clock(step_s=0.01)
    schedule = Schedule(0.1, clock)
    for k in range(1, 4):
        assert schedule.run(clock.step) == [k]
        assert schedule.delay() == pytest.approx(0.09)  # the period less the step's own time
        clock.now += schedule.delay()
    assert schedule.restarts == 0


def test_behind_schedule_the_due_steps_run_together_up_to_the_burst_limit() -> None:
    clock = Clock(step_s=0.002)  # an engine that takes the whole period for a step
    schedule = Schedule(0.002, clock)
    clock.now += 0.001  # and the loop was a little late: every next step is due when it is asked for
    made = schedule.run(clock.step)
    assert made == [1, 2, 3]  # then 6 ms had gone by, more than BURST_S: the loop gets them
    assert schedule.delay() == 0.0
    assert schedule.restarts == 0
    # A quick step catches up (due at .006, done at .0075; the next is due at .008): one, then a wait.
    clock.step_s = 0.0005
    assert schedule.run(clock.step) == [4]
    assert schedule.delay() == pytest.approx(0.0005)
    # Flat out (period 0) every step is due: a run stops at BURST_S, so the loop hears of them.
    flat = Schedule(0.0, clock)
    assert len(flat.run(clock.step)) == round(BURST_S / clock.step_s)
    assert flat.delay() == 0.0


def test_more_than_a_step_behind_the_schedule_restarts_instead_of_catching_up() -> None:
    clock = Clock(step_s=0.0)
    schedule = Schedule(0.1, clock)
    clock.now += 5.0  # a stalled machine: 50 steps late
    assert schedule.run(clock.step) == [1, 2]  # the late one, then a fresh schedule's first, at once
    assert schedule.restarts == 1
    assert schedule.delay() == pytest.approx(0.1)


def test_a_negative_or_missing_period_is_refused() -> None:
    with pytest.raises(ValueError, match="period must be >= 0"):
        Schedule(-1.0)
    with pytest.raises(ValueError, match="period must be >= 0"):
        Schedule(float("nan"))
