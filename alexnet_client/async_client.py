"""``AsyncClient``: the asyncio twin of ``Client``, same methods, awaited."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence
from types import TracebackType

import httpx

from alexnet_client import protocol
from alexnet_client.client import DEFAULT_URL, Outcome
from alexnet_client.errors import AlexNetError, ApiError, ConnectionFailed
from alexnet_client.protocol import ImageInput, RetryPolicy, Upload
from alexnet_client.results import ModelInfo, Result


class AsyncClient:
    """``async with AsyncClient(url, api_key=...) as client: await client.predict(path)``."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=protocol.auth_headers(api_key), timeout=timeout, transport=transport
        )

    async def predict(self, image: ImageInput, *, top_k: int | None = None, model: str | None = None) -> Result:
        """Classify one image: a path, encoded bytes, a PIL image or a binary file."""
        upload = await asyncio.to_thread(protocol.to_upload, image)
        return (await self._send([upload], top_k=top_k, model=model))[0]

    async def predict_batch(
        self, images: Sequence[ImageInput], *, top_k: int | None = None, model: str | None = None
    ) -> list[Result]:
        """Several images in one request; one bad image fails the whole request."""
        uploads = [await asyncio.to_thread(protocol.to_upload, image, f"image-{i}") for i, image in enumerate(images)]
        return await self._send(uploads, top_k=top_k, model=model)

    async def predict_many(
        self,
        images: Iterable[ImageInput],
        *,
        top_k: int | None = None,
        model: str | None = None,
        files_per_request: int = 8,
        concurrency: int = 4,
        return_exceptions: bool = False,
    ) -> list[Outcome]:
        """Every image, results in input order; see ``Client.predict_many``."""
        images = list(images)
        outcomes: list[Outcome | None] = [None] * len(images)
        async for index, outcome in self.iter_predict_many(
            images, top_k=top_k, model=model, files_per_request=files_per_request, concurrency=concurrency
        ):
            if isinstance(outcome, AlexNetError) and not return_exceptions:
                raise outcome
            outcomes[index] = outcome
        return outcomes  # type: ignore[return-value]

    async def iter_predict_many(
        self,
        images: Sequence[ImageInput],
        *,
        top_k: int | None = None,
        model: str | None = None,
        files_per_request: int = 8,
        concurrency: int = 4,
    ) -> AsyncIterator[tuple[int, Outcome]]:
        """``(index, Result or error)`` for every image as its request completes."""
        slots = asyncio.Semaphore(max(1, concurrency))

        async def run(chunk: range) -> list[tuple[int, Outcome]]:
            async with slots:
                return await self._predict_chunk(images, chunk, top_k, model)

        tasks = [asyncio.ensure_future(run(chunk)) for chunk in protocol.chunked(len(images), files_per_request)]
        try:
            for finished in asyncio.as_completed(tasks):
                for item in await finished:
                    yield item
        finally:
            for task in tasks:
                task.cancel()

    async def models(self) -> list[ModelInfo]:
        return protocol.parse_models(await self._request("GET", "/models"))

    async def ready(self) -> bool:
        try:
            return (await self._http.get("/readyz")).status_code == 200
        except httpx.TransportError:
            return False

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _predict_chunk(
        self, images: Sequence[ImageInput], chunk: range, top_k: int | None, model: str | None
    ) -> list[tuple[int, Outcome]]:
        outcomes: dict[int, Outcome] = {}
        uploads: dict[int, Upload] = {}
        for i in chunk:
            name = protocol.source_name(images[i], i)
            try:
                uploads[i] = await asyncio.to_thread(protocol.to_upload, images[i], name)
            except (OSError, TypeError) as exc:
                outcomes[i] = AlexNetError(f"cannot read {name}: {exc}")
        groups = [list(uploads)] if uploads else []
        while groups:
            group = groups.pop()
            try:
                names = [protocol.source_name(images[i], i) for i in group]
                results = await self._send([uploads[i] for i in group], top_k=top_k, model=model, names=names)
                outcomes.update(zip(group, results, strict=True))
            except ApiError as error:
                if len(group) > 1 and error.status in protocol.PER_IMAGE_STATUSES:
                    groups += [group[: len(group) // 2], group[len(group) // 2 :]]  # halve until the bad ones are alone
                else:
                    outcomes.update(dict.fromkeys(group, error))
            except AlexNetError as error:
                outcomes.update(dict.fromkeys(group, error))
        return sorted(outcomes.items())

    async def _send(
        self, uploads: Sequence[Upload], *, top_k: int | None, model: str | None, names: Sequence[str] | None = None
    ) -> list[Result]:
        params, files = protocol.predict_request(uploads, top_k=top_k, model=model)
        response = await self._request("POST", "/predict", params=params, files=files)
        return protocol.parse_predictions(response, names or [upload.name for upload in uploads])

    async def _request(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = await self._http.request(method, path, **kwargs)  # type: ignore[arg-type]
            except httpx.TransportError as exc:
                raise ConnectionFailed(f"{method} {self.url}{path}: {exc!r}") from exc
            if response.is_success:
                return response
            error = protocol.api_error(response)
            delay = self.retry.delay(attempt, error)
            if delay is None:
                raise error
            await asyncio.sleep(delay)
            attempt += 1
