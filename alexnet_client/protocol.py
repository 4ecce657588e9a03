"""The wire side without I/O, shared by ``Client`` and ``AsyncClient``: what an image becomes in a
request, what an answer becomes in results or an ``ApiError``, and how long to wait before a retry."""

from __future__ import annotations

import contextlib
import io
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import IO, Any, Union

import httpx

from alexnet_client.errors import ApiError
from alexnet_client.results import ModelInfo, Prediction, Result

# A path, encoded image bytes, a PIL image or a binary file object.
ImageInput = Union[str, os.PathLike, bytes, bytearray, memoryview, IO[bytes], Any]  # noqa: UP007

RETRY_STATUSES = frozenset({429, 503})
# A request of several images is refused whole when one of them is bad; on these statuses its images
# are sent again in smaller requests until each bad image is alone.
PER_IMAGE_STATUSES = frozenset({400, 413, 415, 422})


@dataclass(frozen=True)
class Upload:
    """One image as it goes into a multipart ``file`` field."""

    name: str
    data: bytes


def to_upload(image: ImageInput, default_name: str = "image") -> Upload:
    """Read ``image`` into bytes; PIL images are encoded (PNG when they have transparency or a palette, else
    JPEG at quality 95)."""
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        return Upload(path.name, path.read_bytes())
    if isinstance(image, (bytes, bytearray, memoryview)):
        return Upload(default_name, bytes(image))
    if type(image).__module__.startswith("PIL."):
        buffer = io.BytesIO()
        lossless = image.mode in ("RGBA", "LA", "P", "PA", "I", "I;16", "F")
        image.save(buffer, format="PNG" if lossless else "JPEG", quality=95)
        return Upload(f"{default_name}.{'png' if lossless else 'jpg'}", buffer.getvalue())
    if hasattr(image, "read"):
        name = Path(str(getattr(image, "name", default_name))).name
        return Upload(name, image.read())
    raise TypeError(f"cannot send {type(image).__name__} as an image: give a path, bytes, a PIL image or a file")


def source_name(image: ImageInput, index: int) -> str:
    """The name results and errors carry for ``image`` (its path when it has one)."""
    if isinstance(image, (str, os.PathLike)):
        return os.fspath(image)
    return str(getattr(image, "name", None) or f"image-{index}")


def predict_request(
    uploads: Sequence[Upload], *, top_k: int | None, model: str | None
) -> tuple[dict[str, Any], list[tuple[str, tuple[str, bytes, str]]]]:
    """The query parameters and multipart files of one ``POST /predict``."""
    params: dict[str, Any] = {}
    if top_k is not None:
        params["top_k"] = top_k
    if model is not None:
        params["model"] = model
    files = [("file", (upload.name, upload.data, "application/octet-stream")) for upload in uploads]
    return params, files


def parse_server_timing(header: str | None) -> dict[str, float]:
    """``queue;dur=1.5, total;dur=20`` → ``{"queue": 1.5, "total": 20.0}``."""
    timings: dict[str, float] = {}
    for metric in (header or "").split(","):
        name, *params = (part.strip() for part in metric.split(";"))
        for param in params:
            key, _, value = param.partition("=")
            if name and key == "dur":
                with contextlib.suppress(ValueError):
                    timings[name] = float(value)
    return timings


def parse_batch_sizes(header: str | None) -> list[int]:
    """``X-Batch-Size: 8,8,3`` → ``[8, 8, 3]`` (one per image of the request)."""
    return [int(part) for part in (header or "").split(",") if part.strip().isdigit()]


def parse_retry_after(header: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not header:
        return None
    try:
        return max(0.0, float(header))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def api_error(response: httpx.Response) -> ApiError:
    """The server's ``{"error": {"code", "message"}}`` (or V2's ``{"error": "..."}``) as an exception."""
    code, message = f"http_{response.status_code}", response.reason_phrase or "error"
    try:
        body = response.json()
    except ValueError:
        body = None
        if response.text.strip():
            message = response.text.strip()[:500]
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            code, message = str(error.get("code", code)), str(error.get("message", message))
        elif isinstance(error, str):
            message = error
    return ApiError(
        response.status_code,
        code,
        message,
        request_id=response.headers.get("x-request-id"),
        retry_after=parse_retry_after(response.headers.get("retry-after")),
    )


def parse_predictions(response: httpx.Response, names: Sequence[str]) -> list[Result]:
    """The results of a successful ``POST /predict`` of ``len(names)`` images, in upload order."""
    body = response.json()
    answers = body.get("results", [body])
    if len(answers) != len(names):
        raise ApiError(response.status_code, "bad_response", f"{len(answers)} results for {len(names)} images")
    sizes = parse_batch_sizes(response.headers.get("x-batch-size"))
    timing = parse_server_timing(response.headers.get("server-timing"))
    request_id = response.headers.get("x-request-id")
    return [
        Result(
            model=body["model"],
            label=answer["label"],
            probability=answer["probability"],
            predictions=tuple(Prediction(p["label"], p["index"], p["probability"]) for p in answer["predictions"]),
            batch_size=sizes[i] if i < len(sizes) else None,
            timing_ms=timing,
            request_id=request_id,
            source=name,
        )
        for i, (answer, name) in enumerate(zip(answers, names, strict=True))
    ]


def parse_models(response: httpx.Response) -> list[ModelInfo]:
    return [
        ModelInfo(m["name"], tuple(m["labels"]), m.get("device", ""), m.get("dtype", ""), bool(m.get("ready", True)))
        for m in response.json()["models"]
    ]


@dataclass(frozen=True)
class RetryPolicy:
    """Retry 429 and 503 answers up to ``retries`` times: after the server's ``Retry-After`` when it sends one,
    else after an exponential backoff with jitter (``backoff`` × 2^attempt, at most ``max_backoff``)."""

    retries: int = 5
    backoff: float = 0.5
    max_backoff: float = 30.0

    def delay(self, attempt: int, error: ApiError) -> float | None:
        """Seconds to wait before retry number ``attempt`` (0-based), or None to give up."""
        if error.status not in RETRY_STATUSES or attempt >= self.retries:
            return None
        if error.retry_after is not None:
            return error.retry_after
        return min(self.max_backoff, self.backoff * 2**attempt) * random.uniform(0.5, 1.0)


def chunked(count: int, size: int) -> list[range]:
    """``range(count)`` cut into consecutive pieces of at most ``size``."""
    return [range(start, min(start + size, count)) for start in range(0, count, max(1, size))]


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}
