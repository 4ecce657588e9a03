"""Everything the client raises is an ``AlexNetError``."""

from __future__ import annotations


class AlexNetError(Exception):
    """Base class of the client's errors."""


class ApiError(AlexNetError):
    """The server answered with an error: its HTTP status and its JSON ``code`` and ``message``."""

    def __init__(
        self, status: int, code: str, message: str, *, request_id: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.retry_after = retry_after


class ConnectionFailed(AlexNetError):
    """No answer: the server could not be reached, or the connection broke or timed out."""
