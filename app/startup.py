"""Start-up of the whole server: how long it has taken, and the failure that means it never becomes ready."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

# The exit status of a server that can never become ready (uvicorn's own for a failed start-up).
EXIT_NEVER_READY = 3

ASGIApp = Callable[..., Any]


class StartupFailure(Exception):
    """The server can never become ready: a checkpoint that does not load, a device that is not
    there, a failed warm-up. The message is for the operator as it stands (no traceback needed)."""


class Startup:
    """Shared by the app's lifespan (which reports) and whoever runs the server (which stops it)."""

    def __init__(self, started: float | None = None, *, warm_before_listening: bool = False) -> None:
        """``started``: a ``time.monotonic()`` reading when the process began (default: now).
        ``warm_before_listening``: the lifespan warms the models up before the server listens, so
        that no connection reaches this process before it is ready (the workers after the first
        one, ``app.workers``); else it listens at once, /healthz answering while it warms up."""
        self.started = time.monotonic() if started is None else started
        self.warm_before_listening = warm_before_listening
        self.failure: StartupFailure | None = None
        self.on_failure: Callable[[], None] | None = None
        self.on_ready: Callable[[], None] | None = None

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def fail(self, failure: StartupFailure) -> StartupFailure:
        """Log ``failure`` once, without a traceback, and stop the server; returns it for ``raise``."""
        if self.failure is None:
            self.failure = failure
            logger.error("%s", failure, extra={"fields": {"startup_s": round(self.elapsed(), 1)}})
            if self.on_failure is not None:
                self.on_failure()
        return failure

    def ready(self) -> None:
        """Every model is warm: tell whoever runs the server."""
        if self.on_ready is not None:
            self.on_ready()

    def quiet_lifespan(self, app: ASGIApp) -> ASGIApp:
        """``app`` for the ASGI server, minus the traceback that Starlette attaches to a lifespan
        start-up failure when that failure has already been logged here as one line."""

        async def wrapped(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
            async def send_quietly(message: dict[str, Any]) -> None:
                if message["type"] == "lifespan.startup.failed" and self.failure is not None:
                    message = {**message, "message": ""}
                await send(message)

            await app(scope, receive, send_quietly if scope["type"] == "lifespan" else send)

        return wrapped
