"""The command line: help that explains the settings, one-line errors with exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from marketfeed.backends import make_bus
from marketfeed.cli import build_parser, settings_from
from marketfeed.streams.kafka import KafkaBus
from marketfeed.streams.kafka_producer import KafkaMessages


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "marketfeed", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_help_lists_every_setting_with_its_environment_variable() -> None:
    result = run("serve", "--help")
    assert result.returncode == 0
    for needle in ("--tick-rate", "MARKETFEED_TICK_RATE", "--history-path", "--kafka", "--seed"):
        assert needle in result.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["serve", "--port", "http"], "--port"),
        (["serve", "--tick-rate", "-1"], "--tick-rate"),
        (["serve", "--scheme", "milstein"], "--scheme"),
        (["serve", "--role", "king"], "--role"),
        (["serve", "--kafka-messages", "frames"], "--kafka-messages"),
        (["serve", "--no-such-flag"], "unrecognized"),
        (["fly"], "invalid choice"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(args: list[str], needle: str) -> None:
    result = run(*args)
    assert result.returncode == 2
    assert needle in result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(("marketfeed: error", "usage:", "marketfeed serve: error"))
    )
    assert "Traceback" not in result.stderr


def test_flags_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MARKETFEED_SEED", "5")
    monkeypatch.setenv("MARKETFEED_TICK_RATE", "3")
    settings = settings_from(build_parser().parse_args(["serve", "--seed", "9"]))
    assert settings.seed == 9
    assert settings.tick_rate == 3


def test_the_kafka_layout_reaches_the_bus() -> None:
    for flags, layout in (([], KafkaMessages.TICK), (["--kafka-messages", "step"], KafkaMessages.STEP)):
        bus = make_bus(settings_from(build_parser().parse_args(["serve", "--kafka", "127.0.0.1:1", *flags])))
        assert isinstance(bus, KafkaBus)  # made, not started: nothing connects yet
        assert bus.messages is layout
