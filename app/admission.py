"""Admission control: how many images one model has taken on, and the deadline of each request.

An image counts from the moment its request is admitted until its answer is ready: while
its body is read, while it waits for and goes through decoding, while it waits for and runs
in a batch. Over the limit a request is refused at once instead of joining a wait that
nothing bounds. Knows nothing of HTTP: the pipeline turns ``OverloadedError`` into 429.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


class OverloadedError(Exception):
    """Admitting these images would take the model past its limit."""


@dataclass
class Ticket:
    """One admitted request: its image count (grows once the body says how many) and deadline."""

    admission: Admission
    images: int
    deadline: float  # time.monotonic() by which its images must have reached a batch

    def cover(self, images: int) -> None:
        """Count the request as ``images`` images (once its body says how many); raises
        ``OverloadedError`` when the extra ones take the model past its limit."""
        extra = images - self.images
        if extra > 0:
            self.admission._take(extra, held=self.images)
            self.images += extra


class Admission:
    """Counts admitted images against ``limit``; a request alone is always admitted, however large."""

    def __init__(self, limit: int, timeout_s: float) -> None:
        self.limit = limit
        self.timeout_s = timeout_s
        self.admitted = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @contextmanager
    def enter(self, images: int = 1) -> Iterator[Ticket]:
        """Admit a request of ``images`` images (more may be added) until the block ends."""
        self._take(images)
        ticket = Ticket(self, images, time.monotonic() + self.timeout_s)
        try:
            yield ticket
        finally:
            self.admitted -= ticket.images
            if not self.admitted:
                self._idle.set()

    @property
    def full(self) -> bool:
        """Whether a new one-image request would be refused now (``enter`` would raise)."""
        return self.admitted > 0 and self.admitted + 1 > self.limit

    async def idle(self) -> None:
        """Return once no image is admitted (every admitted request has its answer)."""
        await self._idle.wait()

    def _take(self, images: int, held: int = 0) -> None:
        """Count ``images`` more, for a request already holding ``held``."""
        if self.admitted > held and self.admitted + images > self.limit:
            raise OverloadedError(f"{self.admitted} images are already being served (limit {self.limit})")
        self.admitted += images
        self._idle.clear()
