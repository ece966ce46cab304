"""The trading calendar: when a market is open, and how far into its session a moment is.

Pure functions of a timestamp (nanoseconds since the Unix epoch), so the tick layer can ask them once
per engine step and the tests can ask them about any date without waiting for it. Sessions are local
times in an IANA zone, so daylight saving time moves them in UTC by itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from datetime import time as clock
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

#: The `session` value of a market that never closes.
ALWAYS = "24/7"

#: Monday to Friday, as `datetime.weekday()` numbers them.
WEEKDAYS = frozenset(range(5))

_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_DAY_NS = 86_400 * 1_000_000_000


@dataclass(frozen=True, slots=True)
class Session:
    """A daily trading session in local time on weekdays, or (`hours` None) a market open 24/7."""

    hours: tuple[clock, clock] | None
    tz: ZoneInfo

    @property
    def always_open(self) -> bool:
        return self.hours is None

    def __str__(self) -> str:
        if self.hours is None:
            return ALWAYS
        return f"{self.hours[0]:%H:%M}-{self.hours[1]:%H:%M} {self.tz.key} Mon-Fri"


def zone(name: str) -> ZoneInfo:
    """The IANA time zone `name`, or a ValueError that says what is wrong."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"unknown time zone {name!r}: use an IANA name such as America/New_York "
            "(and install the system tz database or the tzdata package if it is missing)"
        ) from exc


def parse_session(spec: str, tz: str = "America/New_York") -> Session:
    """`24/7`, or `HH:MM-HH:MM` (local opening and closing times in `tz`, opening first)."""
    spec = spec.strip()
    if spec == ALWAYS:
        return Session(None, zone(tz))
    parts = spec.split("-")
    matches = [_HHMM.match(p.strip()) for p in parts]
    if len(parts) != 2 or not all(matches):
        raise ValueError(f"session must be 24/7 or HH:MM-HH:MM, e.g. 09:30-16:00 (got {spec!r})")
    open_, close = (clock(int(m.group(1)), int(m.group(2))) for m in matches if m)
    if open_ >= close:
        raise ValueError(f"session must open before it closes on the same day (got {spec!r})")
    return Session((open_, close), zone(tz))


def local_time(session: Session, ts_ns: int) -> datetime:
    return datetime.fromtimestamp(ts_ns / 1e9, session.tz)


def is_open(session: Session, ts_ns: int) -> bool:
    """Whether the market trades at `ts_ns`: inside the session's hours on a weekday."""
    return session_fraction(session, ts_ns) is not None


def session_fraction(session: Session, ts_ns: int) -> float | None:
    """How far into its session `ts_ns` lies, from 0 (the open) to 1 (the close); None when closed.

    A 24/7 market's session is the UTC day, so intraday seasonality still has a day to shape.
    """
    if session.hours is None:
        return (ts_ns % _DAY_NS) / _DAY_NS
    local = local_time(session, ts_ns)
    if local.weekday() not in WEEKDAYS:
        return None
    now = _seconds(local.time())
    start, end = (_seconds(t) for t in session.hours)
    if not start <= now < end:
        return None
    return (now - start) / (end - start)


def seasonal_factor(fraction: float, amplitude: float) -> float:
    """The U-shaped intraday multiplier of the trading rate, mean 1 over the session.

    1 + a * ((2u - 1)^2 - 1/3): the quadratic is highest at the open and the close, lowest at mid
    session, and its mean over [0, 1] is 1/3, so the multiplier averages to exactly 1 (the session's
    trade count does not depend on `amplitude`). It stays >= 0 for a <= 3.
    """
    return 1.0 + amplitude * ((2.0 * fraction - 1.0) ** 2 - 1.0 / 3.0)


def _seconds(t: clock) -> float:
    return t.hour * 3600 + t.minute * 60 + t.second + t.microsecond / 1e6
