"""Build the FastAPI app: lifespan (load, warm up, drain), middleware, routes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import routes, v2_routes
from app.access import AccessMiddleware
from app.config import Settings
from app.errors import install_error_handlers
from app.metrics import Metrics
from app.middleware import BodyLimitMiddleware, RequestIdMiddleware
from app.registry import ModelRegistry


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics(settings.max_batch_size)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Loading fails loudly here (a bad checkpoint stops start-up); warm-up runs in the
        # background so /healthz answers and /readyz says 503 until every model is done.
        registry = await asyncio.to_thread(ModelRegistry.load, settings, metrics.observe_batch)
        app.state.registry = registry
        metrics.track(registry)
        warm_up = asyncio.create_task(registry.start(), name="warm-up")
        yield
        await warm_up
        await registry.stop()

    app = FastAPI(title="AlexNet serving", version="0.1.0", lifespan=lifespan)
    app.state.metrics = metrics
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes)
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(AccessMiddleware, metrics=metrics, routes=[*routes.router.routes, *v2_routes.router.routes])
    app.include_router(routes.router)
    app.include_router(v2_routes.router)
    return app
