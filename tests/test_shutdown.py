"""SIGTERM against a real server on 127.0.0.1: every request sent before the signal is answered."""

from __future__ import annotations

import io
import signal
import socket
import threading
from collections import Counter
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests import rawhttp
from tests.conftest import RunningServer, make_image

IMAGE = make_image(7)


def _answers(socks: list[socket.socket]) -> Counter[int | None]:
    """The status each socket got (None: closed without an answer)."""
    statuses: Counter[int | None] = Counter()
    for sock in socks:
        answer = rawhttp.read_answer(sock)
        statuses[answer.status if answer else None] += 1
        sock.close()
    return statuses


def _exits_cleanly(server: RunningServer) -> None:
    # uvicorn re-raises SIGTERM after a clean shutdown, so the exit status says so.
    assert server.process.wait(timeout=60) in (0, -signal.SIGTERM)
    output = server.output()
    assert "Application shutdown complete" in output
    assert "Traceback" not in output


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(3))
def test_sigterm_right_after_an_overload_burst_answers_every_request(
    start_server, random_checkpoint: Path, trial: int
) -> None:  # type: ignore[no-untyped-def]
    server = start_server({"ALEXNET_CHECKPOINT": str(random_checkpoint), "ALEXNET_MAX_QUEUE": "8"})
    burst = []
    for _ in range(64):  # an overload burst: most of it is refused with 429
        sock = rawhttp.connect(server.port)
        sock.sendall(rawhttp.predict_request(IMAGE))
        burst.append(sock)
    rawhttp.wait_for(
        lambda: rawhttp.metric(server.url, "alexnet_http_requests_total", route="/predict", status="429") > 0,
        what="the server refusing the burst",
    )
    late = []
    for _ in range(32):  # more requests, the last ones sent just before the signal
        sock = rawhttp.connect(server.port)
        sock.sendall(rawhttp.predict_request(IMAGE))
        late.append(sock)
    server.process.send_signal(signal.SIGTERM)
    statuses = _answers(burst) + _answers(late)
    assert statuses[None] == 0, f"requests without an answer: {statuses}"
    assert set(statuses) <= {200, 429, 503}, statuses
    assert statuses[200] > 0
    _exits_cleanly(server)


def test_readiness_and_new_requests_turn_503_at_once_while_admitted_work_finishes(
    start_server, random_checkpoint: Path
) -> None:  # type: ignore[no-untyped-def]
    server = start_server({"ALEXNET_CHECKPOINT": str(random_checkpoint)})
    buffer = io.BytesIO()
    Image.linear_gradient("L").resize((4000, 4000)).convert("RGB").save(buffer, format="PNG")
    files = [
        ("file", (f"{i}.png", buffer.getvalue(), "image/png")) for i in range(6)
    ]  # 96 M pixels: under the per-request budget
    answers: list[httpx.Response] = []
    post = httpx.Client(timeout=120).post
    slow = threading.Thread(target=lambda: answers.append(post(server.url + "/predict", files=files)))
    slow.start()  # seconds of decoding
    rawhttp.wait_for(lambda: rawhttp.metric(server.url, "alexnet_http_requests_in_flight") >= 2)
    server.process.send_signal(signal.SIGTERM)
    rawhttp.wait_for(lambda: httpx.get(server.url + "/readyz").status_code == 503, what="/readyz 503")
    refused = httpx.post(server.url + "/predict", content=IMAGE, headers={"Content-Type": "image/jpeg"})
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "not_ready"
    assert refused.headers["connection"] == "close" and refused.headers["retry-after"] == "5"
    slow.join(120)
    assert answers[0].status_code == 200 and len(answers[0].json()["results"]) == 6
    _exits_cleanly(server)
