"""Dynamic batching: gather concurrent items, run them as one batch, answer each caller.

Knows nothing of HTTP or torch: it takes a blocking ``run_batch(items) -> results``
function and runs it on an executor, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

logger = logging.getLogger(__name__)


class BatcherError(Exception):
    """Base for the ways an item can fail before it reaches the model."""


class QueueFullError(BatcherError):
    """The bounded queue is full: the server is overloaded, come back shortly."""


class NotAcceptingError(BatcherError):
    """The batcher is not running (not started yet, or draining)."""


class QueueTimeoutError(BatcherError):
    """The item waited longer than the request timeout before a batch took it."""


@dataclass(frozen=True)
class BatchResult(Generic[R]):
    value: R
    batch_size: int
    queue_seconds: float
    run_seconds: float


@dataclass
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[BatchResult[R]]
    deadline: float  # time.monotonic() after which it is not put in a batch
    arrived: float = field(default_factory=time.monotonic)


class Batcher(Generic[T, R]):
    """Collect up to ``max_batch_size`` items, or what arrives within ``max_delay_s`` of
    the oldest waiting item, and run them together."""

    def __init__(
        self,
        run_batch: Callable[[list[T]], list[R]],
        executor: Executor,
        *,
        max_batch_size: int,
        max_delay_s: float,
        max_queue: int,
        timeout_s: float,
        on_batch: Callable[[int, float], None] | None = None,
        coming: Callable[[], int] | None = None,
        window_opens_when_free: bool = False,
    ) -> None:
        """``on_batch(size, seconds)``, when given, is called after every batch that ran.

        ``coming()``, when given, says how many items are being prepared and will be
        submitted soon; a batch then stops waiting as soon as none are, instead of always
        waiting out its window (a lone request does not pay the window).

        ``window_opens_when_free`` counts the window from the moment the model is free
        instead of from the oldest item's arrival: for when preparing items cannot overlap
        a running batch (CPU turns), so under load the items prepared right after a batch
        join the next one instead of trailing behind in small batches.
        """
        self._run_batch = run_batch
        self._on_batch = on_batch
        self._coming = coming
        self._window_opens_when_free = window_opens_when_free
        self._executor = executor
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self._waiting: deque[_Pending[T, R]] = deque()
        self._arrival = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._accepting = False
        self._in_flight = 0

    @property
    def running(self) -> bool:
        return self._accepting and self._task is not None and not self._task.done()

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def in_flight(self) -> int:
        """Items in the batch the model is running now."""
        return self._in_flight

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._collect_forever(), name="batcher")
        self._accepting = True

    async def submit(self, item: T, deadline: float | None = None) -> BatchResult[R]:
        """Queue one item and wait for its result.

        Raises ``NotAcceptingError`` when not running, ``QueueFullError`` when
        ``max_queue`` items already wait, ``QueueTimeoutError`` when no batch took the item
        by ``deadline`` (``time.monotonic()``; default: ``timeout_s`` from now), or whatever
        ``run_batch`` raised for its batch.
        """
        if not self.running:
            raise NotAcceptingError("the model is not accepting work (starting up or draining)")
        if len(self._waiting) >= self.max_queue:
            raise QueueFullError(f"{len(self._waiting)} images are already waiting for the model")
        future = asyncio.get_running_loop().create_future()
        pending: _Pending[T, R] = _Pending(
            item, future, time.monotonic() + self.timeout_s if deadline is None else deadline
        )
        self._waiting.append(pending)
        self._arrival.set()
        return await pending.future

    async def drain(self) -> None:
        """Stop taking items, finish everything queued or running, then stop."""
        self._accepting = False
        self._arrival.set()
        if self._task is not None:
            await self._task

    async def _collect_forever(self) -> None:
        while self._accepting or self._waiting:
            if not self._waiting:
                self._arrival.clear()
                await self._arrival.wait()
                continue
            batch = await self._collect()
            if batch:
                await self._run(batch)

    async def _collect(self) -> list[_Pending[T, R]]:
        # Take everything already queued first: under load the oldest item is often past
        # its window already, and timing out at once would run it alone while dozens wait
        # behind it. Then wait for the rest of the window (from the oldest arrival, or from
        # now, when the model became free), but not for items nobody is preparing.
        opened = time.monotonic() if self._window_opens_when_free else self._waiting[0].arrived
        deadline = opened + self.max_delay_s
        batch = self._take(self.max_batch_size)
        while len(batch) < self.max_batch_size and self._accepting:
            if self._coming is not None and not self._coming():
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._arrival.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrival.wait(), remaining)
            batch += self._take(self.max_batch_size - len(batch))
        return [pending for pending in batch if not pending.future.done()]  # callers gone meanwhile

    def _take(self, limit: int) -> list[_Pending[T, R]]:
        taken: list[_Pending[T, R]] = []
        now = time.monotonic()
        while self._waiting and len(taken) < limit:
            pending = self._waiting.popleft()
            if pending.future.done():  # the caller went away
                continue
            if now > pending.deadline:
                pending.future.set_exception(
                    QueueTimeoutError(
                        f"deadline passed before a batch took it (waited {now - pending.arrived:.1f} s in the queue)"
                    )
                )
                continue
            taken.append(pending)
        return taken

    async def _run(self, batch: list[_Pending[T, R]]) -> None:
        started = time.monotonic()
        self._in_flight = len(batch)
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._run_batch, [pending.item for pending in batch]
            )
            if len(results) != len(batch):
                raise RuntimeError(f"batch of {len(batch)} items returned {len(results)} results")
        except Exception as exc:  # one failed batch fails its own items, never the batcher
            logger.exception("batch of %d failed", len(batch))
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        finally:
            self._in_flight = 0
        run_seconds = time.monotonic() - started
        if self._on_batch is not None:
            self._on_batch(len(batch), run_seconds)
        for pending, value in zip(batch, results, strict=True):
            if not pending.future.done():
                pending.future.set_result(BatchResult(value, len(batch), started - pending.arrived, run_seconds))
