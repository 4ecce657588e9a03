"""uvicorn's HTTP protocol (httptools) with the limits it lacks for slow and surplus clients.

uvicorn times out only idle keep-alive connections, after a response: a client that connects
and sends nothing, or half its headers, holds its socket forever (slowloris), and its
``limit_concurrency`` answers plain text while it keeps the connection. Here:

- a request's headers must be complete ``read_timeout_s`` after the connection opened (first
  request) or after the request's first byte (later ones), else the client gets 408 JSON and
  the connection is closed; the body's deadline is ``app.middleware.BodyLimitMiddleware``'s;
- a connection beyond ``max_connections`` open ones gets 503 JSON for its request and is
  closed; it has ``SURPLUS_HEADERS_S`` to send its headers, so surplus sockets go fast.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

logger = logging.getLogger(__name__)

SURPLUS_HEADERS_S = 1.0


def _error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


_SURPLUS_BODY = _error_body("too_many_connections", "too many open connections; retry shortly")
_SURPLUS_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(_SURPLUS_BODY)).encode()),
    (b"retry-after", b"1"),
    (b"connection", b"close"),
]


async def _refuse_surplus(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The ASGI app that answers a request arriving on a connection over the limit."""
    await send({"type": "http.response.start", "status": 503, "headers": _SURPLUS_HEADERS})
    await send({"type": "http.response.body", "body": _SURPLUS_BODY})


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """See the module docstring; ``protocol_class()`` sets the two limits."""

    read_timeout_s: float = 30.0
    max_connections: int = 1000

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._surplus = len(self.connections) > self.max_connections
        self._headers_timer: asyncio.TimerHandle | None = None
        self._arm(SURPLUS_HEADERS_S if self._surplus else self.read_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._headers_timer is None:
            self._arm(self.read_timeout_s)

    def on_headers_complete(self) -> None:
        self._disarm()
        if not self._surplus:
            super().on_headers_complete()
            return
        app, self.app = self.app, _refuse_surplus
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def send_400_response(self, msg: str) -> None:
        """A request httptools cannot parse gets JSON like every other error, not uvicorn's plain
        text: 501 for a method it does not know (RFC 9110 §9.1), else 400; the connection closes.
        uvicorn calls this from its ``except HttpParserError`` block, so the error is at hand."""
        error = sys.exc_info()[1]
        if isinstance(error, httptools.HttpParserInvalidMethodError):
            status, body = 501, _error_body("not_implemented", "unknown HTTP method; this server takes GET and POST")
        else:
            status, body = 400, _error_body("bad_request", f"not a valid HTTP/1.1 request: {error or msg}")
        head = b"".join(name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers)
        head += f"content-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
        self.transport.write(STATUS_LINE[status] + head + body)
        self.transport.close()

    def _arm(self, seconds: float) -> None:
        self._headers_timer = self.loop.call_later(seconds, self._headers_late)

    def _disarm(self) -> None:
        if self._headers_timer is not None:
            self._headers_timer.cancel()
            self._headers_timer = None

    def _headers_late(self) -> None:
        self._headers_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self._arm(self.read_timeout_s)  # an answer is still being written on this connection
            return
        logger.info("closing a connection from %s: no complete request headers in time", self.client)
        body = _error_body("request_timeout", f"the request headers did not arrive within {self.read_timeout_s:g} s")
        head = f"content-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
        self.transport.write(STATUS_LINE[408] + head.encode() + body)
        self.transport.close()


def protocol_class(read_timeout_s: float, max_connections: int) -> type[GuardedHttpToolsProtocol]:
    """The protocol class for ``uvicorn.Config(http=...)`` with these limits."""
    attributes = {"read_timeout_s": read_timeout_s, "max_connections": max_connections}
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), attributes)
