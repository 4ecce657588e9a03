"""The uvicorn server: its connection limits, and a shutdown that loses no answer.

uvicorn's own shutdown closes the listening socket and every connection without a request in
progress as soon as it sees the signal. A request a client had already sent on a kept-alive
connection, still unread in the socket's buffer, is then cut off without an answer, and so
are connections still in the listen backlog. ``DrainingServer`` first lets the app drain
(``app.drain.Drain``): readiness and new requests turn 503 at the signal, connections stay
open long enough to read what was sent, and every admitted request is answered; then
uvicorn's shutdown runs with whatever is left of ``drain_timeout_s``.
"""

from __future__ import annotations

import socket
import time
from types import FrameType
from typing import Any

import uvicorn

from app.config import Settings
from app.drain import Drain
from app.main import create_app
from app.protocol import protocol_class
from app.startup import Startup

# Idle keep-alive connections are closed after this long.
KEEP_ALIVE_S = 5


def server_options(settings: Settings) -> dict[str, Any]:
    """``uvicorn.Config`` keyword arguments for slow, idle and surplus clients."""
    return {
        "http": protocol_class(settings.read_timeout_s, settings.max_connections, settings.max_header_bytes),
        "timeout_keep_alive": KEEP_ALIVE_S,
        "timeout_graceful_shutdown": max(1, round(settings.drain_timeout_s)),
    }


class DrainingServer(uvicorn.Server):
    """``uvicorn.Server`` that drains ``drain`` (within ``drain_timeout_s``) before it closes anything."""

    def __init__(self, config: uvicorn.Config, drain: Drain, drain_timeout_s: float) -> None:
        super().__init__(config)
        self.drain = drain
        self.drain_timeout_s = drain_timeout_s

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.drain.begin()  # /readyz and new requests say 503 from this instant
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        started = time.monotonic()
        await self.drain.settle(self.drain_timeout_s)
        left = self.drain_timeout_s - (time.monotonic() - started)
        self.config.timeout_graceful_shutdown = max(1, round(left))
        await super().shutdown(sockets)


def build_server(settings: Settings, startup: Startup) -> DrainingServer:
    """The app for ``settings`` in its draining uvicorn server; ``startup`` failing stops it."""
    app = create_app(settings, startup)
    server = DrainingServer(
        uvicorn.Config(
            startup.quiet_lifespan(app),
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            log_config=None,  # uvicorn's loggers go through ours (JSON or text)
            access_log=False,  # app.access writes one line per request instead
            **server_options(settings),  # read timeouts, keep-alive, connection cap
        ),
        app.state.drain,
        settings.drain_timeout_s,
    )
    startup.on_failure = lambda: setattr(server, "should_exit", True)
    return server
