"""Who may call the API: API keys (``ALEXNET_API_KEYS``) and browser origins (``ALEXNET_CORS_ORIGINS``).

Routes that need a key declare ``dependencies=[API_KEY]``; probes, docs and the demo page do
not. The dependency runs before the route reads the body, so a refusal costs no upload.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from app.config import Settings
from app.errors import ApiError

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


async def require_api_key(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header: Annotated[str | None, Depends(_header)],
) -> None:
    """401 ``unauthorized`` unless the API is open, or the request carries a key and every key it carries
    (``X-API-Key``, ``Authorization``) is accepted."""
    keys: ApiKeys = request.app.state.api_keys
    if not keys.required:
        return
    given = [header] if header is not None else []
    if "authorization" in request.headers:  # anything but "Bearer <key>" there is refused like a wrong key
        given.append(bearer.credentials if bearer else "")
    if not given:
        raise ApiError(
            401,
            "unauthorized",
            "this route needs an API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
            {"WWW-Authenticate": 'Bearer realm="alexnet-serving"'},
        )
    if not all(keys.accepts(value) for value in given):  # a wrong key is refused even next to a right one
        raise ApiError(
            401,
            "unauthorized",
            "the API key is not valid",
            {"WWW-Authenticate": 'Bearer realm="alexnet-serving", error="invalid_token"'},
        )


API_KEY = Depends(require_api_key)


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
