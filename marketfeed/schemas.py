"""Pydantic models of what the API returns: for the OpenAPI document (responses are encoded with
orjson directly, so these models document the shape without costing a validation per tick)."""

from __future__ import annotations

from pydantic import BaseModel, Field


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
