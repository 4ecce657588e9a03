"""API keys (``ALEXNET_API_KEYS``) and CORS (``ALEXNET_CORS_ORIGINS``)."""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.config import Settings
from app.main import create_app
from tests.conftest import make_image, ready_in_process

KEYS = "alpha-key-1,beta-key-2"
ORIGIN = "https://app.example"
IMAGE = make_image(4)
V2_BODY = json.dumps(
    {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(IMAGE).decode()]}]}
).encode()


@pytest.fixture(scope="module")
def client(random_checkpoint: Path) -> Iterator[TestClient]:
    settings = Settings(models=f"catdog={random_checkpoint}", dtype="fp32", api_keys=KEYS, cors_origins=ORIGIN)
    with TestClient(create_app(settings)) as test_client:
        yield ready_in_process(test_client, 60)


# (method, path, body headers, body): every route that needs a key when keys are set
PROTECTED = [
    ("GET", "/models", {}, None),
    ("GET", "/metrics", {}, None),
    ("POST", "/predict", {"Content-Type": "image/jpeg"}, IMAGE),
    ("GET", "/v2", {}, None),
    ("GET", "/v2/models/catdog", {}, None),
    ("GET", "/v2/models/catdog/versions/1", {}, None),
    ("POST", "/v2/models/catdog/infer", {"Content-Type": "application/json"}, V2_BODY),
    ("POST", "/v2/models/catdog/versions/1/infer", {"Content-Type": "application/json"}, V2_BODY),
]
OPEN = [
    "/healthz",
    "/readyz",
    "/v2/health/live",
    "/v2/health/ready",
    "/v2/models/catdog/ready",
    "/v2/models/catdog/versions/1/ready",
    "/docs",
    "/redoc",
    "/openapi.json",
    "/",
]


@pytest.mark.parametrize(("method", "path", "headers", "body"), PROTECTED, ids=[f"{m} {p}" for m, p, *_ in PROTECTED])
def test_protected_routes_need_a_valid_key(
    client: TestClient, method: str, path: str, headers: dict[str, str], body: bytes | None
) -> None:
    def call(**auth: str) -> httpx.Response:
        return client.request(method, path, content=body, headers=headers | auth)

    missing = call()
    assert missing.status_code == 401, missing.text
    assert missing.headers["www-authenticate"].startswith("Bearer")
    wrong = call(**{"X-API-Key": "alpha-key-2"})
    assert wrong.status_code == 401 and 'error="invalid_token"' in wrong.headers["www-authenticate"]
    if path.startswith("/v2"):
        assert "API key" in missing.json()["error"]
    else:
        assert missing.json()["error"]["code"] == wrong.json()["error"]["code"] == "unauthorized"
    assert call(Authorization="Bearer beta-key-2").status_code == 200
    assert call(**{"X-API-Key": "alpha-key-1"}).status_code == 200


@pytest.mark.parametrize("path", OPEN)
def test_probes_docs_and_the_page_stay_open(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 200


def test_docs_assets_stay_open(client: TestClient) -> None:
    html = client.get("/docs").text
    assert all(client.get(src).status_code == 200 for src in _same_origin_assets(html))


def _same_origin_assets(html: str) -> list[str]:
    import re

    return re.findall(r'(?:src|href)="(/[^"]+)"', html)


@pytest.mark.parametrize(
    "auth",
    [
        {"Authorization": "Bearer wrong", "X-API-Key": "alpha-key-1"},
        {"Authorization": "Basic YWxwaGEta2V5LTE6", "X-API-Key": "alpha-key-1"},
        {"Authorization": "alpha-key-1"},
        {"Authorization": "Bearer alpha-key-1", "X-API-Key": "wrong"},
        {"Authorization": "Bearer alpha"},
        {"Authorization": "Bearer alpha-key-1x"},
    ],
)
def test_every_key_a_request_carries_must_be_valid(client: TestClient, auth: dict[str, str]) -> None:
    assert client.get("/models", headers=auth).status_code == 401


def test_a_key_outside_ascii_is_refused_not_a_crash(client: TestClient) -> None:
    for value in ("Bearer alpha-key-1é".encode("latin-1"), "Bearer ключ".encode()):
        response = client.get("/models", headers=[(b"Authorization", value)])
        assert response.status_code == 401
    assert client.get("/models", headers=[(b"X-API-Key", b"\xff\xfe")]).status_code == 401


def test_refusals_are_counted_and_logged_without_the_key(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="app.access"):
        client.get("/v2/models/catdog", headers={"X-API-Key": "alpha-key-1-but-wrong"})
    (record,) = [r for r in caplog.records if r.name == "app.access" and r.fields["path"] == "/v2/models/catdog"]
    assert record.fields["status"] == 401 and record.fields["error"] == "unauthorized"
    assert "alpha-key" not in caplog.text
    metrics = client.get("/metrics", headers={"X-API-Key": "alpha-key-1"}).text
    assert 'alexnet_http_requests_total{method="GET",route="/v2/models/{model_name}",status="401"}' in metrics


def test_cors_for_the_configured_origin_only(client: TestClient) -> None:
    preflight = client.options(
        "/predict",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, x-api-key, content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    allowed = preflight.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed and "x-api-key" in allowed
    answer = client.post(
        "/predict", content=IMAGE, headers={"Origin": ORIGIN, "Content-Type": "image/jpeg", "X-API-Key": "alpha-key-1"}
    )
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == ORIGIN
    exposed = {name.strip().lower() for name in answer.headers["access-control-expose-headers"].split(",")}
    assert {"x-request-id", "x-batch-size", "server-timing"} <= exposed
    refused = client.get("/models", headers={"Origin": ORIGIN})
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == ORIGIN  # readable
    elsewhere = client.get("/healthz", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in elsewhere.headers
    bad_preflight = client.options(
        "/predict", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert bad_preflight.status_code == 400


def test_unset_means_open_and_no_cors(random_checkpoint: Path) -> None:
    with TestClient(create_app(Settings(checkpoint=random_checkpoint, dtype="fp32"))) as open_client:
        ready_in_process(open_client, 60)
        assert open_client.get("/models").status_code == 200
        answer = open_client.post("/predict", content=IMAGE, headers={"Content-Type": "image/jpeg", "Origin": ORIGIN})
        assert answer.status_code == 200 and "access-control-allow-origin" not in answer.headers


@pytest.mark.parametrize("keys", ["", " , ", "sekrit one", "tab\tsekrit", "ключ-sekrit", "ok-sekrit,bad sekrit"])
def test_unusable_keys_stop_start_up_without_showing_them(keys: str) -> None:
    with pytest.raises(ValidationError, match="api_keys"):
        Settings(api_keys=keys)
    started = subprocess.run(
        [sys.executable, "-m", "app"], env=os.environ | {"ALEXNET_API_KEYS": keys}, capture_output=True, timeout=120
    )
    error = started.stderr.decode()
    assert started.returncode == 2 and "ALEXNET_API_KEYS" in error
    assert "sekrit" not in error


def test_keys_do_not_show_in_the_settings_repr() -> None:
    settings = Settings(api_keys=KEYS)
    assert "alpha" not in repr(settings) and "alpha" not in str(settings.model_dump())
    assert settings.api_key_list == ["alpha-key-1", "beta-key-2"]


def test_real_server_refuses_without_a_key_and_never_logs_it(start_server, random_checkpoint: Path) -> None:  # type: ignore[no-untyped-def]
    secret = "Real-Secret-0123456789"
    server = start_server(
        {"ALEXNET_CHECKPOINT": str(random_checkpoint), "ALEXNET_API_KEYS": secret, "ALEXNET_LOG_LEVEL": "debug"}
    )
    refused = httpx.post(f"{server.url}/predict", content=IMAGE, headers={"Content-Type": "image/jpeg"})
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
    assert refused.headers["www-authenticate"].startswith("Bearer")
    wrong = httpx.get(f"{server.url}/models", headers={"Authorization": f"Bearer {secret[:-1]}"})
    assert wrong.status_code == 401
    answered = httpx.post(
        f"{server.url}/predict", content=IMAGE, headers={"Content-Type": "image/jpeg", "X-API-Key": secret}
    )
    assert answered.status_code == 200 and answered.json()["label"] in ("cat", "dog")
    assert httpx.get(f"{server.url}/models", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:  # the body never comes
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 99999\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 401 "), "the refusal waited for the body"
    barrier = httpx.get(f"{server.url}/v2/health/live", headers={"X-Request-ID": "auth-barrier"})
    assert barrier.status_code == 200
    deadline = time.monotonic() + 30
    while '"auth-barrier"' not in server.output():  # the access line follows the answer
        assert time.monotonic() < deadline, "no access line for the last request"
        time.sleep(0.05)
    output = server.output()
    assert '"status": 401' in output and secret not in output and secret[:-1] not in output
