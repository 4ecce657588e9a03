"""uvicorn's HTTP protocol (httptools) with the limits it lacks for slow and surplus clients.

uvicorn times out only idle keep-alive connections, after a response: a client that connects
and sends nothing, or half its headers, holds its socket forever (slowloris), and its
``limit_concurrency`` answers plain text while it keeps the connection. Here:

- a request's headers must be complete ``read_timeout_s`` after the connection opened (first
  request) or after the request's first byte (later ones), else the client gets 408 JSON and
  the connection is closed; the body's deadline is ``app.middleware.BodyLimitMiddleware``'s;
- a connection beyond ``max_connections`` open ones gets 503 JSON for its request and is
  closed; it has ``SURPLUS_HEADERS_S`` to send its headers, so surplus sockets go fast;
- a head (request line and headers) over ``max_header_bytes`` or ``MAX_HEADERS`` headers gets
  431, counted as it arrives: the parser never holds more than the limit (httptools joins a
  header's pieces by copying, so one 100 MB header would cost seconds of CPU and its size in
  memory); RFC 9112's framing rules httptools leaves out — one ``Host`` on HTTP/1.1 (§3.2), no
  transfer coding but ``chunked`` (§6.1) — get 400 and 501.

The protocol's own refusals (and every request httptools cannot parse) are answered through
the app, as a ``Refusal`` in the scope's state that ``app.access.AccessMiddleware`` answers:
logged and counted like any other request. The connection then closes, after reading (and
dropping) what the client still sends for ``LINGER_S``, so that it reads its answer instead of
a reset.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from dataclasses import dataclass, field
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

logger = logging.getLogger(__name__)

SURPLUS_HEADERS_S = 1.0
MAX_HEADERS = 100
# After a refusal: how long, and how many bytes, the connection still reads and drops before closing.
LINGER_S = 1.0
LINGER_BYTES = 1024 * 1024
# The scope's state key of a request the protocol refused (see ``Refusal``).
REFUSAL = "protocol_refusal"
_LOGGED_PATH = 256  # a refused head's path is cut to this in the access log


def _error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


@dataclass(frozen=True)
class Refusal:
    """An answer the protocol decided on by itself; the ASGI app that sends it (JSON, then close)."""

    status: int
    code: str
    message: str
    headers: tuple[tuple[bytes, bytes], ...] = field(default=())

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = _error_body(self.code, self.message)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            *self.headers,
        ]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


_SURPLUS = Refusal(503, "too_many_connections", "too many open connections; retry shortly", ((b"retry-after", b"1"),))


class _HeadRefused(Exception):
    """Raised in a parser callback to stop parsing; ``send_400_response`` answers ``refusal``."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


class _LingeringClose:
    """The connection's transport, except that ``close()`` first ends the answer (FIN) and closes
    only ``LINGER_S`` later: closing a socket with unread bytes sends a reset, which can destroy
    the answer before the client reads it."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def close(self) -> None:
        if self._transport.is_closing():
            return
        if self._transport.can_write_eof():
            self._transport.write_eof()
        self._loop.call_later(LINGER_S, self._transport.close)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """See the module docstring; ``protocol_class()`` sets the limits."""

    read_timeout_s: float = 30.0
    max_connections: int = 1000
    max_header_bytes: int = 64 * 1024

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._surplus = len(self.connections) > self.max_connections
        self._headers_timer: asyncio.TimerHandle | None = None
        self._head_bytes: int | None = 0  # bytes of the head being read; None while reading a body
        self._refused = False
        self._dropped = 0  # bytes read and dropped since the refusal
        self._arm(SURPLUS_HEADERS_S if self._surplus else self.read_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            self._drop(len(data))
            return
        room = None if self._head_bytes is None else self.max_header_bytes - self._head_bytes
        if room is not None and len(data) > room:
            super().data_received(data[:room])
            if self._head_bytes is not None and not self._refused:
                self._refuse(Refusal(431, "headers_too_large", f"the head is over {self.max_header_bytes} bytes"))
            if self._refused:
                return
            data = data[room:]
        elif self._head_bytes is not None:
            self._head_bytes += len(data)
        # A head that begins within a body's last chunk is counted from the next chunk on.
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._headers_timer is None:
            self._arm(self.read_timeout_s)

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        if len(self.headers) > MAX_HEADERS:
            raise _HeadRefused(Refusal(431, "headers_too_large", f"the request has over {MAX_HEADERS} headers"))

    def on_headers_complete(self) -> None:
        self._disarm()
        self._head_bytes = None
        if refusal := self._framing_refusal():
            raise _HeadRefused(refusal)
        if self._surplus:
            self.scope["state"][REFUSAL] = _SURPLUS
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._head_bytes = 0

    def send_400_response(self, msg: str) -> None:
        """Called by uvicorn from its ``except HttpParserError`` block, so the error is at hand: a
        refusal of ours, a method httptools does not know (501, RFC 9110 §9.1), else 400."""
        error = sys.exc_info()[1]
        if isinstance(error, httptools.HttpParserCallbackError) and isinstance(error.__context__, _HeadRefused):
            self._refuse(error.__context__.refusal)
        elif isinstance(error, httptools.HttpParserInvalidMethodError):
            self._refuse(Refusal(501, "not_implemented", "unknown HTTP method; this server takes GET and POST"))
        else:
            self._refuse(Refusal(400, "bad_request", f"not a valid HTTP/1.1 request: {error or msg}"))

    def _framing_refusal(self) -> Refusal | None:
        """RFC 9112 §3.2 (Host) and §6.1 (Transfer-Encoding) for a complete head."""
        hosts = sum(1 for name, _ in self.headers if name == b"host")
        if hosts > 1:
            return Refusal(400, "bad_request", "a request may carry one Host header, not several")
        if not hosts and self.parser.get_http_version() == "1.1":
            return Refusal(400, "bad_request", "an HTTP/1.1 request needs a Host header")
        codings = [
            coding.strip().lower()
            for name, value in self.headers
            if name == b"transfer-encoding"
            for coding in value.split(b",")
            if coding.strip()
        ]
        if codings and codings != [b"chunked"]:
            listed = ", ".join(coding.decode("latin-1") for coding in codings)
            return Refusal(501, "not_implemented", f"transfer coding {listed!r}: this server takes only 'chunked'")
        return None

    def _refuse(self, refusal: Refusal) -> None:
        """Answer the request being read with ``refusal`` through the app, then close the connection."""
        self._refused = True
        self._disarm()
        if self.scope is None or "method" in self.scope:  # no message begun, or the last one's scope
            HttpToolsProtocol.on_message_begin(self)
        method, path = self._request_line()
        self.scope.setdefault("method", method)  # type: ignore[misc]
        self.scope.setdefault("path", path)  # type: ignore[misc]
        self.scope.setdefault("raw_path", path.encode())  # type: ignore[misc]
        self.scope.setdefault("query_string", b"")  # type: ignore[misc]
        self.scope["state"][REFUSAL] = refusal
        self._start_refusal(refusal)

    def _request_line(self) -> tuple[str, str]:
        """The method and path of the head being read, as far as they arrived ("-" and "" when not)."""
        if not self.url:
            return "-", ""
        try:
            path = httptools.parse_url(self.url).path.decode("ascii", "replace")
        except httptools.HttpParserInvalidURLError:
            path = ""
        return self.parser.get_method().decode("ascii", "replace"), path[:_LOGGED_PATH]

    def _start_refusal(self, refusal: Refusal) -> None:
        cycle = RequestResponseCycle(
            scope=self.scope,
            transport=_LingeringClose(self.transport, self.loop),  # type: ignore[arg-type]
            flow=self.flow,
            logger=self.logger,
            access_logger=self.access_logger,
            access_log=self.access_log,
            default_headers=self.server_state.default_headers,
            message_event=asyncio.Event(),
            expect_100_continue=False,
            keep_alive=False,
            on_response=self.on_response_complete,
        )
        cycle.more_body = False
        existing, self.cycle = self.cycle, cycle
        if existing is None or existing.response_complete:
            self._start_asgi_task(cycle, self.app)
        else:  # an earlier request on this connection is still being answered: this one waits for it
            self.pipeline.appendleft((cycle, self.app))

    def _drop(self, size: int) -> None:
        """Bytes after a refusal: dropped, until ``LINGER_BYTES`` of them once the answer is out."""
        self._dropped += size
        if self._dropped > LINGER_BYTES and self.cycle.response_complete:
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


def protocol_class(
    read_timeout_s: float, max_connections: int, max_header_bytes: int = 64 * 1024
) -> type[GuardedHttpToolsProtocol]:
    """The protocol class for ``uvicorn.Config(http=...)`` with these limits."""
    attributes = {
        "read_timeout_s": read_timeout_s,
        "max_connections": max_connections,
        "max_header_bytes": max_header_bytes,
    }
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), attributes)
