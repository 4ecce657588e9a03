"""Prometheus metrics: names, labels, and counts that match the requests made."""

from __future__ import annotations

import base64
import time
from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.config import Settings
from app.main import create_app
from app.metrics import Metrics
from tests.conftest import make_image

JPEG = {"Content-Type": "image/jpeg"}
MODEL = {"model": "random-catdog"}


def _scrape(client: TestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def _value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_count_what_happened(random_checkpoint: Path) -> None:
    with TestClient(create_app(Settings(checkpoint=random_checkpoint, max_batch_size=4))) as client:  # type: ignore[call-arg]
        while client.get("/readyz").status_code != 200:
            time.sleep(0.02)
        for seed in range(3):  # one at a time: three batches of one
            assert client.post("/predict", content=make_image(seed), headers=JPEG).status_code == 200
        files = [("file", (f"{i}.jpg", make_image(10 + i), "image/jpeg")) for i in range(2)]
        assert client.post("/predict", files=files).status_code == 200
        images = [base64.b64encode(make_image(20 + i)).decode() for i in range(2)]
        v2 = {"inputs": [{"name": "images", "shape": [2], "datatype": "BYTES", "data": images}]}
        assert client.post("/v2/models/random-catdog/infer", json=v2).status_code == 200
        assert client.post("/predict", content=b"garbage", headers=JPEG).status_code == 422
        assert client.get("/no/such/path").status_code == 404
        early = client.post("/predict", content=b"\0" * (21 * 1024 * 1024), headers=JPEG)
        assert early.status_code == 413
        samples = _scrape(client)

    def requests(method: str, route: str, status: str) -> float:
        return _value(samples, "alexnet_http_requests_total", method=method, route=route, status=status)

    assert requests("POST", "/predict", "200") == 4
    assert requests("POST", "/predict", "422") == 1
    assert requests("POST", "/predict", "413") == 1, "refused before routing, still counted under its route"
    assert requests("POST", "/v2/models/{model_name}/infer", "200") == 1
    assert requests("GET", "unmatched", "404") == 1
    latency = _value(samples, "alexnet_http_request_duration_seconds_count", method="POST", route="/predict")
    assert latency == 6

    assert _value(samples, "alexnet_queue_wait_seconds_count", **MODEL) == 7  # 3 + 2 + 2 images answered
    assert _value(samples, "alexnet_preprocess_seconds_count", **MODEL) == 7
    assert _value(samples, "alexnet_batch_size_sum", **MODEL) == 7, "every answered image ran in one batch"
    batches = _value(samples, "alexnet_batch_size_count", **MODEL)
    assert 5 <= batches <= 7 and _value(samples, "alexnet_batch_size_bucket", le="1.0", **MODEL) >= 3
    assert _value(samples, "alexnet_inference_seconds_count", **MODEL) == batches
    buckets = {dict(labels)["le"] for name, labels in samples if name == "alexnet_batch_size_bucket"}
    assert sorted(buckets, key=float) == ["1.0", "2.0", "4.0", "+Inf"], "the engine's warm-up sizes"

    info = {"model": "random-catdog", "arch": "alexnet", "device": "cpu", "classes": "2"}
    assert any(name == "alexnet_model_info" and info.items() <= dict(labels).items() for name, labels in samples)
    assert _value(samples, "alexnet_model_ready", **MODEL) == 1
    assert _value(samples, "alexnet_queue_depth", **MODEL) == 0
    assert _value(samples, "alexnet_images_in_flight", **MODEL) == 0
    assert _value(samples, "alexnet_http_requests_in_flight") == 1, "the scrape itself"
    assert not any(name.startswith("alexnet_cuda_memory") for name, _ in samples), "no CUDA model here"


def test_each_app_has_its_own_registry() -> None:
    first, second = Metrics(8), Metrics(8)  # the global registry would refuse the second set of names
    first.observe_batch("m", 3, 0.01)
    assert first.registry.get_sample_value("alexnet_batch_size_count", {"model": "m"}) == 1
    assert second.registry.get_sample_value("alexnet_batch_size_count", {"model": "m"}) is None
