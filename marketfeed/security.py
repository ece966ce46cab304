"""Access control and abuse limits: API keys, connections per address, message rates.

Keys are compared in constant time and never logged: they travel in a header (`X-API-Key` or
`Authorization: Bearer`), or as `api_key=` in the query string for browsers, whose EventSource and
WebSocket cannot set headers; the access-log filter below redacts that parameter.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
from collections import Counter
from collections.abc import Sequence

from starlette.requests import HTTPConnection

_KEY_IN_QUERY = re.compile(r"(api_key=)[^&\s\"]*")


def presented_key(conn: HTTPConnection) -> str | None:
    header = conn.headers.get("x-api-key")
    if header:
        return header
    auth = conn.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return conn.query_params.get("api_key")


def key_allowed(presented: str | None, keys: Sequence[str]) -> bool:
    """True when no keys are configured, or `presented` equals one of them (constant time)."""
    if not keys:
        return True
    if presented is None:
        return False
    candidate = presented.encode()
    # Compare against every key, without stopping early, so timing says nothing about which matched.
    return sum(hmac.compare_digest(candidate, k.encode()) for k in keys) > 0


class RedactKeys(logging.Filter):
    """Removes `api_key=...` from log records (uvicorn's access log prints the query string)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.args = tuple(
                _KEY_IN_QUERY.sub(r"\1***", a) if isinstance(a, str) else a
                for a in (record.args if isinstance(record.args, tuple) else (record.args,))
            )
        if isinstance(record.msg, str) and "api_key=" in record.msg:
            record.msg = _KEY_IN_QUERY.sub(r"\1***", record.msg)
        return True


class ConnectionLimiter:
    """Open streams per client address: a bot's reconnect loop cannot starve everyone else."""

    def __init__(self, per_address: int) -> None:
        self.per_address = per_address
        self.open: Counter[str] = Counter()
        self.refused = 0

    def acquire(self, address: str) -> bool:
        if self.open[address] >= self.per_address:
            self.refused += 1
            return False
        self.open[address] += 1
        return True

    def release(self, address: str) -> None:
        self.open[address] -= 1
        if self.open[address] <= 0:
            del self.open[address]


class TokenBucket:
    """`rate` messages per second on average, bursts up to `burst`."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
