"""Open Inference Protocol (KServe V2) REST routes, with Triton's binary tensor data and
classification extensions. Every image goes through the same batcher as ``/predict``.

Each model takes exactly one of three inputs per request and answers one output:

- ``images``  BYTES ``[N]``: encoded image files (JPEG, PNG, ...), preprocessed like ``/predict``;
- ``tensor``  FP32 ``[N, 3, S, S]``: RGB already resized, cropped, scaled to 0–1 and normalised
  with the model's mean and std (torchvision's ``ToTensor`` + ``Normalize``);
- ``pixels``  UINT8 ``[N, S, S, 3]``: RGB pixels already resized and cropped, 0–255, HWC;
- ``probabilities`` FP32 ``[N, classes]`` (softmax), or with ``{"classification": k}`` BYTES
  ``[N, k]`` strings ``"<probability>:<index>:<label>"``.
"""

from __future__ import annotations

import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Header, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from app.access import access_record
from app.arrays import ArrayError
from app.deps import RegistryDep
from app.errors import ApiError
from app.pipeline import classify_images, classify_items, require_ready, timing_headers
from app.registry import ModelRegistry, UnknownModelError
from app.schemas import V2ModelMetadata, V2ServerMetadata, V2TensorMetadata
from app.service import ModelService, Timed
from app.v2_wire import (
    BYTES,
    InferRequest,
    InputTensor,
    OutputTensor,
    classification_strings,
    encode_response,
    invalid,
    parse_request,
)

router = APIRouter(prefix="/v2", tags=["open inference protocol (v2)"])

EXTENSIONS = ["binary_tensor_data", "classification"]
VERSION = "1"  # every model is served in one version
OUTPUT = "probabilities"
_BODY_TYPES = {"", "application/json", "application/octet-stream"}
_INFER_BODY = {
    "requestBody": {
        "content": {
            "application/json": {"schema": {"type": "object", "description": "Inference request JSON object"}},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "JSON header (Inference-Header-Content-Length bytes), then binary tensor data",
            },
        },
        "required": True,
    }
}


@router.get("/health/live")
async def live() -> dict[str, bool]:
    """Server live: 200 while the process answers HTTP."""
    return {"live": True}


@router.get("/health/ready")
async def ready(registry: RegistryDep) -> JSONResponse:
    """Server ready: 200 when every model is ready, else 400 (the protocol's 4xx for false)."""
    return JSONResponse({"ready": registry.ready}, status_code=200 if registry.ready else 400)


@router.get("", response_model=V2ServerMetadata)
async def server_metadata(request: Request) -> V2ServerMetadata:
    """Server metadata: name, version and the extensions this server implements."""
    return V2ServerMetadata(name="alexnet-serving", version=request.app.version, extensions=EXTENSIONS)


@router.get("/models/{model_name}", response_model=V2ModelMetadata)
@router.get("/models/{model_name}/versions/{model_version}", response_model=V2ModelMetadata)
async def model_metadata(
    request: Request, registry: RegistryDep, model_name: str, model_version: str | None = None
) -> V2ModelMetadata:
    """Model metadata; a request sends exactly one of the inputs; -1 is the batch dimension."""
    info = _model(request, registry, model_name, model_version).info
    size = info.input_size
    inputs = [
        V2TensorMetadata(name="images", datatype=BYTES, shape=[-1]),
        V2TensorMetadata(name="tensor", datatype="FP32", shape=[-1, 3, size, size]),
        V2TensorMetadata(name="pixels", datatype="UINT8", shape=[-1, size, size, 3]),
    ]
    outputs = [V2TensorMetadata(name=OUTPUT, datatype="FP32", shape=[-1, len(info.labels)])]
    platform = "pytorch_compiled" if info.compiled else "pytorch_eager"
    return V2ModelMetadata(name=info.name, versions=[VERSION], platform=platform, inputs=inputs, outputs=outputs)


@router.get("/models/{model_name}/ready")
@router.get("/models/{model_name}/versions/{model_version}/ready")
async def model_ready(
    request: Request, registry: RegistryDep, model_name: str, model_version: str | None = None
) -> JSONResponse:
    """Model ready: 200 when the model takes work, else 400."""
    service = _model(request, registry, model_name, model_version)
    return JSONResponse({"name": service.info.name, "ready": service.ready}, status_code=200 if service.ready else 400)


@router.post("/models/{model_name}/infer", openapi_extra=_INFER_BODY)
@router.post("/models/{model_name}/versions/{model_version}/infer", openapi_extra=_INFER_BODY)
async def infer(
    request: Request,
    registry: RegistryDep,
    model_name: str,
    model_version: str | None = None,
    header_length: Annotated[str | None, Header(alias="Inference-Header-Content-Length")] = None,
) -> Response:
    """Inference: JSON, or JSON followed by binary tensor data (binary tensor data extension)."""
    started = time.monotonic()
    service = _model(request, registry, model_name, model_version)
    require_ready(service)
    _check_body_headers(request)
    parsed = await run_in_threadpool(parse_request, await request.body(), header_length)
    tensor = _the_input(parsed, service)
    _check_outputs(parsed)
    record = access_record(request.scope)
    record.images = tensor.shape[0]
    answers = record.answers = await _classify(service, tensor)
    outputs = _outputs(parsed, service, np.asarray([a.probabilities for a in answers], dtype=np.float32))
    body, headers = encode_response(service.info.name, VERSION, parsed.id, outputs)
    return Response(body, headers=headers | timing_headers(answers, time.monotonic() - started))


def _model(request: Request, registry: ModelRegistry, name: str, version: str | None) -> ModelService:
    try:
        service = registry.get(name)
    except UnknownModelError as exc:
        raise ApiError(404, "model_not_found", str(exc)) from exc
    if version not in (None, VERSION):
        raise ApiError(404, "model_not_found", f"model {name!r} has no version {version!r}; it has version {VERSION}")
    access_record(request.scope).model = service.info.name
    return service


def _check_body_headers(request: Request) -> None:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in _BODY_TYPES:
        raise ApiError(415, "unsupported_media_type", f"{content_type} is not accepted; send application/json")
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding != "identity":
        raise ApiError(415, "unsupported_media_type", f"Content-Encoding {encoding} is not supported; send identity")


def _the_input(request: InferRequest, service: ModelService) -> InputTensor:
    """The request's one input, checked against the model's shapes and the per-request image limit."""
    if len(request.inputs) != 1:
        raise invalid(f"send exactly one input (images, tensor or pixels), not {len(request.inputs)}")
    (tensor,) = request.inputs
    size = service.info.input_size
    expected = {
        "images": (BYTES, (-1,)),
        "tensor": ("FP32", (-1, 3, size, size)),
        "pixels": ("UINT8", (-1, size, size, 3)),
    }
    if tensor.name not in expected:
        raise invalid(f"unknown input '{tensor.name}'; this model takes images, tensor or pixels")
    datatype, shape = expected[tensor.name]
    if tensor.datatype != datatype:
        raise invalid(f"input '{tensor.name}' is {datatype}, not {tensor.datatype}")
    if len(tensor.shape) != len(shape) or any(w not in (-1, g) for w, g in zip(shape, tensor.shape, strict=True)):
        raise invalid(f"input '{tensor.name}' has shape {list(shape)} (-1: any), not {list(tensor.shape)}")
    count, most = tensor.shape[0], service.settings.max_files
    if not 1 <= count <= most:
        raise invalid(f"input '{tensor.name}' holds {count} images; send 1 to {most}")
    return tensor


async def _classify(service: ModelService, tensor: InputTensor) -> list[Timed]:
    if isinstance(tensor.data, list):
        return await classify_images(service, tensor.data, what="image")
    count, layout = tensor.shape[0], "pixels" if tensor.name == "pixels" else "tensor"
    try:
        items, seconds = await service.array_items(tensor.data, layout, count)
    except ArrayError as exc:
        raise ApiError(422, "invalid_tensor", f"input '{tensor.name}': {exc}") from exc
    return await classify_items(service, items, [seconds / count] * count)


def _check_outputs(request: InferRequest) -> None:
    for wanted in request.outputs or []:
        if wanted.name != OUTPUT:
            raise invalid(f"unknown output '{wanted.name}'; this model answers '{OUTPUT}'")


def _outputs(request: InferRequest, service: ModelService, probabilities: np.ndarray) -> list[OutputTensor]:
    """Each requested output (all of them when none is named): the tensor, or its top-k strings."""
    if request.outputs is None:
        return [OutputTensor(OUTPUT, "FP32", probabilities, request.binary_output)]
    outputs = []
    for wanted in request.outputs:
        if wanted.classification:
            labels = service.info.labels
            strings = classification_strings(probabilities, labels, min(wanted.classification, len(labels)))
            outputs.append(OutputTensor(OUTPUT, BYTES, strings, wanted.binary))
        else:
            outputs.append(OutputTensor(OUTPUT, "FP32", probabilities, wanted.binary))
    return outputs
