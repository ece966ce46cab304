"""The command line.

`marketfeed serve`: flags on top of `MARKETFEED_*` environment variables, then uvicorn.
`marketfeed simulate`: paths straight from the engine into a CSV or Parquet file, offline.
`marketfeed export`: a time range of one symbol from the configured history store into a file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import faulthandler
import math
import re
import signal
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import IO, Any, Literal

import uvicorn
from pydantic import ValidationError

from marketfeed import __version__, facts
from marketfeed.config import Settings

EXIT_USAGE = 2


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        help="run the streaming server",
        description="Run the server. Every flag can also be set as MARKETFEED_<NAME> in the environment; "
        "flags win. Defaults run embedded (no Kafka, Redis or PostgreSQL needed).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        env = f"MARKETFEED_{name.upper()}"
        if field.annotation is bool:
            p.add_argument(
                _flag(name),
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"{field.description} [{env}, default {default}]",
            )
        else:
            p.add_argument(
                _flag(name),
                dest=name,
                default=None,
                metavar=name.upper(),
                help=f"{field.description} [{env}, default {default!s}]".replace("%", "%%"),
            )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="marketfeed", description="Real-time synthetic market-data server.")
    parser.add_argument("--version", action="version", version=f"marketfeed {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    _simulate_parser(sub)
    _export_parser(sub)
    facts.add_parser(sub)
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    given: dict[str, Any] = {
        k: v for k, v in vars(args).items() if k in Settings.model_fields and v is not None
    }
    return Settings(**given)


class _Server(uvicorn.Server):
    """Ends open streams as soon as shutdown is asked for: uvicorn waits for open responses before it
    runs the lifespan shutdown, so without this every SSE client would hold the exit for the timeout."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        rt = getattr(getattr(self.config.app, "state", None), "runtime", None)
        if rt is not None:
            with contextlib.suppress(RuntimeError):  # no loop running yet: nothing is streaming
                asyncio.get_running_loop().call_soon_threadsafe(rt.shutdown.set)
        super().handle_exit(sig, frame)


def serve(settings: Settings) -> None:
    from marketfeed.app import create_app
    from marketfeed.runtime import quiet_garbage_collector
    from marketfeed.streams.wire import DirectHttpToolsProtocol, DirectWebSocketProtocol

    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        # httptools and `--ws auto`'s protocol, each offering the hub a direct write of tick frames
        # and SSE chunks to connections that keep up (streams/wire.py).
        http=DirectHttpToolsProtocol,
        ws=DirectWebSocketProtocol,
        ws_max_size=settings.max_message_bytes,
        ws_per_message_deflate=settings.ws_compression,
        log_level=settings.log_level,
        timeout_graceful_shutdown=5,
    )
    if settings.gc_full_seconds:
        quiet_garbage_collector()
    # `kill -USR1` prints every thread's stack to stderr: a server that hangs on the way out says
    # where, without a debugger (py-spy cannot attach to every build of CPython).
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    _Server(config).run()


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "simulate":
        # Offline and explicit: no MARKETFEED_* variable may change what a seed writes.
        sys.exit(_offline(simulate, args))
    if args.command == "facts":
        sys.exit(_offline(lambda a: facts.run(a, UsageError), args))
    try:
        settings = settings_from(args)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = _flag(str(err["loc"][0])) if err["loc"] else "settings"
        print(f"marketfeed: error: {where}: {err['msg']}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    if args.command == "serve":
        serve(settings)
    elif args.command == "export":
        sys.exit(_offline(lambda a: export(a, settings), args))


# --- offline: simulate and export ------------------------------------------------------------------
class UsageError(Exception):
    """A bad argument found after parsing: reported as one line, exit code 2, no traceback."""


#: Units of a duration given to --dt; a bare number is in years, the model's own unit.
DURATION_SECONDS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0, "w": 604_800.0}
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|s|m|h|d|w|y)?\s*$")

#: Engine steps simulated per chunk: bounds memory (3 arrays of chunk x assets doubles) whatever --steps.
CHUNK_VALUES = 1 << 18

TableFormat = Literal["csv", "parquet"]
#: Column kinds a sink knows how to write: int64, float64, string, and a UTC nanosecond timestamp.
ColumnKind = Literal["int", "float", "str", "time"]


def parse_dt(text: str) -> float:
    """`--dt` in years: `0.004` (years) or a duration such as `250ms`, `1s`, `1m`, `1h`, `1d`, `1w`, `1y`."""
    from marketfeed.engine import SECONDS_PER_YEAR

    match = _DURATION.match(text)
    if match is None:
        raise UsageError(
            f"--dt: {text!r} is neither years (0.004) nor a duration (250ms, 1s, 1m, 1h, 1d, 1w)"
        )
    value, unit = float(match.group(1)), match.group(2)
    years = value if unit in (None, "y") else value * DURATION_SECONDS[unit] / SECONDS_PER_YEAR
    if not (math.isfinite(years) and years > 0):
        raise UsageError(f"--dt: must be a positive time step (got {text!r})")
    return years


def parse_count(text: str, flag: str) -> int:
    cleaned = text.replace("_", "").replace(",", "")
    if not cleaned.isdigit() or int(cleaned) < 1:
        raise UsageError(f"{flag}: must be a positive integer (got {text!r})")
    return int(cleaned)


def parse_time(text: str, flag: str) -> int:
    """ISO 8601 (a naive time is UTC) or Unix seconds, as in the REST API, to ns since the epoch."""
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = datetime.fromisoformat(text.strip())
        except ValueError:
            raise UsageError(f"{flag}: {text!r} is neither ISO 8601 nor Unix seconds") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        delta = when - datetime(1970, 1, 1, tzinfo=UTC)
        ns = (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
    else:
        if not (math.isfinite(seconds) and 0 <= seconds < 2**63 / 1e9):
            raise UsageError(f"{flag}: must lie between 1970-01-01 and 2262-04-11 (got {text!r})")
        ns = round(seconds * 1e9)
    if not 0 <= ns < 2**63:
        raise UsageError(f"{flag}: must lie between 1970-01-01 and 2262-04-11 (got {text!r})")
    return ns


def table_format(path: Path) -> TableFormat:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix == ".parquet":
        return "parquet"
    raise UsageError(f"--out: {path} must end in .csv or .parquet")


class Progress:
    """Progress on stderr, for runs long enough to wonder about.

    Silent for the first second, so quick runs and tests print nothing. Then one line redrawn in place
    on a terminal, or a new line every 10 % when stderr is a file, so CI logs stay readable.
    """

    def __init__(
        self, label: str, total: int | None, *, enabled: bool, stream: IO[str] | None = None
    ) -> None:
        self.label = label
        self.total = total
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.started = time.monotonic()
        self.last_draw = 0.0
        self.last_decile = -1
        self.drawn = False

    def update(self, done: int) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.started < 1.0:
            return
        if self.total:
            fraction = done / self.total
            decile = int(fraction * 10)
            text = f"{self.label}: {fraction:6.1%} ({done:,}/{self.total:,}) {now - self.started:.0f} s"
        else:
            decile = done.bit_length()  # without a total, a line each time the count doubles
            text = f"{self.label}: {done:,} rows {now - self.started:.0f} s"
        if self.tty:
            if now - self.last_draw >= 0.2:
                width = 30
                filled = round(width * done / self.total) if self.total else 0
                bar = f"[{'#' * filled}{'.' * (width - filled)}] " if self.total else ""
                self.stream.write(f"\r{bar}{text}")
                self.stream.flush()
                self.last_draw, self.drawn = now, True
        elif decile != self.last_decile:
            self.stream.write(text + "\n")
            self.stream.flush()
            self.last_decile = decile

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()


class TableSink:
    """Writes chunks of columns to CSV or Parquet, into `FILE.partial` renamed to FILE on success, so an
    interrupted run never leaves a truncated file that looks complete.

    CSV floats are Python's shortest round-trip repr, as in the REST API's CSV; Parquet is written one
    row group per chunk, so memory stays bounded. Both are byte-identical for identical input (Parquet
    files carry no write time).
    """

    def __init__(
        self,
        path: Path,
        columns: Sequence[tuple[str, ColumnKind]],
        *,
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.path = path
        self.format = table_format(path)
        self.columns = list(columns)
        self.partial = path.with_name(path.name + ".partial")
        self._file: IO[str] | None = None
        self._csv: Any = None
        self._parquet: Any = None
        self._schema: Any = None
        if self.format == "parquet":
            try:
                import pyarrow as pa
                import pyarrow.parquet as pq
            except ImportError:
                raise UsageError(
                    f"--out: writing {path.name} needs pyarrow: pip install 'marketfeed[parquet]'"
                ) from None
            types = {
                "int": pa.int64(),
                "float": pa.float64(),
                "str": pa.string(),
                "time": pa.timestamp("ns", "UTC"),
            }
            self._schema = pa.schema(
                [pa.field(name, types[kind], nullable=False) for name, kind in self.columns],
                metadata={f"marketfeed.{k}": v for k, v in (metadata or {}).items()},
            )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if self.format == "parquet":
                self._parquet = pq.ParquetWriter(self.partial, self._schema, compression="zstd")
            else:
                self._file = self.partial.open("w", newline="", encoding="utf-8")
                self._csv = csv.writer(self._file, lineterminator="\n")
                self._csv.writerow([name for name, _ in self.columns])
        except OSError as exc:
            raise UsageError(f"--out: cannot write {path}: {exc.strerror or exc}") from None

    def write(self, data: dict[str, Sequence[Any]]) -> None:
        """One chunk: a sequence of values per column (numbers as Python ints and floats)."""
        if self._parquet is not None:
            import pyarrow as pa

            arrays = []
            for field_ in self._schema:
                values = data[field_.name]
                if pa.types.is_timestamp(field_.type):
                    arrays.append(pa.array(values, pa.int64()).cast(field_.type))
                else:
                    arrays.append(pa.array(values, field_.type))
            self._parquet.write_table(pa.Table.from_arrays(arrays, schema=self._schema))
        else:
            names = [name for name, _ in self.columns]
            self._csv.writerows(zip(*(data[name] for name in names), strict=True))

    def commit(self) -> None:
        self._close()
        self.partial.replace(self.path)

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._close()
        self.partial.unlink(missing_ok=True)

    def _close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
            self._parquet = None
        if self._file is not None:
            self._file.close()
            self._file = None


def _offline_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, **kwargs: Any
) -> argparse.ArgumentParser:
    p = sub.add_parser(name, **kwargs)  # defaults are in the help texts: most flags here are required
    p.add_argument("--out", required=True, metavar="FILE", help="FILE.csv, or FILE.parquet (needs pyarrow)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return p


def _simulate_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = _offline_parser(
        sub,
        "simulate",
        help="write simulated paths to a file, offline",
        description="Simulate the market offline and write every step's price and variance, straight from "
        "the engine, as rows (step, t_years, symbol, price, variance). The whole universe is simulated, "
        "so a symbol's path is the same whichever others are written; the same arguments give a "
        "byte-identical file. MARKETFEED_* variables are not read.",
    )
    p.add_argument("--symbols", default="*", help="comma-separated symbols to write (default: * for all)")
    p.add_argument("--steps", required=True, help="number of engine steps")
    p.add_argument(
        "--dt",
        default="1s",
        help="time step: years (0.004) or a duration (250ms, 1s, 1m, 1h, 1d, 1w; default 1s)",
    )
    p.add_argument("--seed", default="0", help="random seed: same seed, same paths (default 0)")
    p.add_argument("--scheme", default="qe", help="Heston variance scheme: qe | euler | lifted (default qe)")
    p.add_argument("--hurst", default=None, help="Hurst exponent of every asset, in (0, 0.5]: < 0.5 is rough")
    p.add_argument("--jumps", action="store_true", help="add Merton jumps (Bates model)")
    p.add_argument("--universe", default=None, metavar="FILE", help="JSON universe file (default: built-in)")
    p.add_argument(
        "--threads",
        default="1",
        help="engine threads, 0 for one per core (default 1; the output does not depend on it)",
    )


def _export_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = _offline_parser(
        sub,
        "export",
        help="write a time range of history to a file",
        description="Write one symbol's stored ticks (or OHLCV candles with --interval) in [start, end) "
        "from the configured history store: the SQLite file, or PostgreSQL when MARKETFEED_DATABASE is "
        "set. The columns are those of the REST API's CSV downloads.",
    )
    p.add_argument("--symbol", required=True, help="one symbol")
    p.add_argument(
        "--start", required=True, help="inclusive, ISO 8601 (UTC unless an offset is given) or Unix seconds"
    )
    p.add_argument("--end", required=True, help="exclusive, ISO 8601 or Unix seconds")
    p.add_argument(
        "--interval",
        default=None,
        help="candles of this width: 1s | 1m | 5m | 15m | 1h | 1d (default: raw ticks)",
    )
    # Same dests as the Settings fields, so settings_from() applies them over MARKETFEED_*.
    for name in ("history_path", "database", "universe"):
        field = Settings.model_fields[name]
        p.add_argument(
            _flag(name),
            dest=name,
            default=None,
            metavar=name.upper(),
            help=f"{field.description} [MARKETFEED_{name.upper()}]",
        )


def _offline(command: Any, args: argparse.Namespace) -> int:
    """Run an offline command with its errors as one line: 2 for usage, 1 for a failure, 130 for ^C."""
    try:
        result: int = command(args)
        return result
    except UsageError as exc:
        print(f"marketfeed: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("marketfeed: interrupted", file=sys.stderr)
        return 130
    except (OSError, RuntimeError) as exc:  # a store that cannot be read, a disk that fills up
        print(f"marketfeed: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def _load_universe(path: str | Path | None) -> Any:
    from marketfeed.engine import Universe

    if path is None:
        return Universe.default()
    try:
        return Universe.from_json(path)
    except ValueError as exc:
        raise UsageError(f"--universe: {exc}") from None


def simulate(args: argparse.Namespace) -> int:
    import numpy as np

    from marketfeed.engine import Scheme, Simulator

    out = Path(args.out)
    table_format(out)  # before minutes of simulation, not after
    steps = parse_count(args.steps, "--steps")
    dt = parse_dt(args.dt)
    seed_text = args.seed.strip()
    if not seed_text.isdigit() or int(seed_text) >= 2**64:
        raise UsageError(f"--seed: must be an integer in [0, 2**64) (got {args.seed!r})")
    seed = int(seed_text)
    if args.scheme not in [s.value for s in Scheme]:
        raise UsageError(
            f"--scheme: must be one of {', '.join(s.value for s in Scheme)} (got {args.scheme!r})"
        )
    threads_text = args.threads.strip()
    if not threads_text.isdigit():
        raise UsageError(f"--threads: must be an integer >= 0, 0 meaning one per core (got {args.threads!r})")
    universe = _load_universe(args.universe)
    if args.hurst is not None:
        try:
            universe = universe.with_hurst(float(args.hurst))
        except ValueError:
            raise UsageError(f"--hurst: must be a number in (0, 0.5] (got {args.hurst!r})") from None
    names: list[str] = universe.symbols
    if args.symbols.strip() in ("", "*"):
        wanted = list(names)
    else:
        wanted = list(dict.fromkeys(s.strip().upper() for s in args.symbols.split(",") if s.strip()))
        unknown = [s for s in wanted if s not in names]
        if unknown or not wanted:
            raise UsageError(f"--symbols: unknown symbols: {', '.join(unknown[:20]) or args.symbols!r}")
    try:
        sim = Simulator(
            universe,
            dt=dt,
            seed=seed,
            scheme=Scheme(args.scheme),
            jumps=args.jumps,
            threads=int(threads_text),
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    columns = np.array([names.index(s) for s in wanted])
    metadata = {
        "seed": str(seed),
        "dt_years": repr(dt),
        "scheme": sim.scheme.value,
        "jumps": str(args.jumps).lower(),
    }
    sink = TableSink(
        out,
        [("step", "int"), ("t_years", "float"), ("symbol", "str"), ("price", "float"), ("variance", "float")],
        metadata=metadata,
    )
    progress = Progress("simulate", steps, enabled=not args.quiet)
    chunk = max(1, CHUNK_VALUES // sim.n_assets)
    symbol_column = np.array(wanted, dtype=object)
    try:
        done = 0
        while done < steps:
            n = min(chunk, steps - done)
            paths = sim.paths(n)
            # Rows are step-major: every wanted symbol of step k, then step k + 1. The step numbers the
            # state after that many steps, as the server's per-symbol seq does.
            step_numbers = np.arange(done + 1, done + n + 1, dtype=np.int64)
            sink.write(
                {
                    "step": np.repeat(step_numbers, len(wanted)).tolist(),
                    "t_years": np.repeat(step_numbers * dt, len(wanted)).tolist(),
                    "symbol": np.tile(symbol_column, n).tolist(),
                    "price": paths.prices[:, columns].ravel().tolist(),
                    "variance": paths.variances[:, columns].ravel().tolist(),
                }
            )
            done += n
            progress.update(done)
        sink.commit()
    except BaseException:
        sink.abort()
        raise
    finally:
        progress.close()
    return 0


def export(args: argparse.Namespace, settings: Settings) -> int:
    from marketfeed.history.candles import Interval

    out = Path(args.out)
    table_format(out)
    start = parse_time(args.start, "--start")
    end = parse_time(args.end, "--end")
    if start >= end:
        raise UsageError("--start: must be before --end")
    interval: Interval | None = None
    if args.interval is not None:
        try:
            interval = Interval(args.interval)
        except ValueError:
            raise UsageError(
                f"--interval: must be one of {', '.join(i.value for i in Interval)} (got {args.interval!r})"
            ) from None
    symbol = args.symbol.strip().upper()
    universe = _load_universe(settings.universe)
    if symbol not in universe.symbols:
        raise UsageError(f"--symbol: unknown symbol {args.symbol!r}")
    if not settings.database and not settings.history_path.is_file():
        # Opening the store would create an empty database: say where we looked instead.
        raise UsageError(
            f"--history-path: no history file at {settings.history_path} (set MARKETFEED_HISTORY_PATH "
            "or MARKETFEED_DATABASE)"
        )
    return asyncio.run(_export(settings, symbol, start, end, interval, out, quiet=args.quiet))


TICK_COLUMNS: list[tuple[str, ColumnKind]] = [
    ("symbol", "str"),
    ("seq", "int"),
    ("gseq", "int"),
    ("ts", "int"),
    ("time", "time"),
    ("price", "float"),
    ("bid", "float"),
    ("ask", "float"),
    ("size", "int"),
    ("vol", "float"),
]
CANDLE_COLUMNS: list[tuple[str, ColumnKind]] = [
    ("start", "int"),
    ("time", "time"),
    ("open", "float"),
    ("high", "float"),
    ("low", "float"),
    ("close", "float"),
    ("volume", "int"),
    ("trades", "int"),
    ("vwap", "float"),
]
#: Rows read from the store per query: one page in memory at a time.
EXPORT_PAGE = 50_000


async def _export(
    settings: Settings,
    symbol: str,
    start: int,
    end: int,
    interval: Any,
    out: Path,
    *,
    quiet: bool,
) -> int:
    from marketfeed.backends import make_history

    columns = TICK_COLUMNS if interval is None else CANDLE_COLUMNS
    kind = "ticks" if interval is None else f"{interval.value} candles"
    sink = TableSink(out, columns, metadata={"symbol": symbol, "rows": kind})
    # CSV's `time` is the ISO string of the REST API's CSV; Parquet's is a real timestamp column.
    time_as_text = sink.format == "csv"
    history = make_history(settings)
    progress = Progress("export", None, enabled=not quiet)
    rows = 0
    try:
        await history.start()
        try:
            if interval is None:
                after = 0
                while True:
                    ticks = await history.ticks(
                        symbols=frozenset([symbol]),
                        start_ns=start,
                        end_ns=end,
                        after_gseq=after,
                        limit=EXPORT_PAGE,
                    )
                    if not ticks:
                        break
                    page = [t.to_dict() for t in ticks]
                    if not time_as_text:
                        for d in page:
                            d["time"] = d["ts"]
                    sink.write({name: [d[name] for d in page] for name, _ in columns})
                    rows += len(ticks)
                    progress.update(rows)
                    after = ticks[-1].gseq
                    if len(ticks) < EXPORT_PAGE:
                        break
            else:
                lower = start
                while lower < end:
                    candles = await history.candles(
                        symbol=symbol, interval=interval, start_ns=lower, end_ns=end, limit=EXPORT_PAGE
                    )
                    if not candles:
                        break
                    page = [c.to_dict() for c in candles]
                    if not time_as_text:
                        for d in page:
                            d["time"] = d["start"]
                    sink.write({name: [d[name] for d in page] for name, _ in columns})
                    rows += len(candles)
                    progress.update(rows)
                    lower = candles[-1].start + interval.nanoseconds
                    if len(candles) < EXPORT_PAGE:
                        break
        finally:
            await history.close()
        sink.commit()
    except BaseException:
        sink.abort()
        raise
    finally:
        progress.close()
    if not quiet:
        print(f"marketfeed: wrote {rows:,} {kind} of {symbol} to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    main()
