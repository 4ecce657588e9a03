"""Start-up of the whole server: how long it has taken, the checks that fail fast before anything
heavy is loaded (the port, the device), and the failure that means it never becomes ready."""

from __future__ import annotations

import ctypes
import errno
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

# The exit status of a server that can never become ready (uvicorn's own for a failed start-up).
EXIT_NEVER_READY = 3
# uvicorn's lines that would say more than is true: the app's lifespan returns before the models
# are warm. Our own "ready in N s: URL" line says it when it is. (uvicorn's "Uvicorn running on
# …", as early, is not logged for a socket it is given: ``listen``.)
_PREMATURE = frozenset({"Waiting for application startup.", "Application startup complete."})

ASGIApp = Callable[..., Any]


class PortUnavailable(Exception):
    """The listening socket cannot be had (the port is taken, the host is not ours): an argument to
    change, found before anything is loaded. The message says which address and what to do."""


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port`` (inheritable, for the workers); raises ``PortUnavailable``.

    It listens at once, so that a second server on the same port fails here rather than after
    loading: connections made while the model loads wait in the backlog instead of being refused."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)  # uvicorn's default backlog
    except OSError as exc:
        sock.close()
        raise PortUnavailable(_bind_advice(host, port, exc)) from None
    sock.set_inheritable(True)
    return sock


def _bind_advice(host: str, port: int, exc: OSError) -> str:
    where = f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {where}: the address is already in use (another server?); stop it "
            f"(`ss -ltnp 'sport = :{port}'` shows which process) or choose another port with --port or ALEXNET_PORT"
        )
    if exc.errno == errno.EACCES:
        return f"cannot listen on {where}: permission denied; choose a port above 1023 with --port or ALEXNET_PORT"
    return f"cannot listen on {where}: {exc.strerror or exc}; check --host / ALEXNET_HOST and --port / ALEXNET_PORT"


def cuda_missing(device: str) -> str | None:
    """Why a CUDA ``device`` can never be used here, found in milliseconds without importing torch
    (seconds): no NVIDIA driver, or a driver that sees no GPU. None for other devices, or when
    CUDA may work (torch then checks the rest: the device index, its own build)."""
    if not device.startswith("cuda"):
        return None
    unavailable = f"device {device!r} requested but CUDA is not available"
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return f"{unavailable} (no NVIDIA driver: libcuda.so.1 is not installed)"
    count = ctypes.c_int(0)
    if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        return f"{unavailable} (the NVIDIA driver sees no GPU)"
    return None


def quiet_foreign_logs() -> None:
    """Drop log lines that are not true of this server or that we cannot act on, at their logger.

    - torch.utils._pytree: torchao (imported for int8) registers its ``KernelPreference`` enum
      with an API torch 2.14 deprecates; torchao must change, not us or the operator.
    - torch.utils.cpp_extension: "No CUDA runtime is found, using CUDA_HOME=…" is printed when
      torch.compile's C++ toolchain is looked up on a machine with a CUDA toolkit but no GPU;
      serving on the CPU needs no CUDA runtime.
    - uvicorn: its start-up lines that come before the server is ready (``_PREMATURE``).
    """
    _drop("torch.utils._pytree", "is an Enum subclass and is now natively supported by torch.compile")
    _drop("torch.utils.cpp_extension", "No CUDA runtime is found")
    logging.getLogger("uvicorn.error").addFilter(lambda record: record.getMessage() not in _PREMATURE)


def _drop(logger_name: str, text: str) -> None:
    logging.getLogger(logger_name).addFilter(lambda record: text not in record.getMessage())


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
