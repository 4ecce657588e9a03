"""``Client``: classify images with a running alexnet-serving server (blocking; threads for concurrency)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from types import TracebackType

import httpx

from alexnet_client import protocol
from alexnet_client.errors import AlexNetError, ApiError, ConnectionFailed
from alexnet_client.protocol import ImageInput, RetryPolicy, Upload
from alexnet_client.results import ModelInfo, Result

Outcome = Result | AlexNetError
DEFAULT_URL = "http://127.0.0.1:8000"


class Client:
    """``Client("http://host:8000", api_key=...)``; ``predict`` one image, ``predict_many`` a collection.

    ``predict_many`` sends ``files_per_request`` images per request and ``concurrency`` requests at once, so
    the server gathers them into model batches. 429 and 503 answers are retried (see ``RetryPolicy``).
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self._http = httpx.Client(
            base_url=self.url, headers=protocol.auth_headers(api_key), timeout=timeout, transport=transport
        )

    def predict(self, image: ImageInput, *, top_k: int | None = None, model: str | None = None) -> Result:
        """Classify one image: a path, encoded bytes, a PIL image or a binary file."""
        return self._send([protocol.to_upload(image)], top_k=top_k, model=model)[0]

    def predict_batch(
        self, images: Sequence[ImageInput], *, top_k: int | None = None, model: str | None = None
    ) -> list[Result]:
        """Classify several images in one request (at most the server's ``ALEXNET_MAX_FILES``); one bad image
        fails the whole request."""
        uploads = [protocol.to_upload(image, f"image-{i}") for i, image in enumerate(images)]
        return self._send(uploads, top_k=top_k, model=model)

    def predict_many(
        self,
        images: Iterable[ImageInput],
        *,
        top_k: int | None = None,
        model: str | None = None,
        files_per_request: int = 8,
        concurrency: int = 4,
        return_exceptions: bool = False,
    ) -> list[Outcome]:
        """Classify every image, results in input order. A failed image raises its error, or with
        ``return_exceptions`` takes its place in the list."""
        images = list(images)
        outcomes: list[Outcome | None] = [None] * len(images)
        for index, outcome in self.iter_predict_many(
            images, top_k=top_k, model=model, files_per_request=files_per_request, concurrency=concurrency
        ):
            if isinstance(outcome, AlexNetError) and not return_exceptions:
                raise outcome
            outcomes[index] = outcome
        return outcomes  # type: ignore[return-value]

    def iter_predict_many(
        self,
        images: Sequence[ImageInput],
        *,
        top_k: int | None = None,
        model: str | None = None,
        files_per_request: int = 8,
        concurrency: int = 4,
    ) -> Iterator[tuple[int, Outcome]]:
        """``(index, Result or error)`` for every image as its request completes; files are read lazily."""
        with ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="alexnet-client") as pool:
            pending: set[Future[list[tuple[int, Outcome]]]] = {
                pool.submit(self._predict_chunk, images, chunk, top_k, model)
                for chunk in protocol.chunked(len(images), files_per_request)
            }
            try:
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        yield from future.result()
            finally:
                for future in pending:
                    future.cancel()

    def models(self) -> list[ModelInfo]:
        """The served models, default first."""
        return protocol.parse_models(self._get("/models"))

    def ready(self) -> bool:
        """Whether ``/readyz`` answers 200 now."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def wait_ready(self, timeout: float = 60.0, interval: float = 0.2) -> None:
        """Block until ``/readyz`` answers 200; ``TimeoutError`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.url}/readyz not ready after {timeout:g} s")
            time.sleep(interval)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def _predict_chunk(
        self, images: Sequence[ImageInput], chunk: range, top_k: int | None, model: str | None
    ) -> list[tuple[int, Outcome]]:
        """One request for ``images[chunk]``; a refused request is retried in halves, so that every image gets
        its own answer and the good ones still travel (and batch) together."""
        outcomes: dict[int, Outcome] = {}
        uploads: dict[int, Upload] = {}
        for i in chunk:
            try:
                uploads[i] = protocol.to_upload(images[i], protocol.source_name(images[i], i))
            except (OSError, TypeError) as exc:
                outcomes[i] = AlexNetError(f"cannot read {protocol.source_name(images[i], i)}: {exc}")
        groups = [list(uploads)] if uploads else []
        while groups:
            group = groups.pop()
            try:
                names = [protocol.source_name(images[i], i) for i in group]
                results = self._send([uploads[i] for i in group], top_k=top_k, model=model, names=names)
                outcomes.update(zip(group, results, strict=True))
            except ApiError as error:
                if len(group) > 1 and error.status in protocol.PER_IMAGE_STATUSES:
                    groups += [group[: len(group) // 2], group[len(group) // 2 :]]  # halve until the bad ones are alone
                else:
                    outcomes.update(dict.fromkeys(group, error))
            except AlexNetError as error:
                outcomes.update(dict.fromkeys(group, error))
        return sorted(outcomes.items())

    def _send(
        self, uploads: Sequence[Upload], *, top_k: int | None, model: str | None, names: Sequence[str] | None = None
    ) -> list[Result]:
        params, files = protocol.predict_request(uploads, top_k=top_k, model=model)
        response = self._request("POST", "/predict", params=params, files=files)
        return protocol.parse_predictions(response, names or [upload.name for upload in uploads])

    def _get(self, path: str) -> httpx.Response:
        return self._request("GET", path)

    def _request(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = self._http.request(method, path, **kwargs)  # type: ignore[arg-type]
            except httpx.TransportError as exc:
                raise ConnectionFailed(f"{method} {self.url}{path}: {exc!r}") from exc
            if response.is_success:
                return response
            error = protocol.api_error(response)
            delay = self.retry.delay(attempt, error)
            if delay is None:
                raise error
            time.sleep(delay)
            attempt += 1
