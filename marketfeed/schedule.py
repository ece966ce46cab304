"""When the engine steps: on a fixed wall-clock schedule, and how it catches up when it falls behind.

The engine thread runs the steps that are due in one go (`Schedule.run`) and hands them to the event
loop together. Handing each step over alone costs two thread wake-ups (the loop's, then the engine
thread's): 0.7 ms a step on the 2-core VMs here, which held an engine of 1,000 assets running flat out
to about half the ticks it makes in a plain loop (docs/performance.md, section 3). On schedule, one
step is due at a time and nothing changes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: The longest the engine thread keeps stepping before it hands what it made to the loop: the latency
#: that batching adds to the first step of a run, and only when the engine is behind schedule.
BURST_S = 0.005


class Schedule:
    """A step every `period` seconds (0: as fast as the engine goes); not thread-safe: `run` is called
    on the engine thread, `delay` on the loop after it, never both at once."""

    def __init__(self, period: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not period >= 0:
            raise ValueError(f"period must be >= 0 seconds (got {period!r})")
        self.period = period
        self.clock = clock
        self.due = clock()  #: when the next step is due
        self.restarts = 0  #: times it was more than a step behind and started the schedule afresh

    def run(self, step: Callable[[], T]) -> list[T]:
        """Run the step that is due, then each next one that is already due too, for up to BURST_S;
        return what they made, in order."""
        start = self.clock()
        made = [step()]
        while True:
            self._advance()
            now = self.clock()
            if self.due > now or now - start >= BURST_S:
                return made
            made.append(step())

    def delay(self) -> float:
        """Seconds until the next step is due (0 if it is already)."""
        return max(0.0, self.due - self.clock())

    def _advance(self) -> None:
        self.due += self.period
        now = self.clock()
        if self.period and now - self.due > self.period:
            # More than a step behind (a stalled machine): restart the schedule rather than run every
            # missed step at once, which would spike every client's latency.
            self.restarts += 1
            self.due = now
