"""HTTP routes. They validate, delegate to the model service and shape the answer."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from app.access import access_record
from app.auth import API_KEY
from app.deps import MetricsDep, ModelDep, RegistryDep
from app.pipeline import admitted, classify_images, require_ready, timing_headers
from app.schemas import (
    BatchingInfo,
    DegradedInfo,
    ErrorResponse,
    ModelDescription,
    ModelsResponse,
    MultiPredictResponse,
    PredictResponse,
    Status,
    classify,
)
from app.service import ModelService
from app.uploads import read_images

router = APIRouter()

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "No image, an empty file, or malformed multipart",
        401: "No API key, or a wrong one (only when ALEXNET_API_KEYS is set)",
        404: "No model of that name (`?model=`)",
        413: "Body over max_upload_bytes",
        415: "Not an image type we take",
        422: "Undecodable, truncated or too many pixels; or invalid query",
        408: "Body not received within read_timeout_s",
        429: "Overloaded (max_queue images taken on): retry after Retry-After",
        503: "Model not ready or draining: retry after Retry-After",
        504: "No answer within request_timeout_s of arrival",
    }.items()
}
_UNAUTHORIZED: dict[int | str, dict[str, Any]] = {401: _ERRORS[401]}
_IMAGE_BODY = {
    "requestBody": {
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1}
                    },
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
async def readyz(registry: RegistryDep) -> Status:
    """Readiness: every model is loaded and warmed and its batcher runs (503 before, and while draining)."""
    for service in registry:
        require_ready(service)
    return Status(status="ready")


@router.get("/models", response_model=ModelsResponse, tags=["models"], dependencies=[API_KEY], responses=_UNAUTHORIZED)
async def models(registry: RegistryDep) -> ModelsResponse:
    """The served models, default first: name, labels, input size, device, dtype, batching settings."""
    return ModelsResponse(models=[_describe(service) for service in registry])


@router.get("/metrics", tags=["metrics"], response_class=Response, dependencies=[API_KEY], responses=_UNAUTHORIZED)
async def metrics(metrics: MetricsDep) -> Response:
    """Prometheus metrics (text exposition format)."""
    return Response(metrics.render(), media_type=metrics.content_type)


@router.post(
    "/predict",
    response_model=PredictResponse | MultiPredictResponse,
    tags=["predict"],
    responses=_ERRORS,  # type: ignore[arg-type]
    openapi_extra=_IMAGE_BODY,
    dependencies=[API_KEY],
)
async def predict(
    request: Request,
    service: ModelDep,
    top_k: Annotated[int, Query(ge=1, description="How many classes to return (capped at the number of classes).")] = 5,
) -> Response:
    """Classify one image (multipart field `file`, or a raw `image/*` body) or several (repeated `file` fields).

    Example: `curl -F file=@cat.jpg localhost:8000/predict`; another model: `/predict?model=imagenet`.
    """
    started = time.monotonic()
    with admitted(service) as ticket:
        images = await read_images(request, max_files=service.settings.max_files)
        record = access_record(request.scope)
        record.images = len(images)
        answers = record.answers = await classify_images(service, images, ticket, request.receive)
    labels, k = service.info.labels, min(top_k, len(service.info.labels))
    results = [classify(answer.probabilities, labels, k) for answer in answers]
    if len(images) == 1:
        body: dict[str, Any] = {"model": service.info.name, **results[0].model_dump()}
    else:
        body = MultiPredictResponse(model=service.info.name, results=results).model_dump()
    return JSONResponse(body, headers=timing_headers(answers, time.monotonic() - started))


def _describe(service: ModelService) -> ModelDescription:
    info, settings = service.info, service.settings
    batching = BatchingInfo(
        max_batch_size=settings.max_batch_size,
        max_delay_ms=settings.max_delay_ms,
        max_queue=service.admission.limit,
        request_timeout_s=settings.request_timeout_s,
        buckets=service.engine.buckets,
    )
    return ModelDescription(
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
        degraded=DegradedInfo(reason=info.degraded.reason, message=info.degraded.message) if info.degraded else None,
    )
