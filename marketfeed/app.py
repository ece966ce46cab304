"""The app factory: routes, the static page, and the lifespan that opens and closes the runtime."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from marketfeed import __version__
from marketfeed.config import Settings
from marketfeed.routes import router
from marketfeed.runtime import Runtime
from marketfeed.security import RedactKeys

log = logging.getLogger(__name__)

DESCRIPTION = """
A real-time synthetic market: a multi-factor Heston engine streamed over Server-Sent Events
(`/stream/sse`) and WebSockets (`/stream/ws`), with history and OHLCV candles over REST.
Every tick has the schema of `TickModel`.
"""

# The page loads only its own scripts and styles (no inline code, no CDN), so this policy can be strict.
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "font-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}

# The Swagger page at /docs loads its own scripts from a CDN; it gets the browser's defaults instead.
DOCS_PATHS = ("/docs", "/redoc")

# MathJax's CHTML output writes its font rules into a <style> element it creates; the Models page
# allows inline styles (never inline scripts) so the equations render.
INLINE_STYLE_PAGES = ("/models.html",)


class SecurityHeaders:
    """Adds the security headers to every HTTP response.

    Plain ASGI rather than `@app.middleware("http")`: Starlette's BaseHTTPMiddleware pipes every body
    chunk through an extra task and memory stream, which costs each SSE client CPU and kept streams
    from ending at shutdown.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.headers = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
        relaxed = SECURITY_HEADERS["content-security-policy"].replace(
            "style-src 'self'", "style-src 'self' 'unsafe-inline'"
        )
        self.relaxed = [
            (k, relaxed.encode() if k == b"content-security-policy" else v) for k, v in self.headers
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(DOCS_PATHS):
            await self.app(scope, receive, send)
            return

        headers = self.relaxed if scope["path"] in INLINE_STYLE_PAGES else self.headers

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in headers if k not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def public_dir() -> Path:
    """The page's files: public/ beside the package in a checkout, or inside it in a wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "public", here / "public"):
        if candidate.is_dir():
            return candidate
    return here.parent / "public"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings if settings is not None else Settings()
    for name in ("uvicorn.access", "uvicorn.error"):  # both print request paths with their query
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactKeys) for f in logger.filters):
            logger.addFilter(RedactKeys())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        rt = Runtime(settings)
        app.state.runtime = rt
        await rt.start()
        log.info("marketfeed %s: role %s, %d symbols", __version__, settings.role.value, len(rt.symbols))
        try:
            yield
        finally:
            await rt.close()

    app = FastAPI(
        title="marketfeed",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # FastAPI's native OpenTelemetry hooks wrap every connection; we export Prometheus metrics instead.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.include_router(router)

    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET"], allow_headers=["*"]
        )
    app.add_middleware(SecurityHeaders)
    static = public_dir()
    if static.is_dir():
        # Mounted last so every API route above takes precedence over a file of the same name.
        app.mount("/", StaticFiles(directory=static, html=True), name="public")
    return app
