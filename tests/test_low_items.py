"""Small holes found by trying the server as an attacker and an operator would (issue 22)."""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from app.workers import METRICS_DIR_PREFIX, remove_stale_metrics_dirs
from model.checkpoint import CheckpointError, load_checkpoint, load_training_state
from tests import rawhttp
from tests.conftest import json_lines

KEY = "s3cret-key"
ORIGIN = "https://app.example.com"


@pytest.fixture(scope="module")
def client(random_checkpoint: Path) -> Iterator[TestClient]:
    settings = Settings(checkpoint=random_checkpoint, dtype="fp32", api_keys=KEY, cors_origins=ORIGIN)  # type: ignore[call-arg]
    with TestClient(create_app(settings)) as test_client:
        deadline = time.monotonic() + 120
        while test_client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "never became ready"
            time.sleep(0.02)
        yield test_client


@pytest.mark.parametrize(
    "headers",
    [
        [("X-API-Key", KEY), ("X-API-Key", "wrong")],
        [("Authorization", f"Bearer {KEY}"), ("Authorization", "Bearer wrong")],
        [("Authorization", f"Bearer {KEY}"), ("Authorization", "Basic eDp5")],
    ],
    ids=["x-api-key", "bearer", "bearer-then-basic"],
)
def test_a_repeated_key_header_is_refused_when_any_copy_is_wrong(
    client: TestClient, headers: list[tuple[str, str]]
) -> None:
    assert client.get("/models", headers=headers).status_code == 401
    assert client.get("/models", headers=headers[:1]).status_code == 200


@pytest.mark.parametrize("path", ["/predict/", "/models/", "/metrics/", "/v2/models/random-catdog/infer/"])
def test_a_trailing_slash_is_a_plain_404_without_a_location(client: TestClient, path: str) -> None:
    response = client.request(
        "POST" if "predict" in path or "infer" in path else "GET",
        path,
        headers={"Host": "evil.example"},
        follow_redirects=False,
    )
    assert response.status_code == 404
    assert "location" not in response.headers
    assert response.headers["content-type"] == "application/json"


def test_a_refused_cors_origin_gets_json(client: TestClient) -> None:
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    response = client.options("/predict", headers=preflight)
    assert response.status_code == 400
    assert response.json()["error"] == {"code": "cors_refused", "message": "Disallowed CORS origin"}
    allowed = client.options("/predict", headers=preflight | {"Origin": ORIGIN})
    assert allowed.status_code == 200


def test_a_utf8_request_id_is_logged_as_sent_and_echoed_byte_for_byte(start_server, random_checkpoint: Path) -> None:  # type: ignore[no-untyped-def]
    server = start_server({"ALEXNET_CHECKPOINT": str(random_checkpoint), "ALEXNET_LOG_FORMAT": "json"})
    raw = "réq-日本".encode()
    with rawhttp.connect(server.port) as sock:
        sock.sendall(b"GET /models HTTP/1.1\r\nHost: x\r\nX-Request-ID: " + raw + b"\r\n\r\n")
        answer = rawhttp.read_answer(sock)
    assert answer is not None and answer.status == 200
    assert answer.headers["x-request-id"].encode("latin-1") == raw

    def logged() -> list[str]:
        return [line["request_id"] for line in json_lines(server.output()) if line.get("route") == "/models"]

    rawhttp.wait_for(logged, what="the access line")
    assert logged() == ["réq-日本"]


def test_metrics_folders_of_killed_servers_are_removed_at_the_next_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app.workers")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / f"{METRICS_DIR_PREFIX}{gone.stdout.strip()}-abc"
    live = tmp_path / f"{METRICS_DIR_PREFIX}{os.getpid()}-def"
    other = tmp_path / "alexnet-metrics-notapid"
    for folder in (dead, live, other):
        folder.mkdir()
        (folder / "counter_1.db").write_bytes(b"x")
    assert remove_stale_metrics_dirs(tmp_path) == [dead]
    assert not dead.exists() and live.exists() and other.exists()
    assert "removed 1 metrics folders left by servers that were killed" in caplog.text


class _RunsCode:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ("true",))


def test_a_malicious_pickle_is_refused_without_torchs_advice_to_unpickle_it(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps(_RunsCode(), protocol=2))
    for load in (load_checkpoint, load_training_state):
        with pytest.raises(CheckpointError) as refused:
            load(path)
        message = str(refused.value)
        assert "GLOBAL posix.system" in message
        assert "weights_only" not in message and "Re-running" not in message
