"""Pydantic models of what the API returns: for the OpenAPI document (responses are encoded with
orjson directly, so these models document the shape without costing a validation per tick)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class TickModel(BaseModel):
    symbol: str = Field(description="instrument symbol", examples=["NOVA"])
    seq: int = Field(description="per-symbol sequence number: 1, 2, 3, ... with no gaps")
    gseq: int = Field(description="global sequence number, strictly increasing (the SSE event id)")
    ts: int = Field(description="generation time, nanoseconds since the Unix epoch (UTC)")
    time: str = Field(description="`ts` as ISO 8601 UTC", examples=["2026-11-25T10:00:00.123456Z"])
    price: float = Field(description="last trade price")
    bid: float = Field(description="best bid")
    ask: float = Field(description="best ask")
    size: int = Field(description="shares traded since the previous tick of the symbol")
    vol: float = Field(description="instantaneous annualised volatility sqrt(v_t) of the Heston model")


class CandleModel(BaseModel):
    start: int = Field(description="bucket start, ns since the epoch, aligned to the interval (UTC)")
    time: str = Field(description="`start` as ISO 8601 UTC")
    open: float
    high: float
    low: float
    close: float
    volume: int = Field(description="sum of trade sizes")
    trades: int = Field(description="number of ticks in the bucket")
    vwap: float = Field(description="volume-weighted average price")


class TicksPage(BaseModel):
    symbol: str
    ticks: list[TickModel]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")


class CandlesPage(BaseModel):
    symbol: str
    interval: str
    candles: list[CandleModel]


class QuotesResponse(BaseModel):
    quotes: list[TickModel]


class SymbolInfo(BaseModel):
    symbol: str
    name: str
    sector: str
    s0: float = Field(description="initial price")


class ErrorResponse(BaseModel):
    detail: str = Field(description="what was wrong with the request")


class EventModel(BaseModel):
    """A market event; the other fields depend on `type`."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="scenario, scenarios_cleared or params")
    at_step: int = Field(description="the first engine step it affects (its ticks have seq > at_step)")
    ts: int = Field(description="when it was applied, ns since the Unix epoch (UTC)")


class EventsPage(BaseModel):
    events: list[EventModel]


class ParamsResponse(BaseModel):
    step: int | None = Field(description="the next engine step (null on an edge)")
    dt_seconds: float = Field(description="simulated seconds per step")
    factors: list[str]
    correlation: list[list[float]] = Field(description="the model's factor correlation")
    assets: list[dict[str, Any]] = Field(description="per-asset Heston, jump and factor parameters")
    regimes: list[dict[str, Any]] | None = None
    regime_rates: list[list[float]] | None = None
    scenarios: list[dict[str, Any]] = Field(
        description="active scenarios: `strength` is 1 when injected, 0.5 one half-life later"
    )
    overlay: dict[str, Any] = Field(
        description="what the prices see now: `var_scale` and the factor `correlation` (null: the model's)"
    )
