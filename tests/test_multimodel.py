"""Several models in one process: configuration, routing by name, readiness of all of them."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.config import Settings, parse_models
from app.engine import Engine
from app.main import create_app
from tests.conftest import make_image

JPEG = {"Content-Type": "image/jpeg"}


def _settings(catdog: Path, imagenet: Path) -> Settings:
    return Settings(models=f"catdog={catdog}, imagenet={imagenet}", max_batch_size=2)  # type: ignore[call-arg]


def _wait(client: TestClient, path: str) -> None:
    deadline = time.monotonic() + 60
    while client.get(path).status_code != 200:
        assert time.monotonic() < deadline, f"{path} never answered 200"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def client(random_checkpoint: Path, imagenet_checkpoint: Path) -> Iterator[TestClient]:
    with TestClient(create_app(_settings(random_checkpoint, imagenet_checkpoint))) as c:
        _wait(c, "/readyz")
        yield c


def test_parse_models(tmp_path: Path) -> None:
    a, b = tmp_path / "a.safetensors", tmp_path / "b.pth"
    a.touch()
    b.touch()
    assert parse_models(f" first={a} ,second = {b}") == {"first": a, "second": b}
    for text, problem in [
        (f"{a}", "not name=path"),
        (f"x={a},x={b}", "appears twice"),
        (f"x={tmp_path / 'missing.pth'}", "does not exist"),
        (f"no/slash={a}", "model name"),
        ("x=", "not name=path"),
    ]:
        with pytest.raises(ValueError, match=problem):
            parse_models(text)


def test_settings_with_models(tmp_path: Path, random_checkpoint: Path) -> None:
    settings = Settings(models=f"m={random_checkpoint}", checkpoint=tmp_path / "absent.safetensors")  # type: ignore[call-arg]
    assert settings.served_models == {"m": random_checkpoint}, "the checkpoint is not needed next to models"
    assert Settings(checkpoint=random_checkpoint).served_models == {None: random_checkpoint}  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="sidecar"):
        Settings(models=f"m={random_checkpoint}", labels="a,b")  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="does not exist"):
        Settings(models=f"m={tmp_path / 'nope.pth'}")  # type: ignore[call-arg]


def test_models_lists_every_model_default_first(client: TestClient) -> None:
    models = client.get("/models").json()["models"]
    assert [(m["name"], m["num_classes"], m["arch"]) for m in models] == [
        ("catdog", 2, "alexnet"),
        ("imagenet", 1000, "torchvision-alexnet"),
    ]
    assert all(m["ready"] for m in models)


def test_predict_picks_the_model_by_name(client: TestClient) -> None:
    image = make_image(3)
    default = client.post("/predict", content=image, headers=JPEG).json()
    assert default["model"] == "catdog" and {p["label"] for p in default["predictions"]} == {"cat", "dog"}
    assert client.post("/predict?model=catdog", content=image, headers=JPEG).json() == default
    imagenet = client.post("/predict?model=imagenet", content=image, headers=JPEG).json()
    assert imagenet["model"] == "imagenet" and len(imagenet["predictions"]) == 5
    assert imagenet["predictions"][0]["index"] in range(1000) and imagenet["label"] != "cat"
    missing = client.post("/predict?model=nope", content=image, headers=JPEG)
    assert missing.status_code == 404
    assert missing.json()["error"] == {
        "code": "model_not_found",
        "message": "no model named 'nope'; served: catdog, imagenet",
    }


def test_v2_addresses_each_model(client: TestClient) -> None:
    assert client.get("/v2/models/imagenet").json()["outputs"][0]["shape"] == [-1, 1000]
    assert client.get("/v2/models/catdog/versions/1/ready").json() == {"name": "catdog", "ready": True}
    for path in ("/v2/models/nope", "/v2/models/catdog/versions/2", "/v2/models/nope/ready"):
        response = client.get(path)
        assert response.status_code == 404 and isinstance(response.json()["error"], str), path


def test_ready_only_when_every_model_is(
    random_checkpoint: Path, imagenet_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    original = Engine.warm_up

    def imagenet_waits(self: Engine) -> float:
        if len(self.info.labels) == 1000:
            release.wait(30)
        return original(self)

    monkeypatch.setattr(Engine, "warm_up", imagenet_waits)
    with TestClient(create_app(_settings(random_checkpoint, imagenet_checkpoint))) as client:
        _wait(client, "/v2/models/catdog/ready")
        assert client.get("/readyz").status_code == 503
        assert client.get("/v2/health/ready").json() == {"ready": False}
        assert client.get("/v2/models/imagenet/ready").status_code == 400
        assert client.post("/predict", content=make_image(1), headers=JPEG).status_code == 200
        refused = client.post("/predict?model=imagenet", content=make_image(1), headers=JPEG)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
        release.set()
        _wait(client, "/readyz")
        assert client.get("/v2/health/ready").status_code == 200
