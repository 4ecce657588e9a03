"""Log output: one JSON object per line for machines, or plain text for humans.

A record's structured fields travel in ``extra={"fields": {...}}``; both formats print them.
Every line the process writes goes through here: the app's and uvicorn's loggers, Python
warnings, and the loggers of libraries that bring their own handlers (torch's write glog-style
``W1128 12:00:00 ...`` lines to stderr by default).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import IO, Any, Literal


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return getattr(record, "fields", None) or {}


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", **fields}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage().rstrip("\n"),  # Python warnings end in a newline
            **_fields(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value ...`` (fields without a value are left out)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        pairs = " ".join(f"{key}={value}" for key, value in _fields(record).items() if value is not None)
        text = super().formatMessage(record).rstrip("\n")
        return f"{text} {pairs}" if pairs else text


def resolve_format(fmt: Literal["auto", "json", "text"], stream: IO[str] | None = None) -> Literal["json", "text"]:
    """``auto``: text when ``stream`` (default stderr) is a terminal, JSON otherwise."""
    if fmt != "auto":
        return fmt
    stream = stream or sys.stderr
    return "text" if stream.isatty() else "json"


def quiet_native_logs(fmt: Literal["json", "text"]) -> None:
    """Before torch is imported: in JSON mode keep c10's C++ warnings (glog lines that no Python
    handler sees) off stderr; errors still print. An explicit ``TORCH_CPP_LOG_LEVEL`` wins."""
    if fmt == "json":
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")


def adopt_library_loggers() -> None:
    """Loggers that write to stderr/stdout with their own handler (torch's do) lose it and
    propagate to the root logger instead, so that they print in our format."""
    for logger in list(logging.root.manager.loggerDict.values()):
        if not isinstance(logger, logging.Logger):
            continue
        own = [handler for handler in logger.handlers if _is_console(handler)]
        if own:
            for handler in own:
                logger.removeHandler(handler)
            logger.propagate = True


def _is_console(handler: logging.Handler) -> bool:
    """A handler writing to stderr or stdout (torch's is a plain Handler with a ``stream`` property)."""
    return getattr(handler, "stream", None) in (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)


def configure_logging(level: str, fmt: Literal["json", "text"]) -> None:
    """Send every logger (uvicorn's, torch's, Python warnings) to stderr in ``fmt`` at ``level``.

    Call it after the libraries are imported: it adopts the loggers that exist by then."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.captureWarnings(True)
    adopt_library_loggers()
