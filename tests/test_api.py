"""The app in process (Starlette's TestClient runs the real lifespan, batcher and model).

The shared client serves in fp32, so answers can be compared with the fp32 eager reference to
1e-5: the random network's probabilities differ by ~1e-3 between images, so a wrong decode,
crop, channel order or image-to-answer mix-up shows.
"""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings
from app.engine import Engine
from app.main import create_app
from model.checkpoint import load_checkpoint
from model.presets import eval_tensor
from tests.conftest import make_image, reference_probabilities

TOLERANCE = 2e-5  # fp32 served (channels-last, batched) against fp32 eager NCHW


def _client(checkpoint: Path, **settings: object) -> TestClient:
    return TestClient(create_app(Settings(checkpoint=checkpoint, **settings)))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def reference(random_checkpoint: Path) -> Callable[[Image.Image], list[float]]:
    """The fp32 eager probabilities for a decoded picture, computed without the service."""
    checkpoint = load_checkpoint(random_checkpoint)

    def probabilities(image: Image.Image) -> list[float]:
        return reference_probabilities(checkpoint, eval_tensor(image, checkpoint.meta.preprocessing)[None])[0].tolist()

    return probabilities


def _by_index(body: dict) -> list[float]:
    """A /predict answer's probabilities, by class index."""
    found = {p["index"]: p["probability"] for p in body["predictions"]}
    return [found[i] for i in range(len(found))]


def _close(served: list[float], expected: list[float]) -> bool:
    return max(abs(a - b) for a, b in zip(served, expected, strict=True)) <= TOLERANCE


def _wait_ready(client: TestClient) -> None:
    deadline = time.monotonic() + 60
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "never became ready"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def client(random_checkpoint: Path) -> Iterator[TestClient]:
    with _client(
        random_checkpoint, dtype="fp32", max_upload_bytes=2_000_000, max_image_pixels=5_000_000, max_files=4
    ) as c:
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


def _picture() -> Image.Image:
    """A noisy picture of at most 256 colours, so GIF (a palette format) stores it exactly too."""
    rgb = Image.open(io.BytesIO(make_image(3, fmt="PNG"))).convert("RGB")
    return rgb.quantize(256)


@pytest.mark.parametrize(
    ("fmt", "options", "lossless"),
    [
        ("PNG", {}, True),
        ("BMP", {}, True),
        ("TIFF", {}, True),
        ("GIF", {}, True),
        ("WEBP", {"lossless": True}, True),
        ("WEBP", {"quality": 80}, False),
        ("JPEG", {"quality": 90}, False),
    ],
    ids=["png", "bmp", "tiff", "gif", "webp-lossless", "webp", "jpeg"],
)
def test_every_accepted_format_gives_the_answer_for_its_pixels(
    client: TestClient, reference: Callable[[Image.Image], list[float]], fmt: str, options: dict, lossless: bool
) -> None:
    picture = _picture()
    buffer = io.BytesIO()
    (picture if fmt == "GIF" else picture.convert("RGB")).save(buffer, format=fmt, **options)
    data = buffer.getvalue()
    # Lossless: the pixels we drew; lossy: what the file decodes to (PIL, outside the service).
    pixels = picture.convert("RGB") if lossless else Image.open(io.BytesIO(data)).convert("RGB")
    response = client.post("/predict?top_k=2", files={"file": (f"x.{fmt.lower()}", data, "application/octet-stream")})
    assert response.status_code == 200, response.text
    assert _close(_by_index(response.json()), reference(pixels)), fmt


def test_top_k(client: TestClient) -> None:
    files = {"file": ("a.jpg", make_image(4), "image/jpeg")}
    assert len(client.post("/predict?top_k=1", files=files).json()["predictions"]) == 1
    assert len(client.post("/predict?top_k=50", files=files).json()["predictions"]) == 2
    _error(client.post("/predict?top_k=0", files=files), 422, "invalid_request")
    _error(client.post("/predict?top_k=abc", files=files), 422, "invalid_request")


def test_several_files_in_one_request(client: TestClient, reference: Callable[[Image.Image], list[float]]) -> None:
    images = [make_image(seed) for seed in (10, 11, 12)]
    response = client.post(
        "/predict", files=[("file", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(images)]
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "random-catdog" and len(body["results"]) == 3
    for data, result in zip(images, body["results"], strict=True):  # each answer is its own image's, in order
        assert _close(_by_index(result), reference(Image.open(io.BytesIO(data)).convert("RGB")))
    # The images are decoded together and queued together, so they run as one batch.
    assert response.headers["x-batch-size"] == "3,3,3"
    too_many = [("file", (f"{i}.jpg", images[0], "image/jpeg")) for i in range(5)]
    _error(client.post("/predict", files=too_many), 400, "malformed_multipart")


def test_one_bad_or_empty_file_fails_the_request_and_names_it(client: TestClient) -> None:
    good = ("file", ("a.jpg", make_image(13), "image/jpeg"))
    message = _error(
        client.post("/predict", files=[good, ("file", ("b.jpg", b"garbage", "image/jpeg")), good]), 422, "invalid_image"
    )
    assert message.startswith("file 2 of 3: ")
    huge = io.BytesIO()
    Image.new("L", (3000, 2000)).save(huge, format="PNG")
    message = _error(
        client.post("/predict", files=[good, ("file", ("big.png", huge.getvalue(), "image/png"))]),
        422,
        "image_too_large",
    )
    assert message.startswith("file 2 of 2: ")
    empty = _error(client.post("/predict", files=[good, ("file", ("e.jpg", b"", "image/jpeg"))]), 400, "no_image")
    assert "empty" in empty
    assert client.app.state.registry.default.batcher.queue_depth == 0  # type: ignore[attr-defined]


def test_request_id_is_echoed_truncated_and_on_errors(client: TestClient) -> None:
    long_id = "r" * 100 + "x" * 200
    response = client.post(
        "/predict", content=make_image(1), headers={"Content-Type": "image/jpeg", "X-Request-ID": long_id}
    )
    assert response.status_code == 200 and response.headers["x-request-id"] == long_id[:128]
    refused = client.post("/predict", content=b"junk", headers={"Content-Type": "image/jpeg", "X-Request-ID": "e-1"})
    assert refused.status_code == 422 and refused.headers["x-request-id"] == "e-1"
    ids = {client.get("/healthz").headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3 and all(len(i) == 32 for i in ids), "a new id for each request"


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


def _v2(client: TestClient, seed: int):  # type: ignore[no-untyped-def]
    """One image through the Open Inference Protocol route."""
    data = base64.b64encode(make_image(seed)).decode()
    body = {"inputs": [{"name": "images", "shape": [1], "datatype": "BYTES", "data": [data]}]}
    return client.post("/v2/models/random-catdog/infer", json=body)


def _v2_error(response, status: int) -> str:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error, str)
    return error


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
    # max_queue counts every image taken on: the one in the running batch and the two queued.
    with _client(random_checkpoint, max_batch_size=1, max_queue=3, max_delay_ms=0) as client:
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
            v2_refused = _v2(client, 4)
            assert _v2_error(v2_refused, 429) and v2_refused.headers["retry-after"] == "1"
            release.set()
            assert [f.result().status_code for f in [running, *queued]] == [200, 200, 200]
        assert client.app.state.registry.default.batcher.queue_depth == 0  # type: ignore[attr-defined]
        assert post(5).status_code == 200  # type: ignore[attr-defined]


def test_waiting_too_long_gives_504(random_checkpoint: Path) -> None:
    with _client(random_checkpoint, max_batch_size=1, request_timeout_s=1.0, max_delay_ms=0) as client:
        _wait_ready(client)
        entered, release = _gate_model(client)
        batcher = client.app.state.registry.default.batcher  # type: ignore[attr-defined]
        with ThreadPoolExecutor(3) as pool:
            first = pool.submit(client.post, "/predict", files={"file": ("a.jpg", make_image(1), "image/jpeg")})
            assert entered.wait(10)
            late = pool.submit(client.post, "/predict", files={"file": ("b.jpg", make_image(2), "image/jpeg")})
            late_v2 = pool.submit(_v2, client, 3)
            deadline = time.monotonic() + 30
            while batcher.queue_depth + late.done() + late_v2.done() < 2:  # each is queued (or already refused)
                assert time.monotonic() < deadline, "the requests never reached the queue"
                time.sleep(0.01)
            time.sleep(1.2)  # let them age past the 1 s timeout: the condition under test, not an ordering
            release.set()
            assert first.result().status_code == 200
            _error(late.result(), 504, "timeout")
            _v2_error(late_v2.result(), 504)


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
        v2_refused = _v2(client, 1)
        assert "warming up" in _v2_error(v2_refused, 503) and v2_refused.headers["retry-after"] == "5"
        assert client.get("/v2/health/ready").status_code == 400
        assert client.get("/models").json()["models"][0]["ready"] is False
        warm.set()
        _wait_ready(client)
        assert client.post("/predict", files={"file": ("a.jpg", make_image(1), "image/jpeg")}).status_code == 200


def test_bad_image_in_a_batch_does_not_fail_its_neighbours(
    random_checkpoint: Path, reference: Callable[[Image.Image], list[float]]
) -> None:
    with _client(random_checkpoint, dtype="fp32") as client:
        _wait_ready(client)
        entered, release = _gate_model(client)  # the model is stuck on a first batch while the others queue
        batcher = client.app.state.registry.default.batcher  # type: ignore[attr-defined]
        bodies = [make_image(seed) for seed in range(6)]

        def post(data: bytes):  # type: ignore[no-untyped-def]
            return client.post("/predict?top_k=2", content=data, headers={"Content-Type": "image/jpeg"})

        with ThreadPoolExecutor(8) as pool:
            busy = pool.submit(post, make_image(99))
            assert entered.wait(30)
            good = [pool.submit(post, data) for data in bodies]
            _error(post(b"garbage"), 422, "invalid_image")  # refused at once, while the model is still stuck
            deadline = time.monotonic() + 30
            while batcher.queue_depth < len(bodies):
                assert time.monotonic() < deadline, f"only {batcher.queue_depth} images reached the queue"
                time.sleep(0.01)
            release.set()
            assert busy.result().status_code == 200
            responses = [future.result() for future in good]
        assert [r.status_code for r in responses] == [200] * 6
        assert [r.headers["x-batch-size"] for r in responses] == ["6"] * 6, "the backlog runs as one batch"
        for data, response in zip(bodies, responses, strict=True):
            assert _close(_by_index(response.json()), reference(Image.open(io.BytesIO(data)).convert("RGB")))


def test_openapi_documents_predict(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    operation = spec["paths"]["/predict"]["post"]
    assert "multipart/form-data" in operation["requestBody"]["content"]
    assert {"200", "400", "413", "415", "422", "429", "503", "504"} <= set(operation["responses"])
    assert client.get("/docs").status_code == 200
