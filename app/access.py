"""One access record per HTTP request: routes fill it in, the middleware turns it into metrics
and one log line (request id, route, status, images, batch size, stage timings, bytes)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.protocol import REFUSAL, Refusal

if TYPE_CHECKING:
    from app.metrics import Metrics
    from app.service import Timed

logger = logging.getLogger("app.access")

# Probes and scrapes arrive every few seconds: their lines are logged at DEBUG (unless the protocol refused them).
QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"})
UNMATCHED = "unmatched"


@dataclass
class AccessRecord:
    """What a route learned about its request; never holds image bytes."""

    model: str | None = None
    images: int = 0
    answers: list[Timed] = field(default_factory=list)
    error: str | None = None
    bytes_in: int = 0
    bytes_out: int = 0


def access_record(scope: Scope) -> AccessRecord:
    """The record of the request in ``scope`` (made on first use)."""
    state = scope.setdefault("state", {})
    record = state.get("access_record")
    if record is None:
        record = state["access_record"] = AccessRecord()
    return record  # type: ignore[no-any-return]


class AccessMiddleware:
    """Count, time and log every HTTP request, errors and early refusals included; answer the
    requests the HTTP protocol refused (``app.protocol.Refusal``) without running the app."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        record = access_record(scope)
        status = 500  # what the client gets if the app raises before answering

        async def counting_receive() -> Message:
            message = await receive()
            record.bytes_in += len(message.get("body", b""))
            return message

        async def observing_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            else:
                record.bytes_out += len(message.get("body", b""))
            await send(message)

        refusal: Refusal | None = scope["state"].get(REFUSAL)  # the HTTP protocol refused it: answer that
        if refusal is not None:
            record.error = refusal.code
        self.metrics.in_flight.inc()
        try:
            await (refusal or self.app)(scope, counting_receive, observing_send)
        except Exception:
            record.error = record.error or "internal_error"
            raise
        finally:
            self.metrics.in_flight.dec()
            seconds = time.monotonic() - started
            route = self._route(scope)
            self.metrics.observe_request(scope["method"], route, status, seconds, record.model, record.answers)
            log_request(scope, route, status, seconds, record)

    def _route(self, scope: Scope) -> str:
        """The route template (``/v2/models/{model_name}/infer``), never the raw path, so labels stay few."""
        route = scope.get("route")
        if route is None:  # refused before routing (an early 413): find the route it was for
            route = next((r for r in self.routes if r.matches(scope)[0] is not Match.NONE), None)
        return getattr(route, "path", UNMATCHED)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(1000 * seconds, 3)


def log_request(scope: Scope, route: str, status: int, seconds: float, record: AccessRecord) -> None:
    """Write the request's one access-log line (DEBUG for health and metrics probes)."""
    answers = record.answers

    def slowest(stage: str) -> float | None:
        return max(getattr(answer, stage) for answer in answers) if answers else None

    fields: dict[str, Any] = {
        "request_id": scope.get("state", {}).get("request_id"),
        "method": scope["method"],
        "route": route,
        "path": scope["path"],
        "status": status,
        "error": record.error,
        "model": record.model,
        "images": record.images,
        "batch_size": max(answer.batch_size for answer in answers) if answers else None,
        "queue_ms": _ms(slowest("queue")),
        "preprocess_ms": _ms(slowest("preprocess")),
        "inference_ms": _ms(slowest("inference")),
        "total_ms": _ms(seconds),
        "bytes_in": record.bytes_in,
        "bytes_out": record.bytes_out,
    }
    quiet = route in QUIET_ROUTES and REFUSAL not in scope["state"]
    level = logging.DEBUG if quiet else logging.INFO
    logger.log(level, "%s %s %d", scope["method"], scope["path"], status, extra={"fields": fields})
