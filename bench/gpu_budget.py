"""The run's wall-clock allowance: how much is left, and how long the next piece of work may take.

``bench/gpu.sh`` must finish inside a device lease, so it plans from what is left rather than
from fixed durations: a level or a model cell that cannot get its shortest time is skipped
(and recorded as skipped), never run past the budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Budget:
    """``seconds`` of wall time from construction; ``clock`` is injectable for tests."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self.started = clock()

    def elapsed(self) -> float:
        return self._clock() - self.started

    def left(self, reserve: float = 0.0) -> float:
        """Seconds left, keeping ``reserve`` for later work."""
        return self.seconds - self.elapsed() - reserve

    def slot(
        self, items_left: int, *, longest: float, shortest: float, overhead: float = 0.0, reserve: float = 0.0
    ) -> float | None:
        """Measured seconds for the next of ``items_left`` equal items, each costing ``overhead``
        on top: an even share of what is left, capped at ``longest``; None when not even
        ``shortest`` fits (the caller skips the item)."""
        share = self.left(reserve) / max(1, items_left) - overhead
        if share < shortest:
            return shortest if self.left(reserve) >= shortest + overhead else None
        return min(longest, share)
