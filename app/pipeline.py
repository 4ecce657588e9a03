"""Run a request's images through a model service, turning each expected failure into an ``ApiError``.

Both doors (``/predict`` and the Open Inference Protocol) use these, so an image gets the
same status and code through either, and every image is one item in the model's batcher.
"""

from __future__ import annotations

import asyncio
from typing import Any

from app.batcher import NotAcceptingError, QueueFullError, QueueTimeoutError
from app.errors import ApiError
from app.service import ModelService, Timed
from model.presets import ImageError, ImageTooLargeError, UnsupportedFormatError


def require_ready(service: ModelService) -> None:
    """Raise 503 ``not_ready`` (with ``Retry-After``) unless the model takes work."""
    if service.ready:
        return
    reason = service.startup_error or ("draining" if service.draining else "the model is still loading and warming up")
    raise ApiError(503, "not_ready", f"not ready: {reason}", {"Retry-After": "5"})


async def classify_images(service: ModelService, images: list[bytes], what: str = "file") -> list[Timed]:
    """Decode every encoded image (in parallel, off the event loop), then batch them all.

    Failures name the image as ``"<what> i of n"`` when there are several.
    """
    items = await asyncio.gather(*(_preprocess(service, data, what, i, len(images)) for i, data in enumerate(images)))
    return await classify_items(service, [item for item, _ in items], [seconds for _, seconds in items])


async def classify_items(service: ModelService, items: list[Any], preprocess_seconds: list[float]) -> list[Timed]:
    """Submit preprocessed items to the model's batcher, one queue entry each, and wait for all."""
    pairs = zip(items, preprocess_seconds, strict=True)
    return await asyncio.gather(*(_predict(service, item, seconds) for item, seconds in pairs))


async def _preprocess(service: ModelService, data: bytes, what: str, index: int, count: int) -> tuple[Any, float]:
    where = f"{what} {index + 1} of {count}: " if count > 1 else ""
    try:
        return await service.preprocess(data)
    except ImageTooLargeError as exc:
        raise ApiError(422, "image_too_large", where + str(exc)) from exc
    except UnsupportedFormatError as exc:
        raise ApiError(415, "unsupported_image_format", where + str(exc)) from exc
    except ImageError as exc:
        raise ApiError(422, "invalid_image", where + str(exc)) from exc


async def _predict(service: ModelService, item: Any, preprocess_seconds: float) -> Timed:
    try:
        return await service.predict(item, preprocess_seconds)
    except QueueFullError as exc:
        raise ApiError(429, "overloaded", f"{exc}; retry shortly", {"Retry-After": "1"}) from exc
    except NotAcceptingError as exc:
        raise ApiError(503, "not_ready", str(exc), {"Retry-After": "5"}) from exc
    except QueueTimeoutError as exc:
        raise ApiError(504, "timeout", str(exc)) from exc


def timing_headers(answers: list[Timed], total: float) -> dict[str, str]:
    """``X-Batch-Size`` (one per image) and ``Server-Timing`` (the slowest image's stages)."""

    def ms(seconds: float) -> str:
        return f"{1000 * seconds:.2f}"

    stages = {
        "queue": max(a.queue for a in answers),
        "preprocess": max(a.preprocess for a in answers),
        "inference": max(a.inference for a in answers),
        "total": total,
    }
    return {
        "X-Batch-Size": ",".join(str(a.batch_size) for a in answers),
        "Server-Timing": ", ".join(f"{name};dur={ms(seconds)}" for name, seconds in stages.items()),
    }
