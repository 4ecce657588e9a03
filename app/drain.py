"""Graceful shutdown, the app's side: refuse new work at once, answer all that was received.

On SIGTERM the server calls ``begin()`` from its signal handler: ``/readyz`` and new requests
get 503 ``not_ready`` with ``Connection: close`` from then on, and every answer closes its
connection. ``settle()`` then keeps the connections open for ``GRACE_S`` — so requests that
clients sent before the signal, still in the sockets' buffers, are read and answered instead
of being cut off — and waits until every admitted request has its answer. Only then does the
server close connections and stop (``app.server``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.registry import ModelRegistry

logger = logging.getLogger(__name__)

# How long connections stay open after the signal for requests already on their way to be read.
GRACE_S = 0.5


class Drain:
    """Whether the app is draining, shared by the server (which starts it) and the app."""

    def __init__(self) -> None:
        self.draining = False
        self.registry: ModelRegistry | None = None

    def attach(self, registry: ModelRegistry) -> None:
        """The models to drain (known once the lifespan has loaded them)."""
        self.registry = registry
        if self.draining:
            registry.begin_draining()

    def begin(self) -> None:
        """Refuse new work from now on. Only sets flags, so a signal handler may call it."""
        self.draining = True
        if self.registry is not None:
            self.registry.begin_draining()

    async def settle(self, timeout_s: float) -> None:
        """Let requests already sent be read, then wait (at most ``timeout_s`` in all) until every
        admitted request has been answered."""
        self.begin()
        started = time.monotonic()
        await asyncio.sleep(min(GRACE_S, timeout_s))
        if self.registry is None or not self.registry.admitted:
            return
        try:
            async with asyncio.timeout(max(0.0, timeout_s - (time.monotonic() - started))):
                await self.registry.idle()
        except TimeoutError:
            logger.error("drain timeout: %d images still unanswered after %.1f s", self.registry.admitted, timeout_s)
            return
        logger.info("drained: every admitted request answered after %.2f s", time.monotonic() - started)
