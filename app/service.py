"""One served model: its engine, its thread pools, its batcher, its readiness."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from PIL import Image

from app.admission import Admission
from app.arrays import pixel_items, tensor_items
from app.batcher import Batcher
from app.config import Settings
from app.engine import Engine
from app.startup import StartupFailure
from model.presets import ImageError

logger = logging.getLogger(__name__)

# An unset ALEXNET_MAX_QUEUE admits about this much work (seconds) per model.
QUEUE_TARGET_S = 1.0


def sample_photo() -> bytes:
    """A JPEG the size of a typical phone-resized photo (500x375), for timing a decode."""
    buffer = io.BytesIO()
    Image.linear_gradient("L").resize((500, 375)).convert("RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _best_of(times: int, work: Callable[[], object]) -> float:
    """The shortest of ``times`` runs of ``work`` (seconds): the least disturbed by other work."""
    timings = []
    for _ in range(times):
        started = time.perf_counter()
        work()
        timings.append(time.perf_counter() - started)
    return min(timings)


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

    def __init__(
        self,
        settings: Settings,
        *,
        name: str | None = None,
        on_batch: Callable[[str, int, float], None] | None = None,
    ) -> None:
        """Load ``settings.checkpoint``, served as ``name`` (default: the checkpoint's own name).

        ``on_batch(name, batch_size, seconds)`` is told about every batch the model ran.
        """
        self.settings = settings
        self.engine = Engine(settings)
        self.info = replace(self.engine.info, name=name) if name else self.engine.info
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._decode_pool = ThreadPoolExecutor(max_workers=settings.preprocess_threads, thread_name_prefix="decode")
        self.batcher: Batcher[Any, list[float] | ImageError] = Batcher(
            self.engine.run,
            self._model_thread,
            max_batch_size=settings.max_batch_size,
            max_delay_s=settings.max_delay_ms / 1000,
            max_queue=settings.max_queue or settings.max_batch_size,  # sized at warm-up when unset
            timeout_s=settings.request_timeout_s,
            on_batch=(lambda size, seconds: on_batch(self.info.name, size, seconds)) if on_batch else None,
            coming=lambda: self._preparing,
            window_opens_when_free=self.engine.takes_turns,
        )
        self.admission = Admission(self.batcher.max_queue, settings.request_timeout_s)
        self._preparing = 0  # images being decoded or split, about to reach the batcher
        self.warm = False
        self.draining = False
        self.startup_error: str | None = None

    @property
    def preparing(self) -> int:
        """Images being decoded or split, or waiting for a decode thread."""
        return self._preparing

    @property
    def ready(self) -> bool:
        return self.warm and not self.draining and self.batcher.running

    async def start(self) -> None:
        """Warm the model up off the event loop, then start taking work.

        Raises ``StartupFailure`` when warm-up fails (the model stays unready, saying why)."""
        try:
            seconds = await asyncio.get_running_loop().run_in_executor(self._model_thread, self.engine.warm_up)
        except Exception as exc:
            self.startup_error = f"warm-up failed: {exc}"
            logger.debug("warm-up of %s failed", self.info.name, exc_info=True)
            raise StartupFailure(f"warm-up of model {self.info.name!r} failed: {type(exc).__name__}: {exc}") from exc
        self.info = replace(self.engine.info, name=self.info.name)  # warm-up may have given up compiling
        if self.settings.max_queue is None:
            await self._size_queue()
        self.batcher.start()
        self.warm = True
        logger.info(
            "model %s ready on %s (%s) after %.1f s warm-up", self.info.name, self.info.device, self.info.dtype, seconds
        )

    async def _size_queue(self) -> None:
        """Set the admission limit to about ``QUEUE_TARGET_S`` of work, timed on this machine: a full
        batch on the model's thread and a typical photo's decode on a decode thread."""
        loop = asyncio.get_running_loop()
        batch_s = await loop.run_in_executor(self._model_thread, self._time_full_batch)
        photo = sample_photo()
        decode_s = await loop.run_in_executor(self._decode_pool, _best_of, 3, lambda: self.engine.preprocess(photo))
        size = self.settings.max_batch_size
        per_image = batch_s / size + decode_s / self.settings.preprocess_threads
        limit = max(size, round(QUEUE_TARGET_S / per_image))
        self.admission.limit = self.batcher.max_queue = limit
        logger.info(
            "max_queue for %s: %d images, about %.1f s of work (batch of %d: %.0f ms, decode: %.1f ms an image); "
            "set ALEXNET_MAX_QUEUE to choose",
            self.info.name,
            limit,
            limit * per_image,
            size,
            1000 * batch_s,
            1000 * decode_s,
            extra={"fields": {"max_queue": limit}},
        )

    def _time_full_batch(self) -> float:
        size, side = self.settings.max_batch_size, self.info.input_size
        batch = torch.zeros(size, 3, side, side, dtype=torch.uint8)
        return _best_of(2, lambda: self.engine.run_tensors(batch))

    async def stop(self) -> None:
        """Refuse new work, answer everything queued, release the threads."""
        self.draining = True
        await self.batcher.drain()
        self._decode_pool.shutdown(wait=True)
        self._model_thread.shutdown(wait=True)

    async def preprocess(self, data: bytes, turn: asyncio.Semaphore | None = None) -> tuple[Any, float]:
        """Decode and transform off the event loop; returns (tensor, seconds).

        ``turn``, when given, is held while decoding: a request's share of the decode threads,
        so that its many images take turns with other requests' instead of queueing ahead of them.
        """
        started = time.monotonic()
        self._preparing += 1
        try:
            async with turn or nullcontext():
                loop = asyncio.get_running_loop()
                tensor = await loop.run_in_executor(self._decode_pool, self.engine.preprocess, data)
        finally:
            self._preparing -= 1
        return tensor, time.monotonic() - started

    async def pixels_to_decode(self, images: list[bytes]) -> int:
        """How many pixels decoding ``images`` would produce, read from their headers off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._decode_pool, self.engine.pixels_to_decode, images)

    async def array_items(
        self, data: bytes, layout: Literal["pixels", "tensor"], count: int
    ) -> tuple[list[Any], float]:
        """Split a preprocessed array (raw little-endian bytes, shape checked by the caller) into
        per-image items off the event loop: ``pixels`` is uint8 NHWC, ``tensor`` normalised
        float32 NCHW. Returns (items, seconds); raises ``app.arrays.ArrayError``."""
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        self._preparing += count
        try:
            if layout == "pixels":
                items = await loop.run_in_executor(self._decode_pool, pixel_items, data, count, self.info.input_size)
            else:
                items = await loop.run_in_executor(self._decode_pool, tensor_items, data, count, self.engine.prep)
        finally:
            self._preparing -= count
        return items, time.monotonic() - started

    def device_memory_bytes(self) -> int | None:
        """Device memory the allocator holds for tensors, on CUDA; None on the CPU."""
        device = self.engine.device
        return torch.cuda.memory_allocated(device) if device.type == "cuda" else None

    async def predict(self, tensor: Any, preprocess_seconds: float, deadline: float | None = None) -> Timed:
        """Submit one preprocessed item to the batcher and wait for its probabilities; past
        ``deadline`` (``time.monotonic()``) it is not put in a batch any more. Raises
        ``model.presets.ImageError`` for an item the engine left to its batch to decode (a JPEG
        decoded on the device) when it does not decode."""
        result = await self.batcher.submit(tensor, deadline)
        if isinstance(result.value, ImageError):  # a JPEG left to its batch to decode did not decode
            raise result.value
        return Timed(result.value, result.batch_size, preprocess_seconds, result.queue_seconds, result.run_seconds)
