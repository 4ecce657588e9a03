"""Response bodies, as documented in the OpenAPI schema."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Prediction(BaseModel):
    label: str = Field(examples=["cat"])
    index: int = Field(examples=[0])
    probability: float = Field(examples=[0.97])


class Classification(BaseModel):
    label: str = Field(description="Top-1 label.", examples=["cat"])
    probability: float = Field(description="Top-1 probability.", examples=[0.97])
    predictions: list[Prediction] = Field(description="The top_k classes, most probable first.")


class PredictResponse(Classification):
    model: str = Field(examples=["alexnet-catdog"])


class MultiPredictResponse(BaseModel):
    model: str = Field(examples=["alexnet-catdog"])
    results: list[Classification] = Field(description="One result per uploaded file, in upload order.")


class ErrorDetail(BaseModel):
    code: str = Field(examples=["invalid_image"])
    message: str = Field(examples=["cannot decode image: image file is truncated"])


class ErrorResponse(BaseModel):
    error: ErrorDetail


class BatchingInfo(BaseModel):
    max_batch_size: int
    max_delay_ms: float
    max_queue: int
    request_timeout_s: float
    buckets: list[int]


class DegradedInfo(BaseModel):
    """Why the model runs slower than it was asked to (e.g. torch.compile failed) and what it costs."""

    reason: str = Field(examples=["disk_full"], description="disk_full, not_writable, no_compiler or compile_failed")
    message: str


class ModelDescription(BaseModel):
    name: str
    arch: str
    labels: list[str]
    num_classes: int
    input_size: int
    resize_size: int
    device: str
    dtype: str
    compiled: bool
    ready: bool
    batching: BatchingInfo
    degraded: DegradedInfo | None = None


class ModelsResponse(BaseModel):
    models: list[ModelDescription]


class Status(BaseModel):
    status: str = Field(examples=["ok"])


def classify(probabilities: list[float], labels: tuple[str, ...], top_k: int) -> Classification:
    """The ``top_k`` most probable classes of one image, most probable first."""
    order = sorted(range(len(probabilities)), key=probabilities.__getitem__, reverse=True)[:top_k]
    predictions = [Prediction(label=labels[i], index=i, probability=probabilities[i]) for i in order]
    return Classification(label=predictions[0].label, probability=predictions[0].probability, predictions=predictions)


class V2ServerMetadata(BaseModel):
    """Open Inference Protocol server metadata."""

    name: str = Field(examples=["alexnet-serving"])
    version: str = Field(examples=["0.1.0"])
    extensions: list[str] = Field(examples=[["binary_tensor_data", "classification"]])


class V2TensorMetadata(BaseModel):
    name: str = Field(examples=["images"])
    datatype: str = Field(examples=["BYTES"])
    shape: list[int] = Field(description="-1 for a variable dimension (the batch).", examples=[[-1]])


class V2ModelMetadata(BaseModel):
    """Open Inference Protocol model metadata; a request sends exactly one of the inputs."""

    name: str = Field(examples=["catdog"])
    versions: list[str] = Field(examples=[["1"]])
    platform: str = Field(examples=["pytorch_eager"])
    inputs: list[V2TensorMetadata]
    outputs: list[V2TensorMetadata]


class V2Error(BaseModel):
    """Open Inference Protocol error: the message alone (the status says the kind)."""

    error: str = Field(examples=["input 'images' is BYTES, not FP32"])


class V2Live(BaseModel):
    live: bool


class V2Ready(BaseModel):
    ready: bool


class V2ModelReady(BaseModel):
    name: str = Field(examples=["catdog"])
    ready: bool


class V2OutputTensor(BaseModel):
    name: str = Field(examples=["probabilities"])
    datatype: str = Field(examples=["FP32"])
    shape: list[int] = Field(examples=[[1, 2]])
    data: list[float | str] | None = Field(None, description="JSON data, flat row-major; absent when binary.")
    parameters: dict[str, int] | None = Field(None, description="`binary_data_size` when the data is binary.")


class V2InferResponse(BaseModel):
    """Open Inference Protocol inference response (the JSON part, when binary data follows)."""

    model_name: str = Field(examples=["catdog"])
    model_version: str = Field(examples=["1"])
    id: str | None = Field(None, description="The request's id, when it had one.")
    outputs: list[V2OutputTensor]
