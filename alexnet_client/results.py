"""What the server answers, as typed values."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Prediction:
    """One class of an image's top-k."""

    label: str
    index: int
    probability: float


@dataclass(frozen=True)
class Result:
    """One image's classification and how the server ran it."""

    model: str
    label: str
    probability: float
    predictions: tuple[Prediction, ...]
    batch_size: int | None = None  # the model batch this image ran in (``X-Batch-Size``)
    timing_ms: dict[str, float] = field(default_factory=dict)  # its request's ``Server-Timing``
    request_id: str | None = None
    source: str | None = None  # the file name the image was sent as


@dataclass(frozen=True)
class ModelInfo:
    """A served model (from ``GET /models``)."""

    name: str
    labels: tuple[str, ...]
    device: str
    dtype: str
    ready: bool
