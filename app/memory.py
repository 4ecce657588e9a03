"""Give the heap that a burst of uploads freed back to the system (glibc's ``malloc_trim``).

glibc keeps freed memory in its arenas for reuse: after a burst of large uploads, or of images
that decode large, the process would stay at the burst's peak. Once the requests have stopped
for ``quiet_s`` (or after every ``every_bytes`` of uploads under steady traffic), the free heap
is handed back, off the event loop. Elsewhere than on glibc nothing is done.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from collections.abc import Callable


def _load_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


class HeapTrimmer:
    """Trims the heap after each burst of requests: ``note(nbytes)`` at the end of every request."""

    def __init__(self, *, quiet_s: float = 1.0, every_bytes: int = 256 << 20) -> None:
        self.quiet_s = quiet_s
        self.every_bytes = every_bytes
        self.trims = 0
        self._trim = _load_malloc_trim()
        self._since_trim = 0
        self._timer: asyncio.TimerHandle | None = None

    def note(self, nbytes: int) -> None:
        """A request that carried ``nbytes`` of uploads has finished (call on the event loop)."""
        if self._trim is None:
            return
        self._since_trim += nbytes
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        if self._since_trim >= self.every_bytes:
            self._start(loop)
        else:
            self._timer = loop.call_later(self.quiet_s, self._start, loop)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer, self._since_trim = None, 0
        loop.run_in_executor(None, self._run)

    def _run(self) -> None:
        assert self._trim is not None
        self._trim(0)
        self.trims += 1


HEAP = HeapTrimmer()
