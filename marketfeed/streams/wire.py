"""Tick frames (WebSocket) and chunks (SSE) written straight to the connection, skipping the
per-frame ASGI path.

A server's frames are never masked (RFC 6455, section 5.1), so a frame is the same bytes for every
client that watches the same symbols: a batch frames each of its texts once (`TickBatch.ws_wire`,
`ticks.text_frame`) and the hub writes those bytes to each ready connection while it publishes. The
ASGI way costs a task wake-up per client and a pass through Starlette, uvicorn and `websockets` per
frame, which was most of the server's 30 us of CPU a frame at 1,000 clients (docs/performance.md,
section 2).

`DirectWebSocketProtocol` is uvicorn's `websockets-sansio` protocol (what `--ws auto` picks) with
one addition: the ASGI scope's extension `EXTENSION` holds `{"write": write}`, where `write(frame)`
writes a whole frame and returns True only while the connection is open and its transport is not
holding back writes; otherwise it writes nothing and returns False, and the caller takes the ASGI
path, which waits for the client. Under another server the extension is absent and every frame
takes the ASGI path. Per-message compression turns it off: a client that asked for compression gets
compressed frames.

`DirectHttpToolsProtocol` does the same for an HTTP response (SSE): `HTTP_EXTENSION`'s `write(body)`
writes `body` as one chunk of the response's chunked encoding, once the response has started and
until it ends. The bytes go out as they are: a middleware that transforms response bodies (gzip)
must remove the extension from the scope it passes on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request
from websockets.protocol import State

#: The ASGI scope extensions (`scope["extensions"][EXTENSION]["write"]`).
EXTENSION = "marketfeed.websocket.direct"
HTTP_EXTENSION = "marketfeed.http.direct"

DirectWrite = Callable[[bytes], bool]


class DirectWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol, offering `write` to the application (module doc)."""

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        # A refused handshake makes no scope. The application's task starts on a later loop
        # iteration, so it sees the extension.
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"][EXTENSION] = {"write": self.write_frame}

    def write_frame(self, frame: bytes) -> bool:
        if (
            self.conn.state is not State.OPEN  # no data after a close frame, either way
            or self.conn.extensions  # compression negotiated: frames go through `websockets`
            or not self.writable.is_set()  # the transport is over its high-water mark
            or self.transport.is_closing()
        ):
            return False
        self.transport.write(frame)
        return True


class DirectHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools HTTP protocol, offering `write` of a response's next chunk (module doc)."""

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        cycle = self.cycle
        # None or the previous request's cycle when this request was an upgrade to a WebSocket.
        if cycle is not None and cycle.scope is self.scope:
            extensions = self.scope.setdefault("extensions", {})
            if extensions is not None:
                extensions[HTTP_EXTENSION] = {"write": lambda body: _write_chunk(cycle, body)}


def _write_chunk(cycle: RequestResponseCycle, body: bytes) -> bool:
    if (
        not cycle.response_started
        or cycle.response_complete
        or cycle.chunked_encoding is not True  # a HEAD request, or a response with a length
        or cycle.disconnected
        or cycle.flow.write_paused  # over the high-water mark: the ASGI path waits for the client
        or cycle.transport.is_closing()
    ):
        return False
    cycle.transport.write(b"%x\r\n%b\r\n" % (len(body), body))
    return True


def direct_write(scope: Mapping[str, Any], extension: str = EXTENSION) -> DirectWrite | None:
    """The connection's `write` (`extension`: EXTENSION or HTTP_EXTENSION), if its server offers one."""
    extensions = scope.get("extensions")
    if not isinstance(extensions, dict):
        return None
    offered = extensions.get(extension)
    return offered.get("write") if isinstance(offered, dict) else None
