"""One served model: its engine, its thread pools, its batcher, its readiness."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from app.batcher import Batcher
from app.config import Settings
from app.engine import Engine

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timed:
    """A model answer for one image with the stage timings it went through (seconds)."""

    probabilities: list[float]
    batch_size: int
    preprocess: float
    queue: float
    inference: float


class ModelService:
    """Owns the model's lifecycle: load (at construction), warm up, serve, drain."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = Engine(settings)
        self.info = self.engine.info
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._decode_pool = ThreadPoolExecutor(max_workers=settings.preprocess_threads, thread_name_prefix="decode")
        self.batcher: Batcher[Any, list[float]] = Batcher(
            self.engine.run,
            self._model_thread,
            max_batch_size=settings.max_batch_size,
            max_delay_s=settings.max_delay_ms / 1000,
            max_queue=settings.max_queue,
            timeout_s=settings.request_timeout_s,
        )
        self.warm = False
        self.draining = False
        self.startup_error: str | None = None

    @property
    def ready(self) -> bool:
        return self.warm and not self.draining and self.batcher.running

    async def start(self) -> None:
        """Warm the model up off the event loop, then start taking work."""
        try:
            seconds = await asyncio.get_running_loop().run_in_executor(self._model_thread, self.engine.warm_up)
        except Exception as exc:
            self.startup_error = f"warm-up failed: {exc}"
            logger.exception("warm-up failed; the service stays unready")
            return
        self.batcher.start()
        self.warm = True
        logger.info(
            "model %s ready on %s (%s) after %.1f s warm-up", self.info.name, self.info.device, self.info.dtype, seconds
        )

    async def stop(self) -> None:
        """Refuse new work, answer everything queued, release the threads."""
        self.draining = True
        await self.batcher.drain()
        self._decode_pool.shutdown(wait=True)
        self._model_thread.shutdown(wait=True)

    async def preprocess(self, data: bytes) -> tuple[Any, float]:
        """Decode and transform off the event loop; returns (tensor, seconds)."""
        started = time.monotonic()
        tensor = await asyncio.get_running_loop().run_in_executor(self._decode_pool, self.engine.preprocess, data)
        return tensor, time.monotonic() - started

    async def predict(self, tensor: Any, preprocess_seconds: float) -> Timed:
        result = await self.batcher.submit(tensor)
        return Timed(result.value, result.batch_size, preprocess_seconds, result.queue_seconds, result.run_seconds)
