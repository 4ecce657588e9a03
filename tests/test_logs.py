"""Structured logs: one access line per request, in JSON or text, never with image bytes."""

from __future__ import annotations

import json
import logging
import os
import pty
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.logs import JsonFormatter, TextFormatter
from app.main import create_app
from tests.conftest import free_port, make_image


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


LIBRARY_WARNINGS = """
import logging, warnings, torch
from app.logs import configure_logging
configure_logging("info", FORMAT)
logging.getLogger("torch._dynamo").warning("from torch's own logger")  # torch gives it its own handler
torch.tensor(torch.tensor(1.0))  # a UserWarning raised in torch's C++
warnings.warn("a plain Python warning")
"""


def test_torch_and_python_warnings_go_through_the_formatter() -> None:
    """torch's loggers (glog-style ``W1128 ...`` lines by default) and Python warnings print in our format."""
    script = LIBRARY_WARNINGS.replace("FORMAT", "'json'")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    records = [json.loads(line) for line in result.stderr.splitlines()]  # every line is JSON
    assert [(r["level"], r["logger"]) for r in records] == [
        ("WARNING", "torch._dynamo"),
        ("WARNING", "py.warnings"),
        ("WARNING", "py.warnings"),
    ]
    assert records[0]["message"] == "from torch's own logger"
    assert "UserWarning: To copy construct from a tensor" in records[1]["message"]
    assert records[2]["message"].endswith("UserWarning: a plain Python warning")


def _stderr_through_a_terminal(args: list[str], env: dict[str, str]) -> str:
    """Run ``args`` with stderr on a pseudo-terminal; everything it wrote there."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=terminal)
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO: the process closed its end
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(controller)
    process.wait(timeout=120)
    return b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")


def test_log_format_auto_is_text_on_a_terminal_and_json_otherwise(tmp_path: Path) -> None:
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    env = {k: v for k, v in os.environ.items() if k != "ALEXNET_LOG_FORMAT"}
    env |= {"ALEXNET_CHECKPOINT": str(bad), "ALEXNET_PORT": str(free_port())}
    args = [sys.executable, "-m", "app"]

    on_terminal = _stderr_through_a_terminal(args, env).splitlines()
    assert on_terminal and not [line for line in on_terminal if line.startswith("{")]
    assert any(re.search(r" ERROR app\.startup: cannot load checkpoint '.*broken\.pth'", line) for line in on_terminal)

    piped = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120, check=False)
    records = [json.loads(line) for line in piped.stderr.splitlines()]
    assert any(r["logger"] == "app.startup" and "broken.pth" in r["message"] for r in records)
