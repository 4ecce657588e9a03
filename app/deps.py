"""FastAPI dependencies: how routes reach objects built at start-up."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.service import ModelService


def get_service(request: Request) -> ModelService:
    return request.app.state.service  # type: ignore[no-any-return]


ServiceDep = Annotated[ModelService, Depends(get_service)]
