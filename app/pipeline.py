"""Run a request's images through a model service, turning each expected failure into an ``ApiError``.

Both doors (``/predict`` and the Open Inference Protocol) use these, so an image gets the
same status and code through either, and every image is one item in the model's batcher.

A request is admitted (``admitted``) before its body is read and counts against the model's
limit until its answer is ready. Its decoding and queueing run under its deadline (504) and
stop as soon as its client disconnects (499): work nobody will receive is dropped before it
is decoded and before it joins a batch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Literal

from starlette.requests import ClientDisconnect
from starlette.types import Receive

from app.admission import OverloadedError, Ticket
from app.arrays import ArrayError
from app.batcher import NotAcceptingError, QueueFullError, QueueTimeoutError
from app.errors import ApiError
from app.memory import HEAP
from app.service import ModelService, Timed
from model.presets import ImageError, ImageTooLargeError, UnsupportedFormatError


def require_ready(service: ModelService) -> None:
    """Raise 503 ``not_ready`` (with ``Retry-After``) unless the model takes work."""
    if service.ready:
        return
    reason = service.startup_error or ("draining" if service.draining else "the model is still loading and warming up")
    headers = {"Retry-After": "5"} | ({"Connection": "close"} if service.draining else {})
    raise ApiError(503, "not_ready", f"not ready: {reason}", headers)


@contextmanager
def admitted(service: ModelService) -> Iterator[Ticket]:
    """Admit one request to ``service`` for the block: 503 when it is not ready, 429 ``overloaded``
    when it has taken on as many images as it may (also when the request later says it has more)."""
    require_ready(service)
    try:
        with service.admission.enter() as ticket:
            yield ticket
    except OverloadedError as exc:
        raise ApiError(429, "overloaded", f"{exc}; retry shortly", {"Retry-After": "1"}) from exc


async def classify_images(
    service: ModelService, images: list[bytes], ticket: Ticket, receive: Receive, what: str = "file"
) -> list[Timed]:
    """Decode every encoded image (off the event loop), then batch them all.

    Several images take at most ``preprocess_threads`` decode threads at a time, so other
    requests' images are decoded between theirs, and the pixels they decode are bounded by
    ``max_request_pixels``. Failures name the image as ``"<what> i of n"`` when there are several.
    The heap they used is given back once requests pause (``app.memory``).
    """
    try:
        return await _classify_images(service, images, ticket, receive, what)
    finally:
        HEAP.note(sum(len(data) for data in images))


async def _classify_images(
    service: ModelService, images: list[bytes], ticket: Ticket, receive: Receive, what: str
) -> list[Timed]:
    count = len(images)
    ticket.cover(count)
    async with _guard(ticket, receive) as deadline:
        if count > 1:
            await _check_pixels(service, images)
        turn = asyncio.Semaphore(service.settings.preprocess_threads) if count > 1 else None
        items = await asyncio.gather(
            *(_preprocess(service, data, turn, what, i, count) for i, data in enumerate(images))
        )
        deadline.reschedule(None)  # from here the batcher keeps the deadline: a running batch is never cut short
        return await _predict_all(service, [item for item, _ in items], [seconds for _, seconds in items], ticket, what)


async def classify_arrays(
    service: ModelService,
    data: bytes,
    layout: Literal["pixels", "tensor"],
    count: int,
    ticket: Ticket,
    receive: Receive,
    what: str,
) -> list[Timed]:
    """Split a preprocessed array into ``count`` items (see ``ModelService.array_items``) and batch them."""
    ticket.cover(count)
    async with _guard(ticket, receive) as deadline:
        try:
            items, seconds = await service.array_items(data, layout, count)
        except ArrayError as exc:
            raise ApiError(422, "invalid_tensor", f"input '{what}': {exc}") from exc
        deadline.reschedule(None)
        return await _predict_all(service, items, [seconds / count] * count, ticket)


@asynccontextmanager
async def _guard(ticket: Ticket, receive: Receive) -> AsyncIterator[asyncio.Timeout]:
    """Run the block until the ticket's deadline (504; the block may lift it) or until the
    client disconnects (499), whichever comes first; yields the deadline's ``asyncio.Timeout``.

    The request's body has been read, so the next message ``receive`` gives is ``http.disconnect``.
    """
    remaining = ticket.deadline - time.monotonic()
    if remaining <= 0:
        raise ApiError(504, "timeout", f"the {ticket.admission.timeout_s:g} s deadline passed before decoding")
    loop = asyncio.get_running_loop()
    client_left = False
    try:
        async with asyncio.timeout(remaining) as timeout:

            async def watch() -> None:
                nonlocal client_left
                while (await receive())["type"] != "http.disconnect":
                    pass
                client_left = True
                if not timeout.expired():
                    timeout.reschedule(loop.time())  # cancels the block now

            watcher = asyncio.create_task(watch())
            try:
                yield timeout
            finally:
                watcher.cancel()
    except TimeoutError:
        if client_left:
            raise ClientDisconnect from None
        raise ApiError(
            504, "timeout", f"images not decoded within the {ticket.admission.timeout_s:g} s deadline"
        ) from None


async def _check_pixels(service: ModelService, images: list[bytes]) -> None:
    budget = service.settings.max_request_pixels
    pixels = await service.pixels_to_decode(images)
    if pixels > budget:
        raise ApiError(
            422,
            "image_too_large",
            f"the {len(images)} images decode to {pixels} pixels, more than the {budget} allowed in one request",
        )


async def _predict_all(
    service: ModelService, items: list[Any], preprocess_seconds: list[float], ticket: Ticket, what: str = "input"
) -> list[Timed]:
    """Submit preprocessed items to the model's batcher, one queue entry each, and wait for all."""
    count = len(items)
    where = [f"{what} {index + 1} of {count}: " if count > 1 else "" for index in range(count)]
    triples = zip(items, preprocess_seconds, where, strict=True)
    return await asyncio.gather(*(_predict(service, item, s, ticket.deadline, at) for item, s, at in triples))


async def _preprocess(
    service: ModelService, data: bytes, turn: asyncio.Semaphore | None, what: str, index: int, count: int
) -> tuple[Any, float]:
    where = f"{what} {index + 1} of {count}: " if count > 1 else ""
    try:
        return await service.preprocess(data, turn)
    except ImageError as exc:
        raise _image_error(exc, where) from exc


def _image_error(exc: ImageError, where: str) -> ApiError:
    if isinstance(exc, ImageTooLargeError):
        return ApiError(422, "image_too_large", where + str(exc))
    if isinstance(exc, UnsupportedFormatError):
        return ApiError(415, "unsupported_image_format", where + str(exc))
    return ApiError(422, "invalid_image", where + str(exc))


async def _predict(service: ModelService, item: Any, preprocess_seconds: float, deadline: float, where: str) -> Timed:
    """Wait for one item's answer; a JPEG decoded with its batch fails here as it would have in ``_preprocess``."""
    try:
        return await service.predict(item, preprocess_seconds, deadline)
    except ImageError as exc:
        raise _image_error(exc, where) from exc
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
