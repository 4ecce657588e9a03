"""Several models in one process: configuration, routing by name, readiness of all of them,
each model's own preprocessing, and one model's trouble staying its own.

The module's "catdog" model has its own resize, mean and std (unlike the torchvision-layout
"imagenet" one), so a service that used the wrong model's preprocessing gives other answers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from pydantic import ValidationError
from torchvision.models import AlexNet_Weights

from app.config import Settings, parse_models
from app.engine import Engine
from app.main import create_app
from model.checkpoint import ModelMeta, load_checkpoint, save_checkpoint
from model.network import AlexNet
from model.presets import Preprocessing, load_eval_tensor
from tests.conftest import make_image, reference_probabilities

IMAGENET_LABELS = AlexNet_Weights.IMAGENET1K_V1.meta["categories"]
OWN_PREP = Preprocessing(input_size=227, resize_size=320, mean=(0.6, 0.4, 0.3), std=(0.2, 0.3, 0.25))

JPEG = {"Content-Type": "image/jpeg"}


def _settings(catdog: Path, imagenet: Path, **more: object) -> Settings:
    return Settings(models=f"catdog={catdog}, imagenet={imagenet}", max_batch_size=2, **more)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def own_prep_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cat/dog AlexNet (random weights) trained, says its metadata, with its own resize, mean and std."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("own-prep") / "own-prep.safetensors"
    return save_checkpoint(path, AlexNet(2), ModelMeta("own-prep", "alexnet", ("cat", "dog"), OWN_PREP), int8=True)


def _wait(client: TestClient, path: str) -> None:
    deadline = time.monotonic() + 60
    while client.get(path).status_code != 200:
        assert time.monotonic() < deadline, f"{path} never answered 200"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def client(own_prep_checkpoint: Path, imagenet_checkpoint: Path) -> Iterator[TestClient]:
    with TestClient(create_app(_settings(own_prep_checkpoint, imagenet_checkpoint, dtype="fp32"))) as c:
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
    assert all(p["label"] == IMAGENET_LABELS[p["index"]] for p in imagenet["predictions"])
    assert imagenet["label"] == imagenet["predictions"][0]["label"]
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


@pytest.mark.slow
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


def _served(client: TestClient, model: str, image: bytes) -> torch.Tensor:
    response = client.post(f"/predict?model={model}&top_k=1000", content=image, headers=JPEG)
    assert response.status_code == 200, response.text
    found = {p["index"]: p["probability"] for p in response.json()["predictions"]}
    return torch.tensor([found[i] for i in range(len(found))])


def test_each_model_uses_its_own_preprocessing_and_network(
    client: TestClient, own_prep_checkpoint: Path, imagenet_checkpoint: Path
) -> None:
    image = make_image(5, size=(400, 260))
    models = {"catdog": load_checkpoint(own_prep_checkpoint), "imagenet": load_checkpoint(imagenet_checkpoint)}
    preps = {name: checkpoint.meta.preprocessing for name, checkpoint in models.items()}
    assert preps["catdog"] == OWN_PREP and preps["catdog"] != preps["imagenet"]
    for name, checkpoint in models.items():
        other = preps["imagenet" if name == "catdog" else "catdog"]
        expected = reference_probabilities(checkpoint, load_eval_tensor(image, preps[name])[None])[0]
        mixed_up = reference_probabilities(checkpoint, load_eval_tensor(image, other)[None])[0]  # the other's resize
        tolerance = 2e-5 * expected.max().item()
        assert (mixed_up - expected).abs().max().item() > 10 * tolerance, "the check could not tell them apart"
        assert (_served(client, name, image) - expected).abs().max().item() <= tolerance, name


def _gate(service) -> tuple[threading.Event, threading.Event]:  # type: ignore[no-untyped-def]
    """Make ``service``'s model wait at the start of each batch until ``release`` is set."""
    entered, release = threading.Event(), threading.Event()
    run = service.batcher._run_batch

    def gated(items):  # type: ignore[no-untyped-def]
        entered.set()
        release.wait(60)
        return run(items)

    service.batcher._run_batch = gated
    return entered, release


@pytest.mark.slow
def test_one_models_stuck_batch_and_full_queue_leave_the_other_alone(
    random_checkpoint: Path, own_prep_checkpoint: Path
) -> None:
    settings = Settings(  # type: ignore[call-arg]
        models=f"slow={random_checkpoint},other={own_prep_checkpoint}", max_batch_size=1, max_queue=2, dtype="fp32"
    )
    with TestClient(create_app(settings)) as client:
        _wait(client, "/readyz")
        entered, release = _gate(client.app.state.registry.get("slow"))  # type: ignore[attr-defined]

        def post(model: str, seed: int):  # type: ignore[no-untyped-def]
            return client.post(f"/predict?model={model}", content=make_image(seed), headers=JPEG)

        batcher = client.app.state.registry.get("slow").batcher  # type: ignore[attr-defined]
        with ThreadPoolExecutor(8) as pool:
            taken = [pool.submit(post, "slow", 0)]
            assert entered.wait(30), "the slow model never started its batch"
            refused = None
            for seed in range(1, 8):  # fill the slow model up until it refuses
                attempt = pool.submit(post, "slow", seed)
                deadline = time.monotonic() + 60
                while not attempt.done() and batcher.queue_depth < len(taken):  # answered, or queued
                    assert time.monotonic() < deadline, "the request was neither queued nor answered"
                    time.sleep(0.01)
                if not attempt.done():
                    taken.append(attempt)
                    continue
                refused = attempt.result()
                break
            assert refused is not None and refused.status_code == 429, "the slow model never said it was full"
            # The other model has its own queue, batcher and model thread: it answers while the slow one is stuck.
            other = pool.submit(post, "other", 9).result(timeout=60)
            assert other.status_code == 200 and other.json()["model"] == "other"
            assert other.headers["x-batch-size"] == "1"
            assert not release.is_set() and not taken[0].done()
            release.set()
            assert [future.result(timeout=60).status_code for future in taken] == [200] * len(taken)
