"""OHLCV candles: the intervals we serve and the record every store returns."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
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

    @classmethod
    def of(
        cls,
        start: int,
        open: float,
        high: float,
        low: float,
        close: float,
        volume: int,
        trades: int,
        pv: float,
    ) -> Candle:
        """From a bucket's aggregates; pv is the sum of price times size."""
        volume = int(volume)
        return cls(start, open, high, low, close, volume, int(trades), pv / volume if volume else close)

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


#: A bucket's aggregates as stores compute them: (start, open, high, low, close, volume, trades, pv,
#: first_gseq, last_gseq), pv being the sum of price times size (so buckets add up; the vwap is
#: pv / volume), first_gseq and last_gseq those of the open and the close.
Bucket = Sequence[Any]


def merge_buckets(buckets: Iterable[Bucket], interval_ns: int, limit: int) -> list[Candle]:
    """Candles of `interval_ns` from finer buckets in time order (one-minute ones into an hour, say):
    the extremes, the sums, and the open and close of the first and last trade by gseq, which need
    not be in the first and last bucket (a clock set back puts later trades in earlier minutes)."""
    out: list[Candle] = []
    acc: list[Any] | None = None
    for b in buckets:
        start = b[0] // interval_ns * interval_ns
        if acc is not None and acc[0] == start:
            acc[2], acc[3] = max(acc[2], b[2]), min(acc[3], b[3])
            acc[5], acc[6], acc[7] = acc[5] + b[5], acc[6] + b[6], acc[7] + b[7]
            if b[8] < acc[8]:
                acc[1], acc[8] = b[1], b[8]
            if b[9] > acc[9]:
                acc[4], acc[9] = b[4], b[9]
            continue
        if acc is not None:
            out.append(Candle.of(*acc[:8]))
            if len(out) == limit:
                return out
        acc = [start, b[1], b[2], b[3], b[4], int(b[5]), int(b[6]), b[7], b[8], b[9]]
    if acc is not None and len(out) < limit:
        out.append(Candle.of(*acc[:8]))
    return out
