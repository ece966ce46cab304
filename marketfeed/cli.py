"""`marketfeed serve`: flags on top of `MARKETFEED_*` environment variables, then uvicorn."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Any

import uvicorn
from pydantic import ValidationError

from marketfeed import __version__
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

    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        ws_max_size=settings.max_message_bytes,
        ws_per_message_deflate=settings.ws_compression,
        log_level=settings.log_level,
        timeout_graceful_shutdown=5,
    )
    _Server(config).run()


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from(args)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = _flag(str(err["loc"][0])) if err["loc"] else "settings"
        print(f"marketfeed: error: {where}: {err['msg']}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    if args.command == "serve":
        serve(settings)


if __name__ == "__main__":
    main()
