"""Structured logs: one access line per request, in JSON or text, never with image bytes."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.logs import JsonFormatter, TextFormatter
from app.main import create_app
from tests.conftest import make_image


def _access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "app.access"]


def test_one_access_record_per_request(random_checkpoint: Path, caplog: pytest.LogCaptureFixture) -> None:
    image = make_image(4)
    with TestClient(create_app(Settings(checkpoint=random_checkpoint))) as client:  # type: ignore[call-arg]
        while client.get("/readyz").status_code != 200:
            time.sleep(0.02)
        caplog.clear()
        caplog.set_level(logging.INFO, logger="app.access")
        headers = {"Content-Type": "image/jpeg", "X-Request-ID": "req-42"}
        response = client.post("/predict", content=image, headers=headers)
        refused = client.post("/predict", content=b"garbage", headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 200 and refused.status_code == 422
    ok, bad = _access_records(caplog)
    fields = ok.fields  # type: ignore[attr-defined]
    assert fields["request_id"] == "req-42" and fields["route"] == "/predict" and fields["status"] == 200
    assert fields["model"] == "random-catdog" and fields["images"] == 1 and fields["batch_size"] == 1
    assert fields["bytes_in"] == len(image) and fields["bytes_out"] == len(response.content)
    assert fields["total_ms"] >= max(fields["queue_ms"], fields["preprocess_ms"], fields["inference_ms"]) > 0
    assert bad.fields["status"] == 422 and bad.fields["error"] == "invalid_image"  # type: ignore[attr-defined]
    assert bad.fields["request_id"] == refused.headers["x-request-id"]  # type: ignore[attr-defined]

    line = JsonFormatter().format(ok)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["logger"] == "app.access" and entry["message"] == "POST /predict 200" and entry["level"] == "INFO"
    assert entry.items() >= fields.items()
    assert len(line) < 1000, "no body in the log"


def test_probes_log_at_debug(random_checkpoint: Path, caplog: pytest.LogCaptureFixture) -> None:
    with TestClient(create_app(Settings(checkpoint=random_checkpoint))) as client:  # type: ignore[call-arg]
        caplog.set_level(logging.DEBUG, logger="app.access")
        client.get("/healthz")
        client.get("/metrics")
    assert [record.levelno for record in _access_records(caplog)] == [logging.DEBUG, logging.DEBUG]


def test_text_format_is_for_humans() -> None:
    record = logging.LogRecord("app.access", logging.INFO, __file__, 1, "GET /models 200", None, None)
    record.fields = {"request_id": "abc", "status": 200, "model": None}
    text = TextFormatter().format(record)
    assert text.endswith("INFO app.access: GET /models 200 request_id=abc status=200")
