"""Health of one backend, as `/health` reports it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    OK = "ok"
    DEGRADED = "degraded"  #: still serving, but a backend is failing (streams go on)
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class Health:
    status: Status
    detail: str = ""

    @classmethod
    def ok(cls, detail: str = "") -> Health:
        return cls(Status.OK, detail)

    @classmethod
    def degraded(cls, detail: str) -> Health:
        return cls(Status.DEGRADED, detail)
