"""The trading calendar: session hours in local time (DST included), weekends, the U-shaped seasonality."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from marketfeed.calendar import is_open, parse_session, seasonal_factor, session_fraction

NYSE = parse_session("09:30-16:00", "America/New_York")


def ns(year: int, month: int, day: int, hour: int, minute: int = 0) -> int:
    """A UTC wall-clock moment as the ticks' `ts`."""
    return int(datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp()) * 1_000_000_000


@pytest.mark.parametrize(
    ("month", "open_utc", "close_utc"),
    [(1, (14, 30), (21, 0)), (7, (13, 30), (20, 0))],  # EST is UTC-5, EDT UTC-4
    ids=["january-est", "july-edt"],
)
def test_the_session_follows_new_york_time_through_daylight_saving(
    month: int, open_utc: tuple[int, int], close_utc: tuple[int, int]
) -> None:
    day = 5 if month == 1 else 6  # a Monday in both months of 2026
    assert not is_open(NYSE, ns(2026, month, day, open_utc[0], open_utc[1] - 1))
    assert is_open(NYSE, ns(2026, month, day, *open_utc))
    assert session_fraction(NYSE, ns(2026, month, day, *open_utc)) == 0.0
    assert is_open(NYSE, ns(2026, month, day, close_utc[0] - 1, 59))
    assert not is_open(NYSE, ns(2026, month, day, *close_utc))  # the close itself is after the session
    mid = session_fraction(NYSE, ns(2026, month, day, open_utc[0] + 3, open_utc[1] + 15))  # 12:45 local
    assert mid == pytest.approx(0.5)


def test_weekends_are_closed_all_day() -> None:
    saturday, sunday, friday = 3, 4, 2  # January 2026
    for hour in range(24):
        assert not is_open(NYSE, ns(2026, 1, saturday, hour))
        assert not is_open(NYSE, ns(2026, 1, sunday, hour))
    assert is_open(NYSE, ns(2026, 1, friday, 15))


def test_a_24_7_market_is_always_open_and_its_session_is_the_utc_day() -> None:
    always = parse_session("24/7")
    assert always.always_open
    assert all(is_open(always, ns(2026, 1, 3, h)) for h in range(24))  # a Saturday
    assert session_fraction(always, ns(2026, 1, 3, 6)) == pytest.approx(0.25)


def test_other_zones_and_hours() -> None:
    tokyo = parse_session("09:00-15:00", "Asia/Tokyo")  # no DST: 00:00-06:00 UTC
    assert is_open(tokyo, ns(2026, 7, 6, 0))
    assert not is_open(tokyo, ns(2026, 7, 6, 6))
    assert str(tokyo) == "09:00-15:00 Asia/Tokyo Mon-Fri"


@pytest.mark.parametrize(
    ("spec", "tz", "message"),
    [
        ("9:30-16:00", "America/New_York", "HH:MM-HH:MM"),
        ("09:30", "America/New_York", "HH:MM-HH:MM"),
        ("24:00-25:00", "America/New_York", "HH:MM-HH:MM"),
        ("16:00-09:30", "America/New_York", "open before it closes"),
        ("09:30-16:00", "America/Gotham", "unknown time zone"),
    ],
)
def test_bad_sessions_are_refused_with_a_clear_message(spec: str, tz: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_session(spec, tz)


def test_seasonality_is_u_shaped_with_mean_one() -> None:
    u = (np.arange(100_000) + 0.5) / 100_000
    for amplitude in (0.0, 1.0, 3.0):
        factors = np.array([seasonal_factor(x, amplitude) for x in u])
        assert factors.mean() == pytest.approx(1.0, abs=1e-6)
        assert factors.min() >= 0.0
    assert seasonal_factor(0.0, 1.5) > seasonal_factor(0.25, 1.5) > seasonal_factor(0.5, 1.5)
    assert seasonal_factor(1.0, 1.5) == pytest.approx(seasonal_factor(0.0, 1.5))
    assert seasonal_factor(0.3, 0.0) == 1.0
