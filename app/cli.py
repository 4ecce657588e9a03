"""``alexnet-serve``: run the service with uvicorn.

Exit status: 0 after a clean shutdown; 2 when a setting is invalid (one line per setting, a
checkpoint file that does not exist included) or the port cannot be had (checked before anything
is loaded); 3 when the server can never become ready (a checkpoint that does not load, a device
that is not there, a failed warm-up), with one log line saying why and no traceback; 1 when one
of several workers (``ALEXNET_WORKERS``) died while serving.

With one worker (the default) the server runs in this process; with more, this process
supervises them (``app.workers``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.config import Settings

STARTED = time.monotonic()  # "ready in N s" counts from here, imports included
EXIT_BAD_SETTING = 2
logger = logging.getLogger("app.startup")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alexnet-serve",
        description="Serve an AlexNet checkpoint over HTTP. Every setting is also an environment variable "
        "ALEXNET_<NAME> (see the README); a flag wins over the variable.",
        epilog="Exit status: 2 for an invalid setting or a port that is taken, 3 when the server can never "
        "become ready (the checkpoint does not load, the device is missing, warm-up failed), 1 when one of several "
        "workers died while serving.",
    )
    parser.add_argument("--host", help="interface to listen on (ALEXNET_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="TCP port (ALEXNET_PORT, default 8000)")
    parser.add_argument("--checkpoint", help="model file (ALEXNET_CHECKPOINT, default: the shipped cat/dog model)")
    parser.add_argument(
        "--models",
        metavar="NAME=PATH,...",
        help="serve several models, the first being the default (ALEXNET_MODELS; replaces --checkpoint)",
    )
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (ALEXNET_DEVICE, default auto)")
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        help="torch.compile the model (ALEXNET_COMPILE; default: on for the CPU, off for CUDA)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="server processes on the one port, each with its own model and batcher (ALEXNET_WORKERS, default 1)",
    )
    parser.add_argument(
        "--log-format",
        choices=["auto", "json", "text"],
        help="json (one object per line), text, or auto: text on a terminal, else json (ALEXNET_LOG_FORMAT)",
    )
    return parser


def _setting_errors(exc: Any, parser: argparse.ArgumentParser) -> list[str]:
    """pydantic's errors as sentences: which setting (variable and flag), what is wrong, what was given."""
    flags = {action.dest: action.option_strings[-1] for action in parser._actions if action.option_strings}
    lines = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        where = f"ALEXNET_{field.upper()}" + (f" ({flags[field]})" if field in flags else "")
        if error["type"] == "value_error":  # our validators' own sentences, without "Value error, "
            problem = str(error["ctx"]["error"])
        else:
            problem = f"{error['msg'][:1].lower()}{error['msg'][1:]} (got {error['input']!r})"
        lines.append(f"alexnet-serve: {where}: {problem}")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    # OpenMP threads that spin between parallel regions steal the cores decoding and the
    # event loop need; this must be set before torch is imported.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    settings = _settings(args, parser)

    from app.logs import adopt_library_loggers, configure_logging, quiet_native_logs, resolve_format
    from app.startup import EXIT_NEVER_READY, PortUnavailable, cuda_missing, listen, quiet_foreign_logs

    log_format = resolve_format(settings.log_format)
    quiet_native_logs(log_format)  # before torch is imported
    configure_logging(settings.log_level, log_format)
    quiet_foreign_logs()
    # Both checks come before torch is imported and the checkpoint read: they take milliseconds.
    try:
        sock = listen(settings.host, settings.port)
    except PortUnavailable as exc:
        logger.error("%s", exc)
        raise SystemExit(EXIT_BAD_SETTING) from None
    if why := cuda_missing(settings.device):
        logger.error("%s", why)
        raise SystemExit(EXIT_NEVER_READY)
    _say_starting(settings)

    if settings.workers > 1:
        from app.workers import Supervisor

        raise SystemExit(Supervisor(settings, log_format, STARTED).run(sock))

    from app.server import build_server
    from app.startup import Startup

    adopt_library_loggers()  # torch's loggers exist now
    startup = Startup(started=STARTED)
    server = build_server(settings, startup)
    with contextlib.suppress(KeyboardInterrupt):  # as uvicorn.run: Ctrl-C before its handlers are in place
        server.run(sockets=[sock])
    if startup.failure is not None or not server.started:
        raise SystemExit(EXIT_NEVER_READY)


def _settings(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Settings:
    """The settings from the flags and ``ALEXNET_*``; exits 2 with one line per invalid one."""
    from pydantic import ValidationError

    from app.config import Settings

    overrides = {key: value for key, value in vars(args).items() if value is not None}
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        for line in _setting_errors(exc, parser):
            print(line, file=sys.stderr)  # noqa: T201
        raise SystemExit(EXIT_BAD_SETTING) from None


def _say_starting(settings: Settings) -> None:
    """The first line of ours, before the seconds that importing torch and loading the model take."""
    logger.info(
        "starting on %s:%d (pid %d): importing torch, then loading the model; not ready until a 'ready in' line",
        settings.host,
        settings.port,
        os.getpid(),
        extra={"fields": {"startup_s": round(time.monotonic() - STARTED, 1)}},
    )
