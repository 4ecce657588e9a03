"""Overload, fairness, vanishing and slow clients, against a real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import io
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests import rawhttp
from tests.conftest import RunningServer, make_image

MAX_QUEUE = 8
MAX_CONNECTIONS = 48


@pytest.fixture(scope="module")
def server(random_checkpoint: Path) -> Iterator[RunningServer]:
    running = RunningServer(
        {
            "ALEXNET_CHECKPOINT": str(random_checkpoint),
            "ALEXNET_MAX_QUEUE": str(MAX_QUEUE),
            "ALEXNET_MAX_BATCH_SIZE": "8",
            "ALEXNET_PREPROCESS_THREADS": "2",
            "ALEXNET_READ_TIMEOUT_S": "1",
            "ALEXNET_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
        }
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def big_png() -> bytes:
    """A 4000x4000 PNG of 57 KB: 16 M pixels, slow to decode (PNG has no reduced-scale decode)."""
    buffer = io.BytesIO()
    Image.linear_gradient("L").resize((4000, 4000)).convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def _access_lines(server: RunningServer) -> list[str]:
    return [line for line in server.output().splitlines() if '"app.access"' in line or "POST /predict" in line]


def test_overload_refuses_at_once_and_answers_everyone(server: RunningServer) -> None:
    rss_before = rawhttp.rss_bytes(server.process.pid)
    clients, rounds = 32, 4
    images = [make_image(seed) for seed in range(8)]
    statuses: Counter[int] = Counter()
    failures: list[str] = []

    async def one_client(client: httpx.AsyncClient, index: int) -> None:
        for round_ in range(rounds):
            body = images[(index + round_) % len(images)]
            try:
                response = await client.post(
                    server.url + "/predict", content=body, headers={"Content-Type": "image/jpeg"}
                )
            except httpx.HTTPError as exc:  # a request without an answer
                failures.append(repr(exc))
                continue
            statuses[response.status_code] += 1
            if response.status_code == 429:
                assert response.json()["error"]["code"] == "overloaded"
                assert response.headers["retry-after"] == "1"

    async def main() -> None:
        limits = httpx.Limits(max_connections=clients)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            await asyncio.gather(*(one_client(client, index) for index in range(clients)))

    asyncio.run(main())
    assert not failures, failures[:3]
    assert sum(statuses.values()) == clients * rounds
    assert statuses[429] > 0 and statuses[200] > 0, statuses
    assert set(statuses) <= {200, 429}, statuses
    assert rawhttp.metric(server.url, "alexnet_http_requests_total", route="/predict", status="500") == 0
    # Admitted work is bounded (MAX_QUEUE images), so memory is too: growth stays far below
    # what 128 decoded uploads held at once would take.
    assert rawhttp.rss_bytes(server.process.pid) - rss_before < 200 * 2**20


def test_one_request_of_large_images_does_not_starve_a_small_one(server: RunningServer, big_png: bytes) -> None:
    done: dict[str, float] = {}
    answers: dict[str, httpx.Response] = {}

    def send_big() -> None:
        files = [("file", (f"{i}.png", big_png, "image/png")) for i in range(6)]
        answers["big"] = httpx.post(server.url + "/predict", files=files, timeout=120)
        done["big"] = time.monotonic()

    big = threading.Thread(target=send_big)
    big.start()
    rawhttp.wait_for(
        lambda: rawhttp.metric(server.url, "alexnet_images_preparing") == 6, what="the big images being decoded"
    )
    small = httpx.post(server.url + "/predict", content=make_image(5), headers={"Content-Type": "image/jpeg"})
    done["small"] = time.monotonic()
    big_images_left = rawhttp.metric(server.url, "alexnet_images_preparing")
    big.join(120)
    assert small.status_code == 200 and answers["big"].status_code == 200
    # The small image was decoded between the big ones, not after them all: it was answered
    # while big ones still waited for their decode (a batch waits for the decodes running,
    # so two of them finish first), in a batch of its own.
    assert big_images_left >= 2
    assert small.headers["x-batch-size"] == "1"
    assert done["small"] < done["big"]


def test_over_the_limit_a_request_is_refused_before_its_body_is_read(server: RunningServer, big_png: bytes) -> None:
    answers: list[httpx.Response] = []
    files = [("file", (f"{i}.png", big_png, "image/png")) for i in range(6)]  # 96 M pixels: within the budget
    files += [("file", (f"{i}.jpg", make_image(i), "image/jpeg")) for i in range(MAX_QUEUE - 6)]
    big = threading.Thread(target=lambda: answers.append(httpx.post(server.url + "/predict", files=files, timeout=120)))
    big.start()
    rawhttp.wait_for(lambda: rawhttp.metric(server.url, "alexnet_images_admitted") == MAX_QUEUE)
    with rawhttp.connect(server.port) as sock:  # headers only: the body would take the read timeout
        sock.sendall(rawhttp.predict_request(b"", content_length=5_000_000))
        answer = rawhttp.read_answer(sock)
    assert answer is not None and answer.status == 429 and answer.headers["retry-after"] == "1"
    big.join(120)
    assert answers[0].status_code == 200


def test_a_request_over_the_pixel_budget_is_refused_before_decoding(server: RunningServer, big_png: bytes) -> None:
    files = [("file", (f"{i}.png", big_png, "image/png")) for i in range(7)]  # 7 x 16 M > 100 M
    response = httpx.post(server.url + "/predict", files=files, timeout=60)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "image_too_large"
    assert "in one request" in response.json()["error"]["message"]


def test_an_aborted_upload_is_a_499_not_a_server_error(server: RunningServer) -> None:
    before = rawhttp.metric(server.url, "alexnet_http_requests_total", route="/predict", status="499")
    with rawhttp.connect(server.port) as sock:
        sock.sendall(rawhttp.predict_request(make_image(1)[:2000], content_length=50_000))
        rawhttp.wait_for(lambda: rawhttp.metric(server.url, "alexnet_http_requests_in_flight") >= 2)
    rawhttp.wait_for(
        lambda: rawhttp.metric(server.url, "alexnet_http_requests_total", route="/predict", status="499") > before,
        what="the aborted upload counted as 499",
    )
    assert rawhttp.metric(server.url, "alexnet_http_requests_total", route="/predict", status="500") == 0
    output = server.output()
    assert "Traceback" not in output and "ClientDisconnect" not in output
    assert '"status": 499' in output


def test_work_for_a_client_that_left_is_dropped_before_decoding(server: RunningServer, big_png: bytes) -> None:
    batched_before = rawhttp.metric(server.url, "alexnet_batch_size_sum")
    gone_before = rawhttp.metric(server.url, "alexnet_http_requests_total", route="/predict", status="499")
    answers: list[httpx.Response] = []
    files = [("file", (f"{i}.png", big_png, "image/png")) for i in range(4)]
    big = threading.Thread(target=lambda: answers.append(httpx.post(server.url + "/predict", files=files, timeout=120)))
    big.start()  # keeps both decode threads busy for a while
    rawhttp.wait_for(lambda: rawhttp.metric(server.url, "alexnet_http_requests_in_flight") >= 2)
    with rawhttp.connect(server.port) as sock:  # a whole request, then the client leaves at once
        sock.sendall(rawhttp.predict_request(make_image(2)))
        rawhttp.wait_for(lambda: rawhttp.metric(server.url, "alexnet_http_requests_in_flight") >= 3)
    big.join(120)
    assert answers[0].status_code == 200
    rawhttp.wait_for(
        lambda: rawhttp.metric(server.url, "alexnet_http_requests_total", route="/predict", status="499") > gone_before
    )
    assert rawhttp.metric(server.url, "alexnet_batch_size_sum") - batched_before == 4, "the abandoned image ran"


def test_a_body_that_trickles_in_gets_408(server: RunningServer) -> None:
    with rawhttp.connect(server.port) as sock:
        sock.sendall(rawhttp.predict_request(b"\xff\xd8" + b"\0" * 8, content_length=1000))
        answer = rawhttp.read_answer(sock)
        assert answer is not None and answer.status == 408
        assert b'"request_timeout"' in answer.body and answer.headers["connection"] == "close"
        assert rawhttp.closed_by_peer(sock)


@pytest.mark.parametrize("sent", [b"", b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty"])
def test_headers_that_never_complete_get_408_and_close(server: RunningServer, sent: bytes) -> None:
    with rawhttp.connect(server.port) as sock:
        sock.sendall(sent)
        answer = rawhttp.read_answer(sock)
        assert answer is not None and answer.status == 408 and b'"request_timeout"' in answer.body
        assert rawhttp.closed_by_peer(sock)


def test_idle_keep_alive_connections_are_closed(server: RunningServer) -> None:
    with rawhttp.connect(server.port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = rawhttp.read_answer(sock)
        assert answer is not None and answer.status == 200
        assert rawhttp.closed_by_peer(sock)  # uvicorn's keep-alive timeout, a few seconds


def test_connections_over_the_cap_get_503_and_are_closed(server: RunningServer) -> None:
    held: list[socket.socket] = []
    try:
        for _ in range(MAX_CONNECTIONS):
            held.append(rawhttp.connect(server.port))
        with rawhttp.connect(server.port) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            answer = rawhttp.read_answer(sock)
            assert answer is not None and answer.status == 503
            assert b'"too_many_connections"' in answer.body and answer.headers["connection"] == "close"
    finally:
        for sock in held:
            sock.close()
    rawhttp.wait_for(lambda: httpx.get(server.url + "/healthz").status_code == 200, what="served again")


def test_the_deadline_covers_decoding_and_drops_the_work(start_server, random_checkpoint: Path, big_png: bytes) -> None:  # type: ignore[no-untyped-def]
    server = start_server({"ALEXNET_CHECKPOINT": str(random_checkpoint), "ALEXNET_REQUEST_TIMEOUT_S": "0.5"})
    files = [("file", (f"{i}.png", big_png, "image/png")) for i in range(6)]  # seconds of decoding on two threads
    response = httpx.post(server.url + "/predict", files=files, timeout=60)
    assert response.status_code == 504 and response.json()["error"]["code"] == "timeout"
    assert "not decoded within the 0.5 s deadline" in response.json()["error"]["message"]  # not after decoding
    rawhttp.wait_for(lambda: rawhttp.metric(server.url, "alexnet_images_preparing") == 0)
    assert rawhttp.metric(server.url, "alexnet_batch_size_count") == 0, "images past their deadline ran"
    assert (
        httpx.post(server.url + "/predict", content=make_image(1), headers={"Content-Type": "image/jpeg"}).status_code
        == 200
    )
