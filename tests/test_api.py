"""The app in process (Starlette's TestClient runs the real lifespan, batcher and model)."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings
from app.engine import Engine
from app.main import create_app
from tests.conftest import make_image


def _client(checkpoint: Path, **settings: object) -> TestClient:
    return TestClient(create_app(Settings(checkpoint=checkpoint, **settings)))  # type: ignore[arg-type]


def _wait_ready(client: TestClient) -> None:
    deadline = time.monotonic() + 60
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "never became ready"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def client(random_checkpoint: Path) -> Iterator[TestClient]:
    with _client(random_checkpoint, max_upload_bytes=2_000_000, max_image_pixels=5_000_000, max_files=4) as c:
        _wait_ready(c)
        yield c


def _error(response, status: int, code: str) -> str:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"]["code"] == code
    return body["error"]["message"]


def test_health_ready_models(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    (model,) = client.get("/models").json()["models"]
    assert model["name"] == "random-catdog" and model["labels"] == ["cat", "dog"]
    assert model["input_size"] == 227 and model["device"] == "cpu" and model["ready"] is True
    assert model["batching"]["max_batch_size"] == 32 and model["batching"]["buckets"][-1] == 32


def test_predict_multipart(client: TestClient) -> None:
    response = client.post(
        "/predict", files={"file": ("cat.jpg", make_image(1), "image/jpeg")}, headers={"X-Request-ID": "abc-123"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "random-catdog"
    assert [p["label"] for p in body["predictions"]] in (["cat", "dog"], ["dog", "cat"])
    probabilities = [p["probability"] for p in body["predictions"]]
    assert probabilities == sorted(probabilities, reverse=True) and abs(sum(probabilities) - 1) < 1e-5
    assert (body["label"], body["probability"]) == (body["predictions"][0]["label"], probabilities[0])
    assert response.headers["x-request-id"] == "abc-123"
    assert response.headers["x-batch-size"] == "1"
    timing = dict(part.strip().split(";dur=") for part in response.headers["server-timing"].split(","))
    assert set(timing) == {"queue", "preprocess", "inference", "total"}
    assert all(float(v) >= 0 for v in timing.values())


def test_raw_body_and_request_id_generated(client: TestClient) -> None:
    data = make_image(2, fmt="PNG")
    raw = client.post("/predict", content=data, headers={"Content-Type": "image/png"})
    multipart = client.post("/predict", files={"file": ("x.png", data, "image/png")})
    assert raw.status_code == 200 and raw.json() == multipart.json()
    assert len(raw.headers["x-request-id"]) == 32


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"])
def test_every_accepted_format(client: TestClient, fmt: str) -> None:
    response = client.post(
        "/predict", files={"file": (f"x.{fmt.lower()}", make_image(3, fmt=fmt), "application/octet-stream")}
    )
    assert response.status_code == 200, response.text


def test_top_k(client: TestClient) -> None:
    files = {"file": ("a.jpg", make_image(4), "image/jpeg")}
    assert len(client.post("/predict?top_k=1", files=files).json()["predictions"]) == 1
    assert len(client.post("/predict?top_k=50", files=files).json()["predictions"]) == 2
    _error(client.post("/predict?top_k=0", files=files), 422, "invalid_request")
    _error(client.post("/predict?top_k=abc", files=files), 422, "invalid_request")


def test_several_files_in_one_request(client: TestClient) -> None:
    images = [make_image(seed) for seed in (10, 11, 12)]
    response = client.post(
        "/predict", files=[("file", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(images)]
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "random-catdog" and len(body["results"]) == 3
    for data, result in zip(images, body["results"], strict=True):
        alone = client.post("/predict", files={"file": ("x.jpg", data, "image/jpeg")}).json()
        assert result["label"] == alone["label"]
        assert (
            abs(result["probability"] - alone["probability"]) < 5e-3
        )  # bf16 here; fp32 exactness is tested on a real server
    assert response.headers["x-batch-size"] in ("3,3,3", "1,2,2", "2,2,1", "2,1,2", "1,1,1")
    too_many = [("file", (f"{i}.jpg", images[0], "image/jpeg")) for i in range(5)]
    _error(client.post("/predict", files=too_many), 400, "malformed_multipart")


def test_client_errors(client: TestClient) -> None:
    _error(client.post("/predict"), 400, "no_image")
    _error(client.post("/predict", content=b"", headers={"Content-Type": "image/jpeg"}), 400, "no_image")
    _error(client.post("/predict", data={"other": "field"}, files={"nofile": ("a.txt", b"x")}), 400, "no_image")
    _error(client.post("/predict", data={"file": "just text"}, files={"x": ("a.txt", b"x")}), 400, "no_image")
    broken = b'--XYZ\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\nabc'
    _error(
        client.post("/predict", content=broken, headers={"Content-Type": "multipart/form-data"}),
        400,
        "malformed_multipart",
    )
    _error(
        client.post("/predict", content=b"hi", headers={"Content-Type": "text/plain"}), 415, "unsupported_media_type"
    )
    _error(
        client.post("/predict", content=b"<svg/>", headers={"Content-Type": "image/svg+xml"}),
        415,
        "unsupported_media_type",
    )
    ppm = make_image(5, fmt="PPM")
    _error(
        client.post("/predict", files={"file": ("a.ppm", ppm, "image/x-portable-pixmap")}),
        415,
        "unsupported_image_format",
    )
    _error(
        client.post("/predict", content=b"not an image at all", headers={"Content-Type": "image/jpeg"}),
        422,
        "invalid_image",
    )
    jpeg = make_image(6)
    message = _error(
        client.post("/predict", files={"file": ("t.jpg", jpeg[: len(jpeg) // 2], "image/jpeg")}), 422, "invalid_image"
    )
    assert "truncated" in message
    buffer = io.BytesIO()
    Image.new("L", (3000, 2000)).save(buffer, format="PNG")  # a small file of 6 M pixels > 5 M allowed
    bomb = buffer.getvalue()
    _error(client.post("/predict", content=bomb, headers={"Content-Type": "image/png"}), 422, "image_too_large")
    _error(client.get("/nope"), 404, "not_found")
    _error(client.get("/predict"), 405, "method_not_allowed")


def test_body_limit_from_content_length_and_from_the_stream(client: TestClient) -> None:
    big = b"\xff" * 2_500_000
    _error(client.post("/predict", content=big, headers={"Content-Type": "image/jpeg"}), 413, "payload_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must cut the stream
        for _ in range(30):
            yield b"\xff" * 100_000

    _error(client.post("/predict", content=chunks(), headers={"Content-Type": "image/jpeg"}), 413, "payload_too_large")
    assert client.post("/predict", files={"file": ("ok.jpg", make_image(8), "image/jpeg")}).status_code == 200


def _gate_model(client: TestClient) -> tuple[threading.Event, threading.Event]:
    """Make the model wait at the start of each batch until ``release`` is set."""
    service = client.app.state.registry.default  # type: ignore[attr-defined]
    entered, release = threading.Event(), threading.Event()
    run = service.engine.run

    def gated(images):  # type: ignore[no-untyped-def]
        entered.set()
        release.wait(30)
        return run(images)

    service.batcher._run_batch = gated
    return entered, release


def test_overload_gives_429_and_leaks_no_slot(random_checkpoint: Path) -> None:
    with _client(random_checkpoint, max_batch_size=1, max_queue=2, max_delay_ms=0) as client:
        _wait_ready(client)
        entered, release = _gate_model(client)

        def post(seed: int):  # type: ignore[no-untyped-def]
            return client.post("/predict", files={"file": ("a.jpg", make_image(seed), "image/jpeg")})

        with ThreadPoolExecutor(4) as pool:
            running = pool.submit(post, 1)
            assert entered.wait(10)
            queued = [pool.submit(post, seed) for seed in (2, 3)]
            while client.app.state.registry.default.batcher.queue_depth < 2:  # type: ignore[attr-defined]
                time.sleep(0.01)
            refused = post(4)
            _error(refused, 429, "overloaded")
            assert refused.headers["retry-after"] == "1"
            release.set()
            assert [f.result().status_code for f in [running, *queued]] == [200, 200, 200]
        assert client.app.state.registry.default.batcher.queue_depth == 0  # type: ignore[attr-defined]
        assert post(5).status_code == 200  # type: ignore[attr-defined]


def test_waiting_too_long_gives_504(random_checkpoint: Path) -> None:
    with _client(random_checkpoint, max_batch_size=1, request_timeout_s=0.2, max_delay_ms=0) as client:
        _wait_ready(client)
        entered, release = _gate_model(client)
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(client.post, "/predict", files={"file": ("a.jpg", make_image(1), "image/jpeg")})
            assert entered.wait(10)
            late = pool.submit(client.post, "/predict", files={"file": ("b.jpg", make_image(2), "image/jpeg")})
            time.sleep(0.5)
            release.set()
            assert first.result().status_code == 200
            _error(late.result(), 504, "timeout")


def test_not_ready_before_warm_up(random_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    warm = threading.Event()
    original = Engine.warm_up

    def slow_warm_up(self: Engine) -> float:
        warm.wait(30)
        return original(self)

    monkeypatch.setattr(Engine, "warm_up", slow_warm_up)
    with _client(random_checkpoint) as client:
        assert client.get("/healthz").status_code == 200
        _error(client.get("/readyz"), 503, "not_ready")
        refused = client.post("/predict", files={"file": ("a.jpg", make_image(1), "image/jpeg")})
        _error(refused, 503, "not_ready")
        assert refused.headers["retry-after"] == "5"
        assert client.get("/models").json()["models"][0]["ready"] is False
        warm.set()
        _wait_ready(client)
        assert client.post("/predict", files={"file": ("a.jpg", make_image(1), "image/jpeg")}).status_code == 200


def test_bad_image_in_a_batch_does_not_fail_its_neighbours(random_checkpoint: Path) -> None:
    with _client(random_checkpoint, max_delay_ms=300) as client:
        _wait_ready(client)
        bodies = [make_image(seed) for seed in range(6)] + [b"garbage"]
        with ThreadPoolExecutor(7) as pool:
            responses = list(
                pool.map(
                    lambda data: client.post("/predict", content=data, headers={"Content-Type": "image/jpeg"}), bodies
                )
            )
        assert [r.status_code for r in responses] == [200] * 6 + [422]
        assert max(int(r.headers["x-batch-size"]) for r in responses[:6]) > 1


def test_openapi_documents_predict(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    operation = spec["paths"]["/predict"]["post"]
    assert "multipart/form-data" in operation["requestBody"]["content"]
    assert {"200", "400", "413", "415", "422", "429", "503", "504"} <= set(operation["responses"])
    assert client.get("/docs").status_code == 200
