"""OHLCV candles: the intervals we serve and the record every store returns."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from marketfeed.ticks import iso_time


class Interval(StrEnum):
    S1 = "1s"
    M1 = "1m"
    M5 = "5m"
    M15 = "15m"
    H1 = "1h"
    D1 = "1d"

    @property
    def seconds(self) -> int:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[self.value[-1]]
        return int(self.value[:-1]) * unit

    @property
    def nanoseconds(self) -> int:
        return self.seconds * 1_000_000_000


@dataclass(frozen=True, slots=True)
class Candle:
    """Trades of one symbol in [start, start + interval): open is the first trade, close the last."""

    start: int  #: bucket start, ns since the epoch, aligned to the interval in UTC
    open: float
    high: float
    low: float
    close: float
    volume: int  #: sum of trade sizes
    trades: int  #: number of ticks
    vwap: float  #: volume-weighted average price

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "time": iso_time(self.start),
            "open": self.open,
            "high": self.high,
            "low": self.low,
            "close": self.close,
            "volume": self.volume,
            "trades": self.trades,
            "vwap": round(self.vwap, 6),
        }
