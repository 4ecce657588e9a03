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
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Header, Path, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from starlette.types import Receive

from app.access import access_record
from app.admission import Ticket
from app.auth import API_KEY
from app.deps import RegistryDep
from app.errors import ApiError
from app.pipeline import admitted, classify_arrays, classify_images, timing_headers
from app.registry import UnknownModelError
from app.schemas import (
    V2Error,
    V2InferResponse,
    V2Live,
    V2ModelMetadata,
    V2ModelReady,
    V2Ready,
    V2ServerMetadata,
    V2TensorMetadata,
)
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
_INPUT_TENSOR = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": {
        "name": {"type": "string", "enum": ["images", "tensor", "pixels"]},
        "datatype": {"type": "string", "enum": ["BYTES", "STRING", "FP32", "UINT8"]},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}, "maxItems": 64},
        "data": {"type": "array", "description": "Row-major, flat or nested; BYTES elements as base64 strings."},
        "parameters": {
            "type": "object",
            "properties": {"binary_data_size": {"type": "integer", "minimum": 0}},
            "description": "`binary_data_size` instead of `data`: this input's bytes follow the JSON.",
        },
    },
}
_REQUESTED_OUTPUT = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "enum": [OUTPUT]},
        "parameters": {
            "type": "object",
            "properties": {"classification": {"type": "integer", "minimum": 0}, "binary_data": {"type": "boolean"}},
        },
    },
}
_INFER_REQUEST = {
    "type": "object",
    "required": ["inputs"],
    "description": "Inference request: exactly one of the model's inputs (see the model metadata).",
    "properties": {
        "id": {"type": "string"},
        "inputs": {"type": "array", "items": _INPUT_TENSOR, "minItems": 1, "maxItems": 1},
        "outputs": {"type": "array", "items": _REQUESTED_OUTPUT},
        "parameters": {"type": "object", "properties": {"binary_data_output": {"type": "boolean"}}},
    },
}
_INFER_BODY = {
    "requestBody": {
        "content": {
            "application/json": {"schema": _INFER_REQUEST},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "JSON header (Inference-Header-Content-Length bytes), then binary tensor data",
            },
        },
        "required": True,
    }
}
_STATUS_TEXT = {
    400: "Malformed request: JSON, shapes, datatypes, sizes, an empty image, unknown input or output",
    401: "No API key, or a wrong one (only when ALEXNET_API_KEYS is set)",
    404: "No model of that name, or no such version",
    408: "Body not received within read_timeout_s",
    413: "Body over max_upload_bytes",
    415: "Content type or encoding not taken, or an image format we do not take",
    422: "An image that does not decode or has too many pixels, or a non-finite tensor",
    429: "Overloaded (max_queue images taken on): retry after Retry-After",
    503: "Model not ready or draining: retry after Retry-After",
    504: "No answer within request_timeout_s of arrival",
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses: the protocol's error body for each status, and for any other (``default``)."""
    listed: dict[int | str, dict[str, Any]] = {
        status: {"model": V2Error, "description": _STATUS_TEXT[status]} for status in statuses
    }
    listed["default"] = {"model": V2Error, "description": "Any other error, in the protocol's error body"}
    return listed


_METADATA_ERRORS = _errors(401, 404)
_INFER_RESPONSES = _errors(400, 401, 404, 408, 413, 415, 422, 429, 503, 504) | {
    200: {
        "model": V2InferResponse,
        "description": "Probabilities or top-k classes: JSON, or JSON then binary tensor data "
        "(application/octet-stream, the JSON's size in Inference-Header-Content-Length)",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}
HeaderLength = Annotated[
    str | None,
    Header(
        alias="Inference-Header-Content-Length",
        description="Size in bytes of the JSON header that binary tensor data follows.",
        json_schema_extra={"pattern": "^[0-9]{1,19}$"},  # checked by the parser (400), not by FastAPI (422)
    ),
]


def _model(request: Request, registry: RegistryDep, model_name: str, version: str | None) -> ModelService:
    try:
        service = registry.get(model_name)
    except UnknownModelError as exc:
        raise ApiError(404, "model_not_found", str(exc)) from exc
    if version not in (None, VERSION):
        raise ApiError(
            404, "model_not_found", f"model {model_name!r} has no version {version!r}; it has version {VERSION}"
        )
    access_record(request.scope).model = service.info.name
    return service


def _latest(request: Request, registry: RegistryDep, model_name: str) -> ModelService:
    """The model named in the path (``/v2/models/{model_name}/...``)."""
    return _model(request, registry, model_name, None)


def _versioned(
    request: Request,
    registry: RegistryDep,
    model_name: str,
    model_version: Annotated[str, Path(description="Every model has version 1 only.", examples=[VERSION])],
) -> ModelService:
    """The model and version named in the path (``.../versions/{model_version}/...``)."""
    return _model(request, registry, model_name, model_version)


LatestModel = Annotated[ModelService, Depends(_latest)]
VersionedModel = Annotated[ModelService, Depends(_versioned)]


@router.get("/health/live", response_model=V2Live)
async def live() -> V2Live:
    """Server live: 200 while the process answers HTTP."""
    return V2Live(live=True)


@router.get("/health/ready", response_model=V2Ready, responses={400: {"model": V2Ready, "description": "Not ready"}})
async def ready(registry: RegistryDep) -> JSONResponse:
    """Server ready: 200 when every model is ready, else 400 (the protocol's 4xx for false)."""
    return JSONResponse({"ready": registry.ready}, status_code=200 if registry.ready else 400)


@router.get("", response_model=V2ServerMetadata, dependencies=[API_KEY], responses=_errors(401))
async def server_metadata(request: Request) -> V2ServerMetadata:
    """Server metadata: name, version and the extensions this server implements."""
    return V2ServerMetadata(name="alexnet-serving", version=request.app.version, extensions=EXTENSIONS)


@router.get("/models/{model_name}", response_model=V2ModelMetadata, dependencies=[API_KEY], responses=_METADATA_ERRORS)
async def model_metadata(service: LatestModel) -> V2ModelMetadata:
    """Model metadata; a request sends exactly one of the inputs; -1 is the batch dimension."""
    return _metadata(service)


@router.get(
    "/models/{model_name}/versions/{model_version}",
    response_model=V2ModelMetadata,
    dependencies=[API_KEY],
    responses=_METADATA_ERRORS,
)
async def model_version_metadata(service: VersionedModel) -> V2ModelMetadata:
    """Model metadata of one version (this server has version 1 only)."""
    return _metadata(service)


_READY_RESPONSES = {400: {"model": V2ModelReady, "description": "Not ready"}} | _errors(404)


@router.get("/models/{model_name}/ready", response_model=V2ModelReady, responses=_READY_RESPONSES)
async def model_ready(service: LatestModel) -> JSONResponse:
    """Model ready: 200 when the model takes work, else 400 (a health probe: open without an API key)."""
    return _readiness(service)


@router.get(
    "/models/{model_name}/versions/{model_version}/ready", response_model=V2ModelReady, responses=_READY_RESPONSES
)
async def model_version_ready(service: VersionedModel) -> JSONResponse:
    """Model ready, for one version (this server has version 1 only)."""
    return _readiness(service)


@router.post(
    "/models/{model_name}/infer",
    openapi_extra=_INFER_BODY,
    dependencies=[API_KEY],
    responses=_INFER_RESPONSES,  # type: ignore[arg-type]
    response_class=Response,
)
async def infer(request: Request, service: LatestModel, header_length: HeaderLength = None) -> Response:
    """Inference: JSON, or JSON followed by binary tensor data (binary tensor data extension)."""
    return await _infer(request, service, header_length)


@router.post(
    "/models/{model_name}/versions/{model_version}/infer",
    openapi_extra=_INFER_BODY,
    dependencies=[API_KEY],
    responses=_INFER_RESPONSES,  # type: ignore[arg-type]
    response_class=Response,
)
async def infer_version(request: Request, service: VersionedModel, header_length: HeaderLength = None) -> Response:
    """Inference on one version (this server has version 1 only)."""
    return await _infer(request, service, header_length)


def _metadata(service: ModelService) -> V2ModelMetadata:
    info = service.info
    size = info.input_size
    inputs = [
        V2TensorMetadata(name="images", datatype=BYTES, shape=[-1]),
        V2TensorMetadata(name="tensor", datatype="FP32", shape=[-1, 3, size, size]),
        V2TensorMetadata(name="pixels", datatype="UINT8", shape=[-1, size, size, 3]),
    ]
    outputs = [V2TensorMetadata(name=OUTPUT, datatype="FP32", shape=[-1, len(info.labels)])]
    platform = "pytorch_compiled" if info.compiled else "pytorch_eager"
    return V2ModelMetadata(name=info.name, versions=[VERSION], platform=platform, inputs=inputs, outputs=outputs)


def _readiness(service: ModelService) -> JSONResponse:
    return JSONResponse({"name": service.info.name, "ready": service.ready}, status_code=200 if service.ready else 400)


async def _infer(request: Request, service: ModelService, header_length: str | None) -> Response:
    started = time.monotonic()
    with admitted(service) as ticket:
        _check_body_headers(request)
        parsed = await run_in_threadpool(parse_request, await request.body(), header_length)
        tensor = _the_input(parsed, service)
        _check_outputs(parsed)
        record = access_record(request.scope)
        record.images = tensor.shape[0]
        answers = record.answers = await _classify(service, tensor, ticket, request.receive)
    outputs = _outputs(parsed, service, np.asarray([a.probabilities for a in answers], dtype=np.float32))
    body, headers = encode_response(service.info.name, VERSION, parsed.id, outputs)
    return Response(body, headers=headers | timing_headers(answers, time.monotonic() - started))


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
    if isinstance(tensor.data, list) and not all(tensor.data):  # as /predict answers an empty file
        empty = tensor.data.index(b"")
        raise ApiError(400, "no_image", f"input '{tensor.name}' element {empty} is empty")
    return tensor


async def _classify(service: ModelService, tensor: InputTensor, ticket: Ticket, receive: Receive) -> list[Timed]:
    if isinstance(tensor.data, list):
        return await classify_images(service, tensor.data, ticket, receive, what="image")
    layout = "pixels" if tensor.name == "pixels" else "tensor"
    return await classify_arrays(service, tensor.data, layout, tensor.shape[0], ticket, receive, tensor.name)


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
