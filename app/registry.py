"""The served models: one ``ModelService`` (engine, batcher, warm-up) per configured model."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

from app.config import Settings
from app.service import ModelService


class UnknownModelError(LookupError):
    """No served model has that name; the message lists the ones that exist."""


class ModelRegistry:
    """Models by name, in configuration order; the first is the default."""

    def __init__(self, services: list[ModelService]) -> None:
        self._services = {service.info.name: service for service in services}
        if len(self._services) != len(services):
            raise ValueError("two models are served under the same name")

    @classmethod
    def load(cls, settings: Settings, on_batch: Callable[[str, int, float], None] | None = None) -> ModelRegistry:
        """Load every configured checkpoint (blocking); any failure stops start-up."""
        services = [
            ModelService(settings.model_copy(update={"checkpoint": path}), name=name, on_batch=on_batch)
            for name, path in settings.served_models.items()
        ]
        return cls(services)

    def __iter__(self) -> Iterator[ModelService]:
        return iter(self._services.values())

    @property
    def default(self) -> ModelService:
        return next(iter(self._services.values()))

    def get(self, name: str | None = None) -> ModelService:
        """The model called ``name`` (the default one for None); raises ``UnknownModelError``."""
        if name is None:
            return self.default
        try:
            return self._services[name]
        except KeyError:
            raise UnknownModelError(f"no model named {name!r}; served: {', '.join(self._services)}") from None

    @property
    def ready(self) -> bool:
        """Every model is warmed up and taking work."""
        return all(service.ready for service in self)

    async def start(self) -> None:
        """Warm every model up (concurrently) and start its batcher."""
        await asyncio.gather(*(service.start() for service in self))

    def begin_draining(self) -> None:
        """Every model refuses new work from now on (``ready`` turns false)."""
        for service in self:
            service.draining = True

    @property
    def admitted(self) -> int:
        """Images admitted to every model and not yet answered."""
        return sum(service.admission.admitted for service in self)

    async def idle(self) -> None:
        """Return once no model has an admitted request left unanswered."""
        await asyncio.gather(*(service.admission.idle() for service in self))

    async def stop(self) -> None:
        """Drain every model."""
        await asyncio.gather(*(service.stop() for service in self))
