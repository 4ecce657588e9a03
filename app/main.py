"""Build the FastAPI app: lifespan (load, warm up, drain), middleware, routes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.config import Settings
from app.errors import install_error_handlers
from app.middleware import BodyLimitMiddleware, RequestIdMiddleware
from app.routes import router
from app.service import ModelService


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Loading fails loudly here (a bad checkpoint stops start-up); warm-up runs in the
        # background so /healthz answers and /readyz says 503 until it is done.
        service = await asyncio.to_thread(ModelService, settings)
        app.state.service = service
        warm_up = asyncio.create_task(service.start(), name="warm-up")
        yield
        await warm_up
        await service.stop()

    app = FastAPI(title="AlexNet serving", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes)
    app.add_middleware(RequestIdMiddleware)
    app.include_router(router)
    return app
