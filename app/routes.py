"""HTTP routes. They validate, delegate to the model service and shape the answer."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from app.batcher import NotAcceptingError, QueueFullError, QueueTimeoutError
from app.deps import ServiceDep
from app.errors import ApiError
from app.schemas import (
    BatchingInfo,
    ErrorResponse,
    ModelDescription,
    ModelsResponse,
    MultiPredictResponse,
    PredictResponse,
    Status,
    classify,
)
from app.service import ModelService, Timed
from app.uploads import read_images
from model.presets import ImageError, ImageTooLargeError, UnsupportedFormatError

router = APIRouter()

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "No image, or malformed multipart",
        413: "Body over max_upload_bytes",
        415: "Not an image type we take",
        422: "Undecodable, truncated or too many pixels; or invalid query",
        429: "Queue full: retry after Retry-After",
        503: "Model not ready or draining: retry after Retry-After",
        504: "Waited longer than request_timeout_s",
    }.items()
}
_IMAGE_BODY = {
    "requestBody": {
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                    "required": ["file"],
                }
            },
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
        },
        "required": True,
    }
}


@router.get("/healthz", response_model=Status, tags=["health"])
async def healthz() -> Status:
    """Liveness: the process serves HTTP."""
    return Status(status="ok")


@router.get("/readyz", response_model=Status, tags=["health"], responses={503: {"model": ErrorResponse}})
async def readyz(service: ServiceDep) -> Status:
    """Readiness: the model is loaded and warmed and the batcher runs (503 before, and while draining)."""
    _require_ready(service)
    return Status(status="ready")


@router.get("/models", response_model=ModelsResponse, tags=["models"])
async def models(service: ServiceDep) -> ModelsResponse:
    """The loaded model: name, labels, input size, device, dtype, batching settings."""
    info, settings = service.info, service.settings
    batching = BatchingInfo(
        max_batch_size=settings.max_batch_size,
        max_delay_ms=settings.max_delay_ms,
        max_queue=settings.max_queue,
        request_timeout_s=settings.request_timeout_s,
        buckets=service.engine.buckets,
    )
    description = ModelDescription(
        name=info.name,
        arch=info.arch,
        labels=list(info.labels),
        num_classes=len(info.labels),
        input_size=info.input_size,
        resize_size=info.resize_size,
        device=info.device,
        dtype=info.dtype,
        compiled=info.compiled,
        ready=service.ready,
        batching=batching,
    )
    return ModelsResponse(models=[description])


@router.post(
    "/predict",
    response_model=PredictResponse | MultiPredictResponse,
    tags=["predict"],
    responses=_ERRORS,  # type: ignore[arg-type]
    openapi_extra=_IMAGE_BODY,
)
async def predict(
    request: Request,
    service: ServiceDep,
    top_k: Annotated[int, Query(ge=1, description="How many classes to return (capped at the number of classes).")] = 5,
) -> Response:
    """Classify one image (multipart field `file`, or a raw `image/*` body) or several (repeated `file` fields).

    Example: `curl -F file=@cat.jpg localhost:8000/predict`.
    """
    started = time.monotonic()
    _require_ready(service)
    images = await read_images(request, max_files=service.settings.max_files)
    tensors = await asyncio.gather(*(_preprocess(service, data, i, len(images)) for i, data in enumerate(images)))
    answers: list[Timed] = await asyncio.gather(*(_predict(service, tensor, seconds) for tensor, seconds in tensors))
    labels, k = service.info.labels, min(top_k, len(service.info.labels))
    results = [classify(answer.probabilities, labels, k) for answer in answers]
    if len(images) == 1:
        body: dict[str, Any] = {"model": service.info.name, **results[0].model_dump()}
    else:
        body = MultiPredictResponse(model=service.info.name, results=results).model_dump()
    return JSONResponse(body, headers=_timing_headers(answers, time.monotonic() - started))


def _require_ready(service: ModelService) -> None:
    if service.ready:
        return
    reason = service.startup_error or ("draining" if service.draining else "the model is still loading and warming up")
    raise ApiError(503, "not_ready", f"not ready: {reason}", {"Retry-After": "5"})


async def _preprocess(service: ModelService, data: bytes, index: int, count: int) -> tuple[Any, float]:
    where = f"file {index + 1} of {count}: " if count > 1 else ""
    try:
        return await service.preprocess(data)
    except ImageTooLargeError as exc:
        raise ApiError(422, "image_too_large", where + str(exc)) from exc
    except UnsupportedFormatError as exc:
        raise ApiError(415, "unsupported_image_format", where + str(exc)) from exc
    except ImageError as exc:
        raise ApiError(422, "invalid_image", where + str(exc)) from exc


async def _predict(service: ModelService, tensor: Any, preprocess_seconds: float) -> Timed:
    try:
        return await service.predict(tensor, preprocess_seconds)
    except QueueFullError as exc:
        raise ApiError(429, "overloaded", f"{exc}; retry shortly", {"Retry-After": "1"}) from exc
    except NotAcceptingError as exc:
        raise ApiError(503, "not_ready", str(exc), {"Retry-After": "5"}) from exc
    except QueueTimeoutError as exc:
        raise ApiError(504, "timeout", str(exc)) from exc


def _timing_headers(answers: list[Timed], total: float) -> dict[str, str]:
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
