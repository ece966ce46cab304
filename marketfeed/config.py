"""One settings object, read from `MARKETFEED_*` environment variables (and CLI flags on top).

Every default runs embedded: an in-process bus, an in-memory quote cache and a SQLite history file,
so `marketfeed serve` works on a machine that has only Python.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from marketfeed.calendar import parse_session
from marketfeed.engine import Scheme
from marketfeed.market import Arrivals, TradeModel
from marketfeed.streams.kafka_producer import KafkaMessages


class Role(StrEnum):
    """What one server process does (scale-out: one engine, any number of edges)."""

    ALL = "all"  #: engine and client-facing streams in one process (the default)
    ENGINE = "engine"  #: simulate, write history and quotes, publish to the bus; no client streams
    EDGE = "edge"  #: no engine: consume the bus and serve clients


class Settings(BaseSettings):
    """Server configuration. Each field is also the environment variable `MARKETFEED_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="MARKETFEED_", extra="forbid", frozen=True)

    # --- network -------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="interface to listen on")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0 picks a free one)")
    role: Role = Field(Role.ALL, description="all | engine | edge")

    # --- simulation ----------------------------------------------------------------------------
    tick_rate: float = Field(10.0, gt=0, le=1000, description="engine steps per wall-clock second")
    speed: float = Field(
        1.0, gt=0, le=1e6, description="simulated seconds per wall-clock second (time multiplier)"
    )
    seed: int = Field(0, ge=0, lt=2**64, description="random seed: same seed, same market")
    universe: Path | None = Field(None, description="JSON universe file (default: 20 built-in symbols)")
    scheme: Scheme = Field(Scheme.QE, description="Heston variance scheme: qe | euler")
    jumps: bool = Field(False, description="add Merton jumps (Bates model)")
    hurst: float | None = Field(
        None,
        gt=0,
        le=0.5,
        description="Hurst exponent of every asset (< 0.5: rough); unset = the universe's",
    )
    rough_factors: int = Field(20, ge=2, le=200, description="variance factors of the lifted (rough) scheme")
    spread_bps: float = Field(2.0, ge=0, le=1000, description="quoted spread floor in basis points")

    # --- trades (the tick layer: marketfeed/market.py, marketfeed/calendar.py) --------------------
    arrivals: Arrivals = Field(
        Arrivals.EVERY_STEP,
        description="every_step (each symbol ticks every step) | poisson | hawkes (clustered trades)",
    )
    trade_rate: float = Field(
        2.0, gt=0, le=1e6, description="poisson/hawkes: base trades per simulated second per symbol"
    )
    hawkes_decay: float = Field(
        1.0, gt=0, le=1e6, description="hawkes: decay rate of the excitation, per simulated second"
    )
    hawkes_jump: float = Field(
        0.5, ge=0, le=1e6, description="hawkes: rate added by each trade (trades/s); jump/decay must be < 1"
    )
    seasonality: float = Field(
        0.0, ge=0, le=3, description="poisson/hawkes: U-shaped intraday rate amplitude, 0 = flat (max 3)"
    )
    session: str = Field(
        "24/7", description="24/7, or HH:MM-HH:MM local trading hours on weekdays (e.g. 09:30-16:00)"
    )
    session_tz: str = Field("America/New_York", description="IANA time zone of the session hours")

    # --- backends (one place picks them: marketfeed/backends.py) ---------------------------------
    history_path: Path = Field(Path("data/marketfeed.sqlite3"), description="SQLite history file")
    kafka: str | None = Field(None, description="Kafka bootstrap servers; unset = in-process bus")
    kafka_topic: str = Field("marketfeed.ticks", description="Kafka topic for ticks")
    kafka_partitions: int = Field(6, ge=1, le=1000, description="partitions if the topic is created")
    kafka_messages: KafkaMessages = Field(
        KafkaMessages.TICK, description="tick: a message per tick | step: a message per step and partition"
    )
    redis: str | None = Field(None, description="Redis URL; unset = in-memory quote cache")
    database: str | None = Field(None, description="PostgreSQL URL; unset = SQLite history")

    # --- history writer ------------------------------------------------------------------------
    flush_ms: int = Field(250, ge=1, le=60_000, description="history flush interval")
    flush_rows: int = Field(10_000, ge=1, le=10_000_000, description="history flush size")
    backlog_rows: int = Field(
        1_000_000, ge=1, description="ticks held in memory while the database is down (then a spill file)"
    )
    retention_days: int | None = Field(
        None, ge=1, description="PostgreSQL/TimescaleDB: drop ticks older than this many days (default: keep)"
    )

    # --- streams -------------------------------------------------------------------------------
    ring_ticks: int = Field(200_000, ge=1000, description="recent ticks kept in memory for resume")
    client_queue: int = Field(256, ge=2, le=100_000, description="engine steps queued per client")
    slow_client_seconds: float = Field(
        10.0, gt=0, description="a client behind for this long is disconnected"
    )
    ping_seconds: float = Field(15.0, gt=0, description="SSE keep-alive comment interval")
    max_symbols: int = Field(1000, ge=1, description="subscriptions per connection")
    max_message_bytes: int = Field(64 * 1024, ge=256, description="largest WebSocket message accepted")
    history_limit: int = Field(10_000, ge=1, description="most rows one history request returns")
    max_connections_per_ip: int = Field(200, ge=1, description="open streams per client address")
    max_messages_per_second: float = Field(
        20.0, gt=0, description="WebSocket messages a connection may send per second (burst: 5x)"
    )

    gc_full_seconds: float = Field(
        600.0,
        ge=0,
        description="seconds between full garbage collections; 0 = Python's automatic collector "
        "(which under load pauses the server for 100 ms or more every few seconds)",
    )

    # --- access ----------------------------------------------------------------------------------
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated keys for streams and history (default: open)"
    )
    admin_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated keys for the control endpoints"
    )
    ws_compression: bool = Field(False, description="negotiate permessage-deflate (costs CPU)")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated origins allowed by CORS (default: none)"
    )
    log_level: str = Field("info", description="critical | error | warning | info | debug")

    @field_validator("cors_origins", "api_keys", "admin_keys", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [o.strip() for o in value.split(",") if o.strip()]
        return value

    @model_validator(mode="after")
    def _check_trades(self) -> Settings:
        _ = self.trade_model  # bad combinations fail at start-up, with the setting's name
        return self

    @property
    def trade_model(self) -> TradeModel:
        """The tick layer's settings; ValueError (naming the setting) for values that cannot run."""
        return TradeModel(
            arrivals=self.arrivals,
            trade_rate=self.trade_rate,
            hawkes_decay=self.hawkes_decay,
            hawkes_jump=self.hawkes_jump,
            seasonality=self.seasonality,
            session=parse_session(self.session, self.session_tz),
        )

    @property
    def dt_years(self) -> float:
        """Simulated time per engine step, in the model's unit (years)."""
        from marketfeed.engine import SECONDS_PER_YEAR

        return self.speed / self.tick_rate / SECONDS_PER_YEAR

    @property
    def runs_engine(self) -> bool:
        return self.role is not Role.EDGE

    @property
    def serves_clients(self) -> bool:
        return self.role is not Role.ENGINE
