"""CPU time of other processes, read from /proc/<pid>/stat (Linux): the benchmarks count what a
server spends per frame or per tick, which is steadier on two shared cores than a rate is."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def stat_fields(pid: int | str) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name, so fields[1] is the parent's pid and
    fields[11:15] are utime, stime, cutime and cstime in clock ticks. The name is cut off at its
    last ')' because it may hold spaces and parentheses of its own."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pids: Iterable[int]) -> float:
    """User and system CPU time of these processes so far (not their children's)."""
    ticks = 0
    for pid in pids:
        fields = stat_fields(pid)
        ticks += int(fields[11]) + int(fields[12])
    return ticks / CLOCK_TICKS


def tree_cpu_seconds(parent: int) -> float:
    """CPU time of `parent`, its children alive now, and the children it has reaped: a server that
    forks a process per connection (PostgreSQL's postmaster) counted whole."""
    ticks = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = stat_fields(entry.name)
        except OSError:  # gone meanwhile: its time is in the parent's reaped children
            continue
        if int(entry.name) == parent:
            ticks += sum(int(f) for f in fields[11:15])
        elif int(fields[1]) == parent:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLOCK_TICKS
