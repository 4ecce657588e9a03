"""Build the FastAPI app: lifespan (load, warm up, drain), middleware, routes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from app import routes, ui, v2_routes
from app.access import AccessMiddleware
from app.auth import ApiKeys, JsonCorsMiddleware, cors_options
from app.config import Settings
from app.drain import Drain
from app.errors import install_error_handlers
from app.metrics import Metrics
from app.middleware import (
    BodyLimitMiddleware,
    CloseWhenDrainingMiddleware,
    EarlyOverloadMiddleware,
    RequestIdMiddleware,
)
from app.registry import ModelRegistry
from app.startup import Startup, StartupFailure

logger = logging.getLogger(__name__)


async def _warm_up(registry: ModelRegistry, startup: Startup, metrics: Metrics, url: str) -> None:
    try:
        await registry.start()
    except StartupFailure as failure:
        startup.fail(failure)
        return
    logger.info(
        "ready in %.1f s: %s", startup.elapsed(), url, extra={"fields": {"startup_s": round(startup.elapsed(), 1)}}
    )
    metrics.publish_live()
    startup.ready()


def create_app(settings: Settings | None = None, startup: Startup | None = None) -> FastAPI:
    """The app for ``settings``; ``startup`` (default: a new one) is told when it can never become ready."""
    settings = settings or Settings()
    startup = startup or Startup()
    metrics = Metrics(settings.max_batch_size)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # A checkpoint that does not load (or a device that is not there) stops start-up here;
        # warm-up runs in the background so /healthz answers and /readyz says 503 until every
        # model is done. Either failure means the server can never become ready: `startup` logs
        # it as one line and stops the server (alexnet-serve then exits with EXIT_NEVER_READY).
        try:
            registry = await asyncio.to_thread(ModelRegistry.load, settings, metrics.observe_batch)
        except Exception as exc:
            logger.debug("loading failed", exc_info=True)
            raise startup.fail(StartupFailure(str(exc))) from exc
        app.state.registry = registry
        drain.attach(registry)
        metrics.track(registry)
        url = f"http://{host}:{settings.port}"
        warm_up = asyncio.create_task(_warm_up(registry, startup, metrics, url), name="warm-up")
        if startup.warm_before_listening:
            await warm_up
            if startup.failure is not None:
                raise startup.failure
        yield
        await warm_up
        await registry.stop()

    # /docs and /redoc with Swagger UI's and ReDoc's files served by the app itself: no CDN.
    # No trailing-slash redirects: they would answer before the key check, with a Location from Host.
    app = FastAPIOffline(title="AlexNet serving", version="0.1.0", lifespan=lifespan, redirect_slashes=False)
    app.state.metrics = metrics
    app.state.api_keys = ApiKeys(settings.api_key_list)
    app.state.drain = drain = Drain()  # the server starts it on SIGTERM (app.server)
    app.state.startup = startup
    install_error_handlers(app)
    app.add_middleware(EarlyOverloadMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes, read_timeout_s=settings.read_timeout_s)
    app.add_middleware(CloseWhenDrainingMiddleware, drain=drain)
    app.add_middleware(RequestIdMiddleware)
    if cors := cors_options(settings):
        app.add_middleware(JsonCorsMiddleware, **cors)
    known_routes = [*routes.router.routes, *v2_routes.router.routes, *ui.router.routes]
    app.add_middleware(AccessMiddleware, metrics=metrics, routes=known_routes)
    app.include_router(routes.router)
    app.include_router(v2_routes.router)
    app.include_router(ui.router)
    return app
