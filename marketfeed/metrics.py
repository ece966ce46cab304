"""Prometheus text exposition of the counters every component reports as a flat dict."""

from __future__ import annotations

from collections.abc import Mapping

PREFIX = "marketfeed_"


def render(values: Mapping[str, float]) -> str:
    lines = []
    for name in sorted(values):
        kind = "counter" if name.endswith("_total") else "gauge"
        lines.append(f"# TYPE {PREFIX}{name} {kind}")
        value = values[name]
        lines.append(f"{PREFIX}{name} {value:.9g}" if isinstance(value, float) else f"{PREFIX}{name} {value}")
    return "\n".join(lines) + "\n"
