"""Take turns on the CPU: decoding shares the cores, a model batch has them to itself.

On a small machine the model's OpenMP threads and the decode threads fight for the same
cores: every parallel region of the model waits at its barrier for whichever of its
threads a decode pre-empted. ``CpuTurns`` is a readers–writer lock with writer
preference: any number of decodes run together, a batch waits for the decodes already
running (a couple of milliseconds) and new decodes wait for the batch.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class CpuTurns:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._sharing = 0  # decodes running now
        self._exclusive = False  # a batch is running
        self._waiting_exclusive = 0  # batches waiting for their turn

    @contextmanager
    def shared(self) -> Iterator[None]:
        """Hold while decoding: waits while a batch runs or is waiting to."""
        with self._cond:
            self._cond.wait_for(lambda: not self._exclusive and not self._waiting_exclusive)
            self._sharing += 1
        try:
            yield
        finally:
            with self._cond:
                self._sharing -= 1
                if not self._sharing:
                    self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold while running a batch: waits for the decodes in progress to finish."""
        with self._cond:
            self._waiting_exclusive += 1
            try:
                self._cond.wait_for(lambda: not self._exclusive and not self._sharing)
            finally:
                self._waiting_exclusive -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


# The cores are the process's, so every CPU engine in it takes turns on the same gate.
CPU_TURNS = CpuTurns()
