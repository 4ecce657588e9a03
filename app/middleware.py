"""Pure ASGI middleware: request ids, early 429s, the upload's size and time limits, closing while draining."""

from __future__ import annotations

import asyncio
import re
import uuid
from urllib.parse import parse_qs

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.access import access_record
from app.drain import Drain
from app.errors import BodyTimeoutError, BodyTooLargeError, error_response
from app.registry import ModelRegistry, UnknownModelError
from app.service import ModelService

REQUEST_ID_HEADER = "x-request-id"
_V2_INFER = re.compile(r"/v2/models/([^/]+)(?:/versions/[^/]+)?/infer")


class RequestIdMiddleware:
    """Echo the client's ``X-Request-ID`` (or make one) on every response, errors included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(REQUEST_ID_HEADER.encode())
        raw = incoming[:128] if incoming else uuid.uuid4().hex.encode()
        state = scope.setdefault("state", {})
        state["request_id"] = raw.decode("utf-8", "replace")  # for logs: UTF-8 reads as what was meant
        # For headers: starlette encodes values as latin-1, so this str goes back out as the very bytes that came.
        state["request_id_header"] = echoed = raw.decode("latin-1")

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = echoed
            await send(message)

        await self.app(scope, receive, send_with_id)


class EarlyOverloadMiddleware:
    """Refuse a model request with 429 from its head alone while its model is full: no dependency,
    no thread hop, no body read (the connection stays open; the body is dropped as it arrives).
    A request the route would refuse otherwise (no valid key, an unknown or unready model) goes
    on to get that answer; one admitted here is admitted for good by the route (``app.pipeline``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        service = _model_of(scope) if scope["type"] == "http" and scope["method"] == "POST" else None
        if service is None or not service.admission.full:
            await self.app(scope, receive, send)
            return
        record = access_record(scope)
        record.model, record.error = service.info.name, "overloaded"
        message = f"{service.admission.admitted} images are already being served (limit {service.admission.limit})"
        response = error_response(
            429, "overloaded", f"{message}; retry shortly", {"Retry-After": "1"}, path=scope["path"]
        )
        await response(scope, receive, send)


def _model_of(scope: Scope) -> ModelService | None:
    """The ready model a POST to ``/predict`` or ``/v2/models/{name}/.../infer`` with valid keys is for."""
    state = scope["app"].state
    registry: ModelRegistry | None = getattr(state, "registry", None)
    if registry is None or not state.api_keys.admits(Headers(scope=scope)):
        return None
    if scope["path"] == "/predict":
        name = parse_qs(scope["query_string"].decode("latin-1")).get("model", [None])[0]
    elif match := _V2_INFER.fullmatch(scope["path"]):
        name = match.group(1)
    else:
        return None
    try:
        service = registry.get(name)
    except UnknownModelError:
        return None
    return service if service.ready else None


class CloseWhenDrainingMiddleware:
    """While the server drains, every answer says ``Connection: close``: a client learns with
    its answer not to send another request on that connection."""

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start" and self.drain.draining:
                MutableHeaders(scope=message)["connection"] = "close"
            await send(message)

        await self.app(scope, receive, send_closing)


class BodyLimitMiddleware:
    """Refuse bodies over ``max_bytes``: at once from Content-Length, or as soon as a
    streamed body grows past the limit (the route's read raises ``BodyTooLargeError``).
    A body must also have fully arrived ``read_timeout_s`` after the request's headers
    (the read raises ``BodyTimeoutError``: 408), however slowly it trickles in."""

    def __init__(self, app: ASGIApp, max_bytes: int, read_timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout_s = read_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            response = error_response(
                413,
                "payload_too_large",
                f"request body of {int(declared)} bytes is larger than the {self.max_bytes} allowed",
                {"Connection": "close"},
                path=scope["path"],
            )
            access_record(scope).error = "payload_too_large"
            await response(scope, receive, send)
            return
        received = 0
        complete = False
        deadline = asyncio.get_running_loop().time() + self.read_timeout_s

        async def limited_receive() -> Message:
            nonlocal received, complete
            if complete:  # what follows the body is the wait for a disconnect: no deadline
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeoutError(self.read_timeout_s) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLargeError(self.max_bytes)
                complete = not message.get("more_body", False)
            return message

        await self.app(scope, limited_receive, send)
