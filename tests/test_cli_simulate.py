"""`marketfeed simulate` and `marketfeed export`: files straight from the engine or the history store."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from serverproc import ServerProcess

from marketfeed import cli
from marketfeed.engine import SECONDS_PER_YEAR, Scheme, Simulator, Universe


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "marketfeed", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


def in_process(*args: str) -> int:
    """main() as the console script runs it, returning its exit code."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(list(args))
    code = exit_info.value.code
    return code if isinstance(code, int) else 1


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# --- simulate ------------------------------------------------------------------------------------------
def test_same_seed_same_file_byte_for_byte(tmp_path: Path) -> None:
    common = ["simulate", "--symbols", "NOVA,QBIT", "--steps", "20000", "--dt", "1s", "--scheme", "qe"]
    for suffix in ("csv", "parquet"):
        a, b, c = (tmp_path / f"{name}.{suffix}" for name in "abc")
        assert run(*common, "--seed", "7", "--out", str(a)).returncode == 0
        assert run(*common, "--seed", "7", "--out", str(b)).returncode == 0
        assert run(*common, "--seed", "8", "--out", str(c)).returncode == 0
        assert a.read_bytes() == b.read_bytes(), suffix
        assert a.read_bytes() != c.read_bytes(), suffix
        assert not list(tmp_path.glob("*.partial"))


def test_rows_are_the_engines_paths_whatever_the_chunking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tiny chunks: 2**6 values / 20 assets = 3 steps per engine call, so 100 steps take 34 calls.
    monkeypatch.setattr(cli, "CHUNK_VALUES", 64)
    calls: list[int] = []
    original = Simulator.paths

    def spy(self: Simulator, n: int) -> Any:
        calls.append(n)
        return original(self, n)

    monkeypatch.setattr(Simulator, "paths", spy)
    out = tmp_path / "paths.csv"
    args = ["--steps", "100", "--dt", "0.004", "--seed", "3", "--scheme", "euler", "--quiet"]
    assert in_process("simulate", "--symbols", "UTIL,nova", *args, "--out", str(out)) == 0
    assert max(calls) == 3  # memory is bounded by the chunk, not by --steps
    assert sum(calls) == 100

    monkeypatch.setattr(Simulator, "paths", original)
    expected = Simulator(Universe.default(), dt=0.004, seed=3, scheme=Scheme.EULER).paths(100)
    rows = read_csv(out)
    assert list(rows[0]) == ["step", "t_years", "symbol", "price", "variance"]
    assert len(rows) == 200
    symbols = Universe.default().symbols
    for i, row in enumerate(rows):
        step, symbol = i // 2 + 1, ["UTIL", "NOVA"][i % 2]  # step-major, in the order asked for
        assert (int(row["step"]), row["symbol"]) == (step, symbol)
        assert float(row["t_years"]) == step * 0.004
        col = symbols.index(symbol)
        # The shortest repr round-trips: the file holds the engine's doubles exactly.
        assert float(row["price"]) == expected.prices[step - 1, col]
        assert float(row["variance"]) == expected.variances[step - 1, col]


def test_a_symbols_path_does_not_depend_on_the_others_written(tmp_path: Path) -> None:
    one, every = tmp_path / "one.csv", tmp_path / "all.csv"
    assert run("simulate", "--symbols", "QBIT", "--steps", "50", "--out", str(one)).returncode == 0
    assert run("simulate", "--steps", "50", "--out", str(every)).returncode == 0
    qbit = [r for r in read_csv(every) if r["symbol"] == "QBIT"]
    assert read_csv(one) == qbit
    assert len({r["symbol"] for r in read_csv(every)}) == 20


def test_parquet_holds_the_same_rows_and_the_run_parameters(tmp_path: Path) -> None:
    base = ["simulate", "--symbols", "NOVA,CHIP", "--steps", "300", "--dt", "1m", "--seed", "11", "--jumps"]
    assert run(*base, "--out", str(tmp_path / "p.csv")).returncode == 0
    assert run(*base, "--out", str(tmp_path / "p.parquet")).returncode == 0
    table = pq.read_table(tmp_path / "p.parquet")
    assert table.column_names == ["step", "t_years", "symbol", "price", "variance"]
    assert [str(t) for t in table.schema.types] == ["int64", "double", "string", "double", "double"]
    meta = table.schema.metadata
    assert meta[b"marketfeed.seed"] == b"11"
    assert meta[b"marketfeed.jumps"] == b"true"
    assert float(meta[b"marketfeed.dt_years"]) == 60 / SECONDS_PER_YEAR
    rows = read_csv(tmp_path / "p.csv")
    assert table.column("symbol").to_pylist() == [r["symbol"] for r in rows]
    np.testing.assert_array_equal(table.column("price").to_numpy(), [float(r["price"]) for r in rows])


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("250ms", 0.25), ("1m", 60.0), ("2h", 7200.0), ("1d", 86_400.0), ("1w", 604_800.0)],
)
def test_dt_durations(text: str, seconds: float) -> None:
    assert cli.parse_dt(text) == seconds / SECONDS_PER_YEAR


def test_dt_in_years() -> None:
    assert cli.parse_dt("0.004") == 0.004
    assert cli.parse_dt("1y") == 1.0
    assert cli.parse_dt("1e-3") == 0.001


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--steps", "10", "--dt", "0"], "--dt"),
        (["--steps", "10", "--dt", "fast"], "--dt"),
        (["--steps", "10", "--dt", "5 parsecs"], "--dt"),
        (["--steps", "-5"], "--steps"),
        (["--steps", "ten"], "--steps"),
        (["--steps", "10", "--symbols", "NOVA,ZZZZ"], "ZZZZ"),
        (["--steps", "10", "--seed", "-1"], "--seed"),
        (["--steps", "10", "--scheme", "milstein"], "--scheme"),
        (["--steps", "10", "--threads", "many"], "--threads"),
        (["--steps", "10", "--universe", "/no/such/universe.json"], "--universe"),
        (["--steps", "10", "--out", "paths.xlsx"], "--out"),
    ],
)
def test_bad_simulate_arguments_give_one_line_and_exit_2(
    tmp_path: Path, args: list[str], needle: str
) -> None:
    if "--out" not in args:
        args = [*args, "--out", str(tmp_path / "x.csv")]
    result = run("simulate", *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr  # one line
    assert result.stderr.startswith("marketfeed: error: ")
    assert needle in result.stderr
    assert not list(tmp_path.iterdir())  # nothing written, not even a partial file


def test_a_missing_required_flag_is_a_usage_error() -> None:
    result = run("simulate", "--out", "x.csv")
    assert result.returncode == 2
    assert "--steps" in result.stderr.splitlines()[-1]
    assert "Traceback" not in result.stderr


def test_an_interrupted_run_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupt(self: cli.TableSink, data: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.TableSink, "write", interrupt)
    assert in_process("simulate", "--steps", "10", "--out", str(tmp_path / "x.parquet")) == 130
    assert not list(tmp_path.iterdir())


def test_progress_is_silent_on_short_runs_and_counts_on_long_ones() -> None:
    stream = io.StringIO()
    quick = cli.Progress("simulate", 100, enabled=True, stream=stream)
    quick.update(100)
    quick.close()
    assert stream.getvalue() == ""

    slow = cli.Progress("simulate", 1000, enabled=True, stream=stream)
    slow.started -= 5  # as if it had been running for five seconds
    for done in range(0, 1001, 50):
        slow.update(done)
    slow.close()
    lines = stream.getvalue().splitlines()  # not a terminal: a plain line per tenth
    assert len(lines) == 11
    assert lines[-1].startswith("simulate: 100.0% (1,000/1,000)")

    off = cli.Progress("simulate", 1000, enabled=False, stream=stream)
    off.started -= 5
    off.update(500)
    assert len(stream.getvalue().splitlines()) == 11


# --- export --------------------------------------------------------------------------------------------
def export_env(server: ServerProcess) -> dict[str, str]:
    env = {k: v for k, v in server.env().items() if k != "MARKETFEED_PORT"}
    return env


@pytest.fixture
def stored(server: ServerProcess) -> tuple[ServerProcess, str, str]:
    """A server with about three seconds of stored ticks, and a range [start, end) inside them."""
    start = time.time()
    time.sleep(3.0)
    end = time.time()
    time.sleep(0.5)  # past the flush interval
    return server, f"{start:.6f}", f"{end:.6f}"


def test_export_equals_the_rest_apis_csv(stored: tuple[ServerProcess, str, str], tmp_path: Path) -> None:
    server, start, end = stored
    env = export_env(server)
    ticks, candles = tmp_path / "ticks.csv", tmp_path / "candles.csv"
    common = ["export", "--symbol", "nova", "--start", start, "--end", end]
    result = run(*common, "--out", str(ticks), env=env)
    assert result.returncode == 0, result.stderr
    assert run(*common, "--interval", "1s", "--out", str(candles), env=env).returncode == 0

    params: dict[str, str | int] = {
        "symbol": "NOVA",
        "start": start,
        "end": end,
        "format": "csv",
        "limit": 10_000,
    }
    rest_ticks = httpx.get(server.url + "/history/ticks", params=params, timeout=10).text
    rest_candles = httpx.get(
        server.url + "/history/candles", params={**params, "interval": "1s"}, timeout=10
    ).text
    assert rest_ticks.count("\n") > 40
    assert ticks.read_text() == rest_ticks
    assert candles.read_text() == rest_candles


def test_export_to_parquet(stored: tuple[ServerProcess, str, str], tmp_path: Path) -> None:
    server, start, end = stored
    out = tmp_path / "ticks.parquet"
    result = run(
        "export",
        "--symbol",
        "QBIT",
        "--start",
        start,
        "--end",
        end,
        "--out",
        str(out),
        env=export_env(server),
    )
    assert result.returncode == 0, result.stderr
    table = pq.read_table(out)
    rest = httpx.get(
        server.url + "/history/ticks",
        params={"symbol": "QBIT", "start": start, "end": end, "limit": 10_000},
        timeout=10,
    ).json()["ticks"]
    assert table.column("gseq").to_pylist() == [t["gseq"] for t in rest]
    assert table.column("price").to_pylist() == [t["price"] for t in rest]
    assert str(table.schema.field("time").type) == "timestamp[ns, tz=UTC]"
    assert table.column("time").cast(pa.int64()).to_pylist() == [t["ts"] for t in rest]


def test_export_pages_through_the_store(
    stored: tuple[ServerProcess, str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, start, end = stored
    for key, value in export_env(server).items():
        if key.startswith("MARKETFEED_"):
            monkeypatch.setenv(key, value)
    monkeypatch.setattr(cli, "EXPORT_PAGE", 7)
    paged = tmp_path / "paged.csv"
    assert in_process("export", "--symbol", "UTIL", "--start", start, "--end", end, "--out", str(paged)) == 0
    candles = tmp_path / "candles.csv"
    assert (
        in_process(
            "export",
            "--symbol",
            "UTIL",
            "--start",
            start,
            "--end",
            end,
            "--interval",
            "1s",
            "--out",
            str(candles),
        )
        == 0
    )
    params: dict[str, str | int] = {
        "symbol": "UTIL",
        "start": start,
        "end": end,
        "format": "csv",
        "limit": 10_000,
    }
    assert paged.read_text() == httpx.get(server.url + "/history/ticks", params=params, timeout=10).text
    assert (
        candles.read_text()
        == httpx.get(server.url + "/history/candles", params={**params, "interval": "1s"}, timeout=10).text
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--symbol", "NOVA", "--start", "yesterday", "--end", "2030-01-01"], "--start"),
        (["--symbol", "NOVA", "--start", "2030-01-02", "--end", "2030-01-01"], "--start"),
        (["--symbol", "NOVA", "--start", "0", "--end", "1e300"], "--end"),
        (["--symbol", "ZZZZ", "--start", "0", "--end", "10"], "--symbol"),
        (["--symbol", "NOVA", "--start", "0", "--end", "10", "--interval", "7m"], "--interval"),
        (["--symbol", "NOVA", "--start", "0", "--end", "10"], "no history file"),
    ],
)
def test_bad_export_arguments_give_one_line_and_exit_2(tmp_path: Path, args: list[str], needle: str) -> None:
    env = {"PATH": "/usr/bin:/bin", "MARKETFEED_HISTORY_PATH": str(tmp_path / "none.sqlite3")}
    result = run("export", *args, "--out", str(tmp_path / "x.csv"), env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("marketfeed: error: ")
    assert needle in result.stderr
    assert not list(tmp_path.iterdir())  # no empty database created, no partial file
