"""HTTP and WebSocket routes. Handlers parse and check input, then ask the runtime; nothing else."""

from __future__ import annotations

import asyncio
import csv
import io
import warnings
from collections.abc import AsyncIterator, Awaitable, Iterable, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, WebSocket
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from marketfeed import analytics, metrics, scenarios
from marketfeed.engine import SECONDS_PER_YEAR, FellerConditionWarning, build_info
from marketfeed.history.candles import Candle, Interval
from marketfeed.runtime import COMMAND_TIMEOUT_S, Event, NoEngineError, Runtime
from marketfeed.scenarios import DEFAULT_HALF_LIFE, Scenario
from marketfeed.schemas import (
    CandlesPage,
    ErrorResponse,
    EventsPage,
    ParamsResponse,
    QuotesResponse,
    SymbolInfo,
    TicksPage,
)
from marketfeed.security import key_allowed, presented_key
from marketfeed.streams.sse import EventStream
from marketfeed.streams.websocket import CLOSE_POLICY, CLOSE_TRY_AGAIN, Session
from marketfeed.ticks import SCHEMA_VERSION, sse_event

router = APIRouter()

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "malformed or inconsistent parameters"},
    401: {"model": ErrorResponse, "description": "missing or invalid API key (when keys are configured)"},
    404: {"model": ErrorResponse, "description": "unknown symbol"},
}

TICK_FIELDS = ["symbol", "seq", "gseq", "ts", "time", "price", "bid", "ask", "size", "vol"]
CANDLE_FIELDS = ["start", "time", "open", "high", "low", "close", "volume", "trades", "vwap"]


class Format(StrEnum):
    JSON = "json"
    CSV = "csv"


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


async def require_api_key(
    request: Request,
    x_api_key: Annotated[str | None, Header(description="an API key, when the server requires one")] = None,
) -> None:
    if not key_allowed(presented_key(request), runtime(request).settings.api_keys):
        raise HTTPException(
            401,
            "missing or invalid API key: send it as X-API-Key, Authorization: Bearer, or api_key=",
            headers={"www-authenticate": "Bearer"},
        )


KEYED = [Depends(require_api_key)]


async def require_admin_key(request: Request) -> None:
    if not key_allowed(presented_key(request), runtime(request).settings.admin_keys):
        raise HTTPException(401, "missing or invalid admin key", headers={"www-authenticate": "Bearer"})


ADMIN = [Depends(require_admin_key)]

#: The history endpoints also answer `format=csv`.
WITH_CSV: dict[int | str, dict[str, Any]] = {**ERRORS, 200: {"content": {"text/csv": {}}}}


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status_code=status, media_type="application/json")


def parse_symbols(rt: Runtime, raw: str | None, *, required: bool) -> frozenset[str] | None:
    """`A,B,C` -> the set, checked against the universe (404 naming the unknown ones)."""
    if raw is None or raw.strip() in ("", "*"):
        if required and raw is None:
            raise HTTPException(400, "symbols is required, e.g. symbols=NOVA,QBIT (or * for all)")
        return None
    wanted = frozenset(s.strip().upper() for s in raw.split(",") if s.strip())
    if not wanted:
        raise HTTPException(400, "symbols must be a comma-separated list, e.g. symbols=NOVA,QBIT")
    unknown = sorted(wanted - set(rt.symbols))
    if unknown:
        raise HTTPException(404, f"unknown symbols: {', '.join(unknown[:20])}")
    return wanted


def one_symbol(rt: Runtime, raw: str) -> str:
    symbol = raw.strip().upper()
    if symbol not in rt.symbols:
        raise HTTPException(404, f"unknown symbol {raw!r}; GET /symbols lists them")
    return symbol


def to_ns(value: datetime | None, name: str) -> int | None:
    if value is None:
        return None
    if value.tzinfo is None:  # a naive time means UTC, as everywhere in this API
        value = value.replace(tzinfo=UTC)
    delta = value - datetime(1970, 1, 1, tzinfo=UTC)
    ns = (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
    if not 0 <= ns < 2**63:
        raise HTTPException(400, f"{name} must lie between 1970-01-01 and 2262-04-11 (nanosecond timestamps)")
    return ns


def time_range(start: datetime | None, end: datetime | None) -> tuple[int | None, int | None]:
    s, e = to_ns(start, "start"), to_ns(end, "end")
    if s is not None and e is not None and s >= e:
        raise HTTPException(400, "start must be before end")
    return s, e


def csv_response(rows: Iterable[dict[str, Any]], fields: Sequence[str], filename: str) -> Response:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return Response(
        buf.getvalue(),
        media_type="text/csv",
        headers={"content-disposition": f'attachment; filename="{filename}"'},
    )


StartQ = Annotated[
    datetime | None, Query(description="inclusive, ISO 8601 or Unix seconds; default: the beginning")
]
EndQ = Annotated[datetime | None, Query(description="exclusive, ISO 8601 or Unix seconds; default: now")]


# --- reference data --------------------------------------------------------------------------------
@router.get("/symbols", response_model=list[SymbolInfo], tags=["reference"])
async def symbols(request: Request) -> Response:
    rt = runtime(request)
    return json_response(
        [{"symbol": a.symbol, "name": a.name, "sector": a.sector, "s0": a.s0} for a in rt.universe.assets]
    )


@router.get("/model", tags=["reference"], summary="The live model parameters")
async def model(request: Request) -> Response:
    rt = runtime(request)
    s = rt.settings
    return json_response(
        {
            "schema_version": SCHEMA_VERSION,
            "seed": s.seed,
            # The scheme in use: a universe with rough assets runs the lifted scheme whatever was asked.
            "scheme": rt.market.sim.scheme.value if rt.market else s.scheme.value,
            "rough_factors": s.rough_factors,
            # Which compiled code steps the market (the Docker image's portable build picks one of its
            # AVX-512 / AVX2 / baseline copies at load time); none on an edge, which runs no engine.
            "engine_build": build_info() if rt.market else None,
            "jumps": s.jumps,
            "tick_rate": s.tick_rate,
            "speed": s.speed,
            "dt_seconds": s.dt_years * SECONDS_PER_YEAR,
            "dt_years": s.dt_years,
            "ticks": {
                "spread_bps": s.spread_bps,
                "arrivals": s.arrivals.value,
                "trade_rate": s.trade_rate,
                "hawkes_decay": s.hawkes_decay,
                "hawkes_jump": s.hawkes_jump,
                "seasonality": s.seasonality,
                "session": s.session,
                "session_tz": s.session_tz,
            },
            "step": rt.market.next_step if rt.market else None,
            **rt.universe.to_dict(),
            "implied_correlation": rt.universe.implied_correlation().round(4).tolist(),
        }
    )


# --- quotes and history -----------------------------------------------------------------------------
@router.get(
    "/quotes/latest", response_model=QuotesResponse, responses=ERRORS, tags=["quotes"], dependencies=KEYED
)
async def latest_quotes(
    request: Request,
    symbols: Annotated[str | None, Query(description="comma-separated; default: all")] = None,
) -> Response:
    rt = runtime(request)
    wanted = parse_symbols(rt, symbols, required=False)
    names = sorted(wanted) if wanted is not None else rt.symbols
    quotes = await rt.quotes.latest(names)
    for name in names:  # an edge's own hub knows quotes a cold cache does not
        if name not in quotes and name in rt.hub.latest:
            quotes[name] = rt.hub.latest[name]
    return json_response({"quotes": [quotes[n].to_dict() for n in names if n in quotes]})


@router.get(
    "/history/ticks", response_model=TicksPage, responses=WITH_CSV, tags=["history"], dependencies=KEYED
)
async def history_ticks(
    request: Request,
    symbol: Annotated[str, Query(description="one symbol")],
    start: StartQ = None,
    end: EndQ = None,
    limit: Annotated[
        int, Query(ge=1, description="rows per page (capped by the server's history limit)")
    ] = 1000,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
    format: Annotated[Format, Query(description="json, or csv for a download")] = Format.JSON,
) -> Response:
    rt = runtime(request)
    sym = one_symbol(rt, symbol)
    s, e = time_range(start, end)
    limit = min(limit, rt.settings.history_limit)
    after = 0
    if cursor is not None:
        if not cursor.isdigit() or len(cursor) > 19:
            raise HTTPException(400, "cursor must be a next_cursor value returned by this endpoint")
        after = int(cursor)
    ticks = await rt.history.ticks(
        symbols=frozenset([sym]), start_ns=s, end_ns=e, after_gseq=after, limit=limit
    )
    if format is Format.CSV:
        return csv_response((t.to_dict() for t in ticks), TICK_FIELDS, f"{sym}-ticks.csv")
    next_cursor = str(ticks[-1].gseq) if len(ticks) == limit else None
    return json_response({"symbol": sym, "ticks": [t.to_dict() for t in ticks], "next_cursor": next_cursor})


@router.get(
    "/history/candles", response_model=CandlesPage, responses=WITH_CSV, tags=["history"], dependencies=KEYED
)
async def history_candles(
    request: Request,
    symbol: Annotated[str, Query(description="one symbol")],
    interval: Annotated[Interval, Query(description="bucket width")] = Interval.M1,
    start: StartQ = None,
    end: EndQ = None,
    limit: Annotated[int, Query(ge=1, description="most candles returned (oldest first)")] = 1000,
    format: Annotated[Format, Query(description="json, or csv for a download")] = Format.JSON,
) -> Response:
    rt = runtime(request)
    sym = one_symbol(rt, symbol)
    s, e = time_range(start, end)
    limit = min(limit, rt.settings.history_limit)
    candles: list[Candle] = await rt.history.candles(
        symbol=sym, interval=interval, start_ns=s, end_ns=e, limit=limit
    )
    if format is Format.CSV:
        return csv_response((c.to_dict() for c in candles), CANDLE_FIELDS, f"{sym}-{interval.value}.csv")
    return json_response(
        {"symbol": sym, "interval": interval.value, "candles": [c.to_dict() for c in candles]}
    )


@router.get(
    "/history/events",
    response_model=EventsPage,
    responses=ERRORS,
    tags=["history"],
    dependencies=KEYED,
    summary="Market events (scenarios, cleared scenarios, parameter changes), oldest first",
)
async def history_events(
    request: Request,
    start: StartQ = None,
    end: EndQ = None,
    limit: Annotated[int, Query(ge=1, description="most events returned (oldest first)")] = 1000,
) -> Response:
    rt = runtime(request)
    s, e = time_range(start, end)
    events = await rt.history.events(start_ns=s, end_ns=e, limit=min(limit, rt.settings.history_limit))
    return json_response({"events": events})


# --- analytics ---------------------------------------------------------------------------------------
class Strategy(StrEnum):
    MA_CROSSOVER = "ma_crossover"
    MOMENTUM = "momentum"
    PAIR = "pair"


@router.get(
    "/analytics/strategy",
    responses=ERRORS,
    tags=["analytics"],
    dependencies=KEYED,
    summary="A reference strategy over the stored candles: PnL, drawdown, Sharpe, turnover",
)
async def strategy(
    request: Request,
    symbol: Annotated[str, Query(description="the traded symbol (the first leg of a pair)")],
    kind: Annotated[Strategy, Query(description="which strategy")] = Strategy.MA_CROSSOVER,
    interval: Annotated[Interval, Query(description="bar width")] = Interval.S1,
    fast: Annotated[int, Query(ge=1, le=10_000, description="fast moving average, bars")] = 10,
    slow: Annotated[int, Query(ge=2, le=10_000, description="slow moving average, bars")] = 50,
    lookback: Annotated[int, Query(ge=1, le=10_000, description="momentum lookback, bars")] = 20,
    other: Annotated[str | None, Query(description="second leg of a pair")] = None,
    window: Annotated[int, Query(ge=2, le=10_000, description="pair z-score window, bars")] = 50,
    entry: Annotated[float, Query(gt=0, le=10, description="pair entry z-score")] = 1.5,
) -> Response:
    rt = runtime(request)
    sym = one_symbol(rt, symbol)
    limit = rt.settings.history_limit
    closes = await _closes(rt, sym, interval, limit)
    bars_per_year = SECONDS_PER_YEAR / rt.settings.speed / interval.seconds
    try:
        if kind is Strategy.MA_CROSSOVER:
            result = analytics.moving_average_crossover(closes, fast, slow, bars_per_year)
        elif kind is Strategy.MOMENTUM:
            result = analytics.momentum(closes, lookback, bars_per_year)
        else:
            if other is None:
                raise HTTPException(400, "a pair needs other=SYMBOL for its second leg")
            second = await _closes(rt, one_symbol(rt, other), interval, limit)
            n = min(len(closes), len(second))
            result = analytics.pair_mean_reversion(closes[-n:], second[-n:], window, entry, bars_per_year)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    return json_response({"symbol": sym, "interval": interval.value, **result.to_dict()})


async def _closes(rt: Runtime, symbol: str, interval: Interval, limit: int) -> np.ndarray:
    candles = await rt.history.candles(
        symbol=symbol, interval=interval, start_ns=None, end_ns=None, limit=limit
    )
    if len(candles) < 3:
        raise HTTPException(
            400, f"not enough history for {symbol} at {interval.value} yet ({len(candles)} bars)"
        )
    return np.array([c.close for c in candles], dtype=np.float64)


@router.get(
    "/analytics/volatility",
    responses=ERRORS,
    tags=["analytics"],
    dependencies=KEYED,
    summary="True volatility against a particle filter's and a rolling window's estimates",
)
async def volatility(
    request: Request,
    symbol: Annotated[str, Query(description="one symbol")],
    limit: Annotated[int, Query(ge=50, le=20_000, description="most recent ticks used")] = 2000,
    window: Annotated[int, Query(ge=5, le=5000, description="rolling estimator window, ticks")] = 100,
) -> Response:
    rt = runtime(request)
    sym = one_symbol(rt, symbol)
    asset = rt.universe[sym]
    newest = await rt.history.ticks(
        symbols=frozenset([sym]), after_gseq=max(0, rt.hub.last_gseq - limit * len(rt.symbols)), limit=limit
    )
    if len(newest) < 50:
        raise HTTPException(400, f"not enough history for {sym} yet ({len(newest)} ticks)")
    prices = np.array([t.price for t in newest])
    true_vol = np.array([t.vol for t in newest])[1:]
    # Ticks are rounded to the cent; use the mid to keep rounding noise out of the returns.
    mids = np.log(np.array([(t.bid + t.ask) / 2 for t in newest]))
    returns = np.diff(mids)
    dt = rt.settings.dt_years
    params = analytics.HestonParams(asset.mu, asset.kappa, asset.theta, asset.xi, asset.rho)
    filtered = np.sqrt(analytics.particle_filter_variance(returns, dt, params, float(true_vol[0]) ** 2, 1000))
    rolling = np.sqrt(analytics.rolling_variance(returns, dt, window))

    def rmse(estimate: np.ndarray) -> float:
        return float(np.sqrt(np.mean((estimate - true_vol) ** 2)))

    return json_response(
        {
            "symbol": sym,
            "ticks": len(prices),
            "rmse_filter": rmse(filtered),
            "rmse_rolling": rmse(rolling),
            "true": true_vol.round(6).tolist(),
            "filter": filtered.round(6).tolist(),
            "rolling": rolling.round(6).tolist(),
        }
    )


# --- control ---------------------------------------------------------------------------------------
CONTROL_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    409: {"model": ErrorResponse, "description": "this process runs no engine (role edge)"},
    503: {"model": ErrorResponse, "description": "the engine did not take the change in time"},
}

#: Request bodies with an unknown field are refused (422 naming it): a typo must not pass silently.
STRICT = ConfigDict(extra="forbid")


class ScenarioRequest(BaseModel):
    model_config = STRICT

    kind: Literal["crash", "vol_spike", "correlation"] = Field(
        description="crash: a factor falls at once; vol_spike: volatility jumps, then fades; "
        "correlation: every pair of factors moves to `correlation`, then fades back"
    )
    factor: str | None = Field(None, description="crash: which factor, e.g. market")
    size: float = Field(
        0.0, description="crash: the factor's log-return, e.g. -0.1; assets move by beta times it"
    )
    multiplier: float = Field(
        1.0,
        description="vol_spike: prices (and the ticks' vol) see this times the model's variance, "
        "fading to 1 with half_life; crash: an optional spike that goes with it (1: none)",
    )
    correlation: float | None = Field(
        None, description="correlation: the value every pair of factors moves to (-1/(K-1) to 1)"
    )
    half_life: float = Field(
        DEFAULT_HALF_LIFE,
        description="simulated seconds for the effect of vol_spike or correlation to halve; "
        "dropped once below 0.1 %",
    )


async def control(change: Awaitable[Event]) -> Event:
    """Wait for the engine to apply a change; its errors as HTTP errors."""
    try:
        return await change
    except NoEngineError as exc:
        raise HTTPException(409, str(exc)) from None
    except TimeoutError:
        raise HTTPException(
            503, f"the engine did not take the change within {COMMAND_TIMEOUT_S:g} s (it may still apply)"
        ) from None
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None


@router.post(
    "/admin/scenario",
    tags=["control"],
    dependencies=ADMIN,
    status_code=202,
    responses=CONTROL_ERRORS,
    summary="Inject a scenario into the running market (admin key when keys are configured)",
    description="Applied before the next step; the answer is the event, also announced on the streams "
    "(SSE `event: scenario`, WebSocket `type: scenario`) and stored (`/history/events`).",
)
async def inject_scenario(request: Request, body: ScenarioRequest) -> Response:
    rt = runtime(request)
    scenario = Scenario(**body.model_dump())
    try:
        scenarios.validate(scenario, list(rt.universe.factors))
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    return json_response(await control(rt.inject(scenario)), status=202)


@router.get("/admin/scenarios", tags=["control"], dependencies=ADMIN, summary="Events of this process so far")
async def list_scenarios(request: Request) -> Response:
    return json_response({"scenarios": runtime(request).scenario_log})


@router.delete(
    "/admin/scenarios",
    tags=["control"],
    dependencies=ADMIN,
    responses=CONTROL_ERRORS,
    summary="End every active scenario overlay at once (an event; a crash's price move stays)",
)
async def clear_scenarios(request: Request) -> Response:
    return json_response(await control(runtime(request).clear_scenarios()))


class AssetChange(BaseModel):
    model_config = STRICT

    mu: float | None = Field(None, description="drift per year")
    kappa: float | None = Field(None, description="variance mean-reversion speed (> 0)")
    theta: float | None = Field(None, description="long-run variance (> 0)")
    xi: float | None = Field(None, description="volatility of variance (> 0)")
    rho: float | None = Field(None, description="price/variance correlation, in [-1, 1]")
    jump_intensity: float | None = Field(None, description="jumps per year (>= 0; with jumps on)")
    jump_mean: float | None = Field(None, description="mean of ln(1 + J)")
    jump_std: float | None = Field(None, description="standard deviation of ln(1 + J) (>= 0)")
    betas: list[float] | None = Field(None, description="one exposure per factor")
    idio_vol: float | None = Field(None, description="idiosyncratic weight (>= 0)")


class ParamsChange(BaseModel):
    model_config = STRICT

    assets: dict[str, AssetChange] = Field(
        default_factory=dict, description="per symbol, only the parameters to change"
    )
    correlation: list[list[float]] | None = Field(None, description="the factors' K x K correlation")


def params_body(rt: Runtime) -> dict[str, Any]:
    return {
        "step": rt.market.next_step if rt.market else None,
        "dt_seconds": rt.settings.dt_years * SECONDS_PER_YEAR,
        **rt.universe.to_dict(),
        "scenarios": rt.active_scenarios,
        "overlay": rt.overlay,
    }


@router.get(
    "/admin/params",
    response_model=ParamsResponse,
    tags=["control"],
    dependencies=ADMIN,
    responses=ERRORS,
    summary="The live model (universe, regimes) and the active scenarios with their current strength",
)
async def get_params(request: Request) -> Response:
    return json_response(params_body(runtime(request)))


@router.patch(
    "/admin/params",
    tags=["control"],
    dependencies=ADMIN,
    responses=CONTROL_ERRORS,
    summary="Change model parameters live, from the next step on (an event; the path carries on)",
    description="Per-asset Heston, jump and factor parameters and/or the factor correlation. Checked "
    "like a universe file (400 naming the symbol and parameter); unknown symbols are 404. The answer "
    "is the event, with `warnings` (e.g. the Feller condition) and the new `params`.",
)
async def patch_params(request: Request, body: ParamsChange) -> Response:
    rt = runtime(request)
    assets = {sym.strip().upper(): c.model_dump(exclude_none=True) for sym, c in body.assets.items()}
    unknown = sorted(set(assets) - set(rt.symbols))
    if unknown:
        raise HTTPException(404, f"unknown symbols: {', '.join(unknown[:20])}")
    changes: dict[str, Any] = {"assets": {k: v for k, v in assets.items() if v}}
    if body.correlation is not None:
        changes["correlation"] = body.correlation
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FellerConditionWarning)
        try:
            universe = scenarios.changed_universe(rt.universe, changes["assets"], body.correlation)
            simulator = rt.simulator_for(universe)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
    record = await control(rt.change_params(universe, simulator, changes))
    notes = [str(w.message) for w in caught if issubclass(w.category, FellerConditionWarning)]
    return json_response({**record, "warnings": notes, "params": params_body(rt)})


# --- operations --------------------------------------------------------------------------------------
@router.get("/health", tags=["operations"], summary="ok, or degraded when a backend is failing")
async def health(request: Request) -> Response:
    return json_response(runtime(request).health())


@router.get("/metrics", response_class=PlainTextResponse, tags=["operations"], summary="Prometheus metrics")
async def prometheus(request: Request) -> Response:
    return PlainTextResponse(
        metrics.render(runtime(request).metrics()), media_type="text/plain; version=0.0.4"
    )


# --- streams ---------------------------------------------------------------------------------------
@router.get(
    "/stream/sse",
    tags=["streams"],
    summary="Server-Sent Events: `tick` events, id = gseq; resumes after Last-Event-ID",
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "data: one tick (TickModel)"},
        429: {"model": ErrorResponse, "description": "too many open streams from this address"},
        **ERRORS,
    },
    dependencies=KEYED,
)
async def stream_sse(
    request: Request,
    symbols: Annotated[str | None, Query(description="comma-separated; default: all")] = None,
    last_event_id: Annotated[str | None, Header(description="resume after this gseq")] = None,
    resume_after: Annotated[
        str | None,
        Query(
            alias="last_event_id", description="the same as the Last-Event-ID header, for a new EventSource"
        ),
    ] = None,
) -> Response:
    rt = runtime(request)
    wanted = parse_symbols(rt, symbols, required=False)
    resume: int | None = None
    if last_event_id is None:  # the browser sends the header when it reconnects by itself
        last_event_id = resume_after
    if last_event_id is not None and last_event_id.strip():
        if not last_event_id.strip().isdigit() or len(last_event_id.strip()) > 19:
            raise HTTPException(400, "Last-Event-ID must be the id (gseq) of an event this server sent")
        resume = int(last_event_id)
    address = request.client.host if request.client else "unknown"
    if not rt.limiter.acquire(address):
        raise HTTPException(429, f"too many open streams from {address} (limit {rt.limiter.per_address})")
    return EventStream(
        rt.hub,
        rt.history,
        wanted,
        resume,
        ping_seconds=rt.settings.ping_seconds,
        shutdown=rt.shutdown,
        on_close=lambda: rt.limiter.release(address),
    )


@router.get(
    "/replay/sse",
    tags=["streams"],
    dependencies=KEYED,
    summary="Replay a stored time range as SSE `tick` events, at `speed` times real time (0: at once)",
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "the live schema, then `end`"},
        **ERRORS,
    },
)
async def replay_sse(
    request: Request,
    start: Annotated[datetime, Query(description="inclusive, ISO 8601 or Unix seconds")],
    end: EndQ = None,
    symbols: Annotated[str | None, Query(description="comma-separated; default: all")] = None,
    speed: Annotated[
        float, Query(ge=0, le=10_000, description="times real time; 0 sends as fast as possible")
    ] = 1.0,
) -> Response:
    rt = runtime(request)
    wanted = parse_symbols(rt, symbols, required=False)
    s, e = time_range(start, end)

    async def events() -> AsyncIterator[bytes]:
        yield b"retry: 2000\n\n"
        after, previous = 0, None
        while True:
            page = await rt.history.ticks(symbols=wanted, start_ns=s, end_ns=e, after_gseq=after, limit=5000)
            for t in page:
                if speed > 0 and previous is not None and t.ts > previous:
                    await asyncio.sleep(min((t.ts - previous) / 1e9 / speed, 60.0))
                previous = t.ts
                yield sse_event(t.to_json(), t.gseq)
            if len(page) < 5000:
                break
            after = page[-1].gseq
        yield b"event: end\ndata: {}\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"cache-control": "no-cache"})


async def stream_ws(websocket: WebSocket) -> None:
    rt: Runtime = websocket.app.state.runtime
    await websocket.accept()
    if not key_allowed(presented_key(websocket), rt.settings.api_keys):
        await websocket.close(code=CLOSE_POLICY, reason="missing or invalid API key")
        return
    address = websocket.client.host if websocket.client else "unknown"
    if not rt.limiter.acquire(address):
        await websocket.close(code=CLOSE_TRY_AGAIN, reason="too many connections from this address")
        return
    try:
        await Session(
            websocket,
            rt.hub,
            rt.history,
            rt.symbols,
            max_symbols=rt.settings.max_symbols,
            max_rate=rt.settings.max_messages_per_second,
            shutdown=rt.shutdown,
        ).run()
    finally:
        rt.limiter.release(address)


router.add_api_websocket_route("/stream/ws", stream_ws)
