"""Who may call the API: API keys (``ALEXNET_API_KEYS``) and browser origins (``ALEXNET_CORS_ORIGINS``).

Routes that need a key declare ``dependencies=[API_KEY]``; probes, docs and the demo page do
not. The dependency runs before the route reads the body, so a refusal costs no upload.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response

from app.config import Settings
from app.errors import ApiError, error_response

_bearer = HTTPBearer(
    auto_error=False, description="`Authorization: Bearer <key>`; needed only when the server sets ALEXNET_API_KEYS."
)
_header = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    description="`X-API-Key: <key>`; needed only when the server sets ALEXNET_API_KEYS.",
)


class ApiKeys:
    """The accepted keys (none: the API is open), compared in constant time."""

    def __init__(self, keys: list[str]) -> None:
        self._keys = [key.encode() for key in keys]

    @property
    def required(self) -> bool:
        return bool(self._keys)

    def accepts(self, given: str) -> bool:
        candidate = given.encode("latin-1", "replace")  # headers arrive latin-1 decoded
        matched = False
        for key in self._keys:  # every key is compared, so the time says nothing about which matched
            matched |= hmac.compare_digest(candidate, key)
        return matched

    def admits(self, headers: Headers) -> bool:
        """Whether a request with ``headers`` may call a protected route: the API is open, or it
        carries a key and every key it carries is accepted."""
        given = presented_keys(headers)
        return not self.required or (bool(given) and all(self.accepts(value) for value in given))


def presented_keys(headers: Headers) -> list[str]:
    """Every key a request carries: each ``X-API-Key`` header, and each ``Authorization`` header's
    bearer token ("" for one that is not ``Bearer <key>``, refused like a wrong key)."""
    bearers = []
    for value in headers.getlist("authorization"):
        scheme, _, token = value.strip().partition(" ")
        bearers.append(token.strip() if scheme.lower() == "bearer" else "")
    return headers.getlist("x-api-key") + bearers


async def require_api_key(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header: Annotated[str | None, Depends(_header)],
) -> None:
    """401 ``unauthorized`` unless the API is open, or the request carries a key and every key it carries
    (every ``X-API-Key`` and ``Authorization`` header, repeated ones too) is accepted.

    ``bearer`` and ``header`` declare the schemes for the OpenAPI page; the keys are read from
    every copy of the headers, since those dependencies see only the first."""
    keys: ApiKeys = request.app.state.api_keys
    if keys.admits(request.headers):
        return
    given = presented_keys(request.headers)
    if not given:
        raise ApiError(
            401,
            "unauthorized",
            "this route needs an API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
            {"WWW-Authenticate": 'Bearer realm="alexnet-serving"'},
        )
    raise ApiError(  # a wrong key is refused even next to a right one
        401,
        "unauthorized",
        "the API key is not valid",
        {"WWW-Authenticate": 'Bearer realm="alexnet-serving", error="invalid_token"'},
    )


API_KEY = Depends(require_api_key)


class JsonCorsMiddleware(CORSMiddleware):
    """Starlette's CORS, except that a refused preflight gets the JSON error every other refusal gets."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        kept = {
            name: value for name, value in response.headers.items() if name not in ("content-length", "content-type")
        }
        return error_response(400, "cors_refused", bytes(response.body).decode(), kept)


def cors_options(settings: Settings) -> dict[str, Any] | None:
    """Starlette ``CORSMiddleware`` options for ``ALEXNET_CORS_ORIGINS``; None when unset (no CORS headers)."""
    origins = settings.cors_origin_list
    if not origins:
        return None
    return {
        "allow_origins": origins,
        "allow_methods": ["GET", "POST"],
        "allow_headers": [
            "Authorization",
            "X-API-Key",
            "Content-Type",
            "X-Request-ID",
            "Inference-Header-Content-Length",
        ],
        "expose_headers": [
            "X-Request-ID",
            "X-Batch-Size",
            "Server-Timing",
            "Retry-After",
            "Inference-Header-Content-Length",
        ],
        "max_age": 600,
    }
