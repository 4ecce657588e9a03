"""The error contract: every failure is JSON ``{"error": {"code", "message"}}``, or under ``/v2``
the Open Inference Protocol's ``{"error": "message"}``; the status codes are the same for both."""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from app.access import access_record

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """An expected failure with its HTTP status, stable code and human message."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


class BodyTooLargeError(Exception):
    """Raised while reading a request body that grows past the upload limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body is larger than the {limit} bytes allowed")
        self.limit = limit


class BodyTimeoutError(Exception):
    """Raised while reading a request body that has not fully arrived within the read timeout."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the request body did not arrive within {seconds:g} s")


# nginx's status for "the client closed the connection before the answer": never sent, only logged and counted.
CLIENT_CLOSED_REQUEST = 499


def is_v2(path: str) -> bool:
    """Whether ``path`` belongs to the Open Inference Protocol (V2) routes."""
    return path == "/v2" or path.startswith("/v2/")


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, *, path: str = ""
) -> JSONResponse:
    """The error body for a request to ``path``, in that door's shape."""
    body = {"error": message} if is_v2(path) else {"error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


def _respond(
    request: Request, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    access_record(request.scope).error = code
    return error_response(status, code, message, headers, path=request.url.path)


def _code_for(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return _respond(request, exc.status, exc.code, exc.message, exc.headers)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers) if exc.headers else None
    return _respond(request, exc.status_code, _code_for(exc.status_code), str(exc.detail), headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = "; ".join(f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in exc.errors())
    return _respond(request, 422, "invalid_request", problems or "invalid request")


async def _body_too_large(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BodyTooLargeError)
    return _respond(request, 413, "payload_too_large", str(exc), {"Connection": "close"})


async def _body_timeout(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BodyTimeoutError)
    return _respond(request, 408, "request_timeout", str(exc), {"Connection": "close"})


async def _client_gone(request: Request, exc: Exception) -> JSONResponse:
    # The client is gone, so this answer goes nowhere; it exists for the access log and metrics.
    return _respond(request, CLIENT_CLOSED_REQUEST, "client_closed_request", "the client closed the connection")


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    # Starlette answers a 500 from outside every middleware, so the request id is added here.
    request_id = request.scope.get("state", {}).get("request_id_header")
    headers = {"X-Request-ID": request_id} if request_id else None
    return _respond(request, 500, "internal_error", "internal server error", headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(BodyTooLargeError, _body_too_large)
    app.add_exception_handler(BodyTimeoutError, _body_timeout)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _unexpected)
