"""FastAPI dependencies: how routes reach objects built at start-up."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request

from app.access import access_record
from app.errors import ApiError
from app.metrics import Metrics
from app.registry import ModelRegistry, UnknownModelError
from app.service import ModelService


async def get_registry(request: Request) -> ModelRegistry:
    return request.app.state.registry  # type: ignore[no-any-return]


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics  # type: ignore[no-any-return]


RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


async def get_model(
    request: Request,
    registry: RegistryDep,
    model: Annotated[str | None, Query(description="Which served model (default: the first configured).")] = None,
) -> ModelService:
    """The model named by ``?model=`` (404 ``model_not_found`` for an unknown name)."""
    try:
        service = registry.get(model)
    except UnknownModelError as exc:
        raise ApiError(404, "model_not_found", str(exc)) from exc
    access_record(request.scope).model = service.info.name
    return service


ModelDep = Annotated[ModelService, Depends(get_model)]
