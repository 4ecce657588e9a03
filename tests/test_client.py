"""The Python client against real servers: our service, and a tiny local HTTP server for 429/503 answers."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from PIL import Image

from alexnet_client import AlexNetError, ApiError, AsyncClient, Client, ConnectionFailed, Prediction, RetryPolicy
from alexnet_client.protocol import parse_retry_after, parse_server_timing
from app.config import Settings
from tests.conftest import RunningServer, free_port, make_image


@pytest.fixture(scope="module")
def server(random_checkpoint: Path) -> Iterator[RunningServer]:
    """A long batching window, so the images of one request visibly share a batch."""
    running = RunningServer(
        {"ALEXNET_CHECKPOINT": str(random_checkpoint), "ALEXNET_DTYPE": "fp32", "ALEXNET_MAX_DELAY_MS": "1000"}
    )
    yield running
    running.stop()


@pytest.fixture
def photos(tmp_path: Path) -> list[Path]:
    paths = []
    for seed in range(24):
        path = tmp_path / f"photo-{seed:02d}.jpg"
        path.write_bytes(make_image(seed))
        paths.append(path)
    return paths


def test_import_needs_no_torch() -> None:
    code = (
        "import sys, alexnet_client, alexnet_client.cli; alexnet_client.Client('http://127.0.0.1:9').close(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'numpy', 'app')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_predict_from_path_bytes_and_pil(server: RunningServer, photos: list[Path]) -> None:
    with Client(server.url) as client:
        from_path = client.predict(photos[0])
        from_bytes = client.predict(photos[0].read_bytes(), top_k=1)
        from_pil = client.predict(Image.open(photos[0]))
        with photos[0].open("rb") as file:
            from_file = client.predict(file)
    assert from_path.model == "random-catdog" and from_path.source == "photo-00.jpg"
    assert all(isinstance(p, Prediction) for p in from_path.predictions) and len(from_path.predictions) == 2
    assert from_path.label == from_path.predictions[0].label and from_path.batch_size == 1
    assert {"queue", "preprocess", "inference", "total"} <= set(from_path.timing_ms) and from_path.request_id
    assert from_bytes.predictions == from_path.predictions[:1]
    assert from_file.predictions == from_path.predictions
    # a PIL image is re-encoded (JPEG, quality 95): the same answer within JPEG's noise
    assert from_pil.probability == pytest.approx(from_path.probability, abs=0.05)


def test_predict_many_sends_several_files_per_request_and_they_share_batches(
    server: RunningServer, photos: list[Path]
) -> None:
    with Client(server.url) as client:
        results = client.predict_many(photos, files_per_request=8, concurrency=3)
        singles = [client.predict(path) for path in photos[:3]]
    assert [result.source for result in results] == [str(path) for path in photos]  # input order
    assert len({result.request_id for result in results}) == 3  # 24 images in 3 requests
    assert max(result.batch_size or 0 for result in results) > 1
    for batched, single in zip(results, singles, strict=False):  # fp32 in a batch of 8 or of 1: the same answer
        assert batched.label == single.label and batched.probability == pytest.approx(single.probability, abs=1e-4)


def test_server_errors_carry_code_message_and_status(server: RunningServer, tmp_path: Path) -> None:
    bad = b"definitely not an image"
    expected = httpx.post(server.url + "/predict", files={"file": ("x.jpg", bad)}).json()["error"]
    with Client(server.url) as client:
        with pytest.raises(ApiError) as caught:
            client.predict(bad)
        assert (caught.value.status, caught.value.code, caught.value.message) == (
            422,
            "invalid_image",
            expected["message"],
        )
        with pytest.raises(ApiError) as unknown:
            client.predict(make_image(), model="nope")
        assert (unknown.value.status, unknown.value.code) == (404, "model_not_found")
        # one bad image in a request of several: the others still get their answers
        outcomes = client.predict_many([make_image(1), bad, make_image(2)], files_per_request=3, return_exceptions=True)
        assert isinstance(outcomes[1], ApiError) and outcomes[1].code == "invalid_image"
        assert outcomes[0].label in ("cat", "dog") and outcomes[2].label in ("cat", "dog")  # type: ignore[union-attr]
        with pytest.raises(ApiError):
            client.predict_many([make_image(1), bad])
        missing = client.predict_many([tmp_path / "missing.jpg"], return_exceptions=True)
        assert isinstance(missing[0], AlexNetError) and "missing.jpg" in str(missing[0])


def test_unreachable_server_is_connection_failed() -> None:
    with Client(f"http://127.0.0.1:{free_port()}") as client, pytest.raises(ConnectionFailed):
        client.predict(make_image())


class Scripted:
    """A real HTTP server on 127.0.0.1 answering ``POST /predict`` from a script of (status, headers, body)."""

    def __init__(self, answers: list[tuple[int, dict[str, str], dict[str, object]]]) -> None:
        self.answers, self.arrivals, self.authorization = list(answers), [], []
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers["Content-Length"]))
                scripted.arrivals.append(time.monotonic())
                scripted.authorization.append(self.headers.get("Authorization"))
                status, headers, body = scripted.answers.pop(0) if len(scripted.answers) > 1 else scripted.answers[0]
                payload = json.dumps(body).encode()
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)

    def __enter__(self) -> Scripted:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.shutdown()
        self.http.server_close()


OK = (200, {"X-Batch-Size": "3", "Server-Timing": "total;dur=4.5"},
      {"model": "m", "label": "cat", "probability": 0.9,
       "predictions": [{"label": "cat", "index": 0, "probability": 0.9}]})  # fmt: skip
OVERLOADED = (429, {"Retry-After": "1"}, {"error": {"code": "overloaded", "message": "queue full"}})
NOT_READY = (503, {"Retry-After": "0"}, {"error": {"code": "not_ready", "message": "warming up"}})


def test_retries_429_and_503_after_retry_after_with_the_key() -> None:
    with Scripted([OVERLOADED, NOT_READY, OK]) as scripted, Client(scripted.url, api_key="s3cret") as client:
        result = client.predict(make_image())
    assert (result.label, result.batch_size, result.timing_ms) == ("cat", 3, {"total": 4.5})
    assert len(scripted.arrivals) == 3
    assert scripted.arrivals[1] - scripted.arrivals[0] >= 1.0  # the server's Retry-After, not the 0.5 s backoff
    assert scripted.authorization == ["Bearer s3cret"] * 3


def test_gives_up_after_the_last_retry() -> None:
    overloaded = (429, {"Retry-After": "0"}, OVERLOADED[2])
    with (
        Scripted([overloaded]) as scripted,
        Client(scripted.url, retry=RetryPolicy(retries=2)) as client,
        pytest.raises(ApiError) as caught,
    ):
        client.predict(make_image())
    assert (caught.value.status, caught.value.code, caught.value.message) == (429, "overloaded", "queue full")
    assert len(scripted.arrivals) == 3 and scripted.authorization == [None] * 3


def test_async_twin(server: RunningServer, photos: list[Path]) -> None:
    async def scenario() -> None:
        async with AsyncClient(server.url) as client:
            one = await client.predict(photos[0], top_k=1)
            many = await client.predict_many(photos[:16], files_per_request=8, concurrency=2)
            with pytest.raises(ApiError) as caught:
                await client.predict(b"nope")
            assert caught.value.code == "invalid_image"
            assert [m.name for m in await client.models()] == ["random-catdog"]
        assert [r.source for r in many] == [str(p) for p in photos[:16]]
        assert len({r.request_id for r in many}) == 2
        assert many[0].probability == pytest.approx(one.probability, abs=1e-4)
        with Scripted([NOT_READY, OK]) as scripted:
            async with AsyncClient(scripted.url, api_key="k") as retrying:
                assert (await retrying.predict(make_image())).label == "cat"
            assert scripted.authorization == ["Bearer k"] * 2

    asyncio.run(scenario())


def test_header_parsing() -> None:
    assert parse_server_timing("queue;dur=1.5, preprocess;desc=x;dur=2, bad;dur=x") == {"queue": 1.5, "preprocess": 2}
    assert parse_retry_after("3") == 3.0 and parse_retry_after(None) is None and parse_retry_after("soon") is None
    from datetime import datetime

    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("Wed, 01 Jan 2025 12:00:05 GMT", now) == 5.0


@pytest.mark.skipif("api_keys" not in Settings.model_fields, reason="ALEXNET_API_KEYS not in this server yet")
def test_api_key_against_the_real_server(random_checkpoint: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    keyed = start_server({"ALEXNET_CHECKPOINT": str(random_checkpoint), "ALEXNET_API_KEYS": "k1,k2"})
    with Client(keyed.url) as anonymous, pytest.raises(ApiError) as caught:
        anonymous.predict(make_image())
    assert (caught.value.status, caught.value.code) == (401, "unauthorized")
    with Client(keyed.url, api_key="k2") as client:
        assert client.predict(make_image()).label in ("cat", "dog")
