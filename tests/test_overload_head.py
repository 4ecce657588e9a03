"""Overload is refused from the request's head: no dependency, no thread, no body; and the
default admission limit is sized at warm-up from the model's own timings."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastapi.dependencies.utils
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from tests.conftest import make_image, ready_in_process

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def client(random_checkpoint: Path) -> Iterator[TestClient]:
    settings = Settings(models=f"catdog={random_checkpoint}", dtype="fp32", max_queue=1, api_keys=KEY)  # type: ignore[call-arg]
    with TestClient(create_app(settings)) as test_client:
        yield ready_in_process(test_client)


async def _no_thread(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("a refusal under overload must not wait for a thread")


@pytest.mark.parametrize("path", ["/predict", "/predict?model=catdog", "/v2/models/catdog/versions/1/infer"])
def test_a_full_model_refuses_from_the_head_without_a_thread(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    service = client.app.state.registry.default  # type: ignore[attr-defined]
    with service.admission.enter():  # takes the only place
        monkeypatch.setattr(fastapi.dependencies.utils, "run_in_threadpool", _no_thread)
        response = client.post(path, content=make_image(1), headers={"Content-Type": "image/jpeg", "X-API-Key": KEY})
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    body = response.json()
    assert (body["error"] if path.startswith("/v2") else body["error"]["message"]).startswith("1 images are already")


def test_a_full_model_still_refuses_a_wrong_key_with_401(client: TestClient) -> None:
    service = client.app.state.registry.default  # type: ignore[attr-defined]
    with service.admission.enter():
        wrong = client.post("/predict", content=b"x", headers={"Content-Type": "image/jpeg", "X-API-Key": "nope"})
        unknown = client.post("/predict?model=other", content=b"x", headers={"X-API-Key": KEY})
    assert wrong.status_code == 401
    assert unknown.status_code == 404


def test_the_default_queue_holds_about_a_second_of_measured_work(
    random_checkpoint: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app.service")
    settings = Settings(checkpoint=random_checkpoint, dtype="fp32", max_batch_size=4)  # type: ignore[call-arg]
    with TestClient(create_app(settings)) as client:
        limit = ready_in_process(client).get("/models").json()["models"][0]["batching"]["max_queue"]
    sized = [record for record in caplog.records if record.getMessage().startswith("max_queue for")]
    assert len(sized) == 1
    assert sized[0].fields["max_queue"] == limit  # type: ignore[attr-defined]
    assert limit >= 4, "never less than one batch"


def test_an_explicit_max_queue_wins(random_checkpoint: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="app.service")
    settings = Settings(checkpoint=random_checkpoint, dtype="fp32", max_queue=7)  # type: ignore[call-arg]
    with TestClient(create_app(settings)) as client:
        assert ready_in_process(client).get("/models").json()["models"][0]["batching"]["max_queue"] == 7
    assert not [record for record in caplog.records if record.getMessage().startswith("max_queue for")]
