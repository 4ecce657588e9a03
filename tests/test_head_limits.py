"""The request head's limits (size, count, Host, transfer codings) against a real server: each
refusal is JSON, closes the connection, and is logged and counted like any other request."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import rawhttp
from tests.conftest import RunningServer, json_lines

HEAD_LIMIT = 64 * 1024  # ALEXNET_MAX_HEADER_BYTES's default


@pytest.fixture(scope="module")
def server(random_checkpoint: Path) -> Iterator[RunningServer]:
    running = RunningServer({"ALEXNET_CHECKPOINT": str(random_checkpoint), "ALEXNET_LOG_FORMAT": "json"})
    yield running
    running.stop()


def _send_while_reading(port: int, head_start: bytes, total: int) -> tuple[rawhttp.Answer | None, int]:
    """Send ``head_start`` then filler header bytes up to ``total`` while reading the answer; returns
    the answer and how many bytes had been sent when it came (the sender stops then)."""
    sock = rawhttp.connect(port)
    sent = 0
    answered = threading.Event()

    def send() -> None:
        nonlocal sent
        chunk = b"a" * 65536
        try:
            sock.sendall(head_start)
            sent = len(head_start)
            while sent < total and not answered.is_set():
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:  # the server closed once it had answered
            pass

    sender = threading.Thread(target=send)
    sender.start()
    answer = rawhttp.read_answer(sock)
    answered.set()
    sender.join(30)
    sock.close()
    return answer, sent


def _refused_with(answer: rawhttp.Answer | None, status: int, code: str) -> None:
    assert answer is not None, "the server closed the connection without an answer"
    assert answer.status == status, answer
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["connection"] == "close"
    assert json.loads(answer.body)["error"]["code"] == code


def test_a_huge_header_gets_431_within_the_limit_and_memory_stays_flat(server: RunningServer) -> None:
    rss_before = rawhttp.rss_bytes(server.process.pid)
    answer, sent = _send_while_reading(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ", 60 * 1024 * 1024)
    _refused_with(answer, 431, "headers_too_large")
    assert sent < 30 * 1024 * 1024, "answered long before the 60 MB head was sent"
    assert rawhttp.rss_bytes(server.process.pid) - rss_before < 16 * 1024 * 1024
    assert httpx.get(server.url + "/healthz").status_code == 200


def test_a_head_just_over_the_limit_in_one_piece_gets_431(server: RunningServer) -> None:
    with rawhttp.connect(server.port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * HEAD_LIMIT + b"\r\n\r\n")
        _refused_with(rawhttp.read_answer(sock), 431, "headers_too_large")
        assert rawhttp.closed_by_peer(sock)


def test_a_head_under_the_limit_is_served(server: RunningServer) -> None:
    big = "a" * (HEAD_LIMIT - 1024)
    assert httpx.get(server.url + "/healthz", headers={"X-Big": big}).status_code == 200


def test_too_many_headers_get_431(server: RunningServer) -> None:
    headers = b"".join(b"X-%d: 1\r\n" % index for index in range(101))
    with rawhttp.connect(server.port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
        _refused_with(rawhttp.read_answer(sock), 431, "headers_too_large")
    fifty = {f"X-{index}": "1" for index in range(50)}
    assert httpx.get(server.url + "/healthz", headers=fifty).status_code == 200


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /healthz HTTP/1.1\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"POST /predict HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
        (b"POST /predict HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: br\r\n\r\n", 400),
    ],
    ids=["http11-without-host", "two-hosts", "gzip-chunked", "chunked-not-last"],
)
def test_rfc9112_framing_rules(server: RunningServer, head: bytes, status: int) -> None:
    with rawhttp.connect(server.port) as sock:
        sock.sendall(head)
        answer = rawhttp.read_answer(sock)
        _refused_with(answer, status, "bad_request" if status == 400 else "not_implemented")


def test_http10_without_host_is_served(server: RunningServer) -> None:
    with rawhttp.connect(server.port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        answer = rawhttp.read_answer(sock)
    assert answer is not None and answer.status == 200


def test_a_refused_head_after_a_served_request_answers_both_in_order(server: RunningServer) -> None:
    with rawhttp.connect(server.port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        first = rawhttp.read_answer(sock)
        assert first is not None and first.status == 200
        _refused_with(rawhttp.read_answer(sock), 400, "bad_request")


def test_the_protocols_refusals_are_logged_and_counted(server: RunningServer) -> None:
    before = rawhttp.metric(server.url, "alexnet_http_requests_total", route="/predict", status="501")
    with rawhttp.connect(server.port) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
        _refused_with(rawhttp.read_answer(sock), 501, "not_implemented")
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"FOO /predict HTTP/1.1\r\nHost: x\r\n\r\n")
        _refused_with(rawhttp.read_answer(sock), 501, "not_implemented")
    rawhttp.wait_for(
        lambda: rawhttp.metric(server.url, "alexnet_http_requests_total", route="/predict", status="501") == before + 1,
        what="the refused POST counted",
    )
    assert rawhttp.metric(server.url, "alexnet_http_requests_total", route="unmatched", status="501") >= 1
    access = [line for line in json_lines(server.output()) if line.get("logger") == "app.access"]
    refused = [line for line in access if line["status"] == 501]
    assert {(line["method"], line["route"], line["error"]) for line in refused} >= {
        ("POST", "/predict", "not_implemented"),
        ("-", "unmatched", "not_implemented"),
    }


def test_the_header_limit_is_a_setting(random_checkpoint: Path) -> None:
    running = RunningServer({"ALEXNET_CHECKPOINT": str(random_checkpoint), "ALEXNET_MAX_HEADER_BYTES": "8192"})
    try:
        assert httpx.get(running.url + "/healthz", headers={"X-Big": "a" * 4096}).status_code == 200
        with rawhttp.connect(running.port) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 16384 + b"\r\n\r\n")
            _refused_with(rawhttp.read_answer(sock), 431, "headers_too_large")
    finally:
        running.stop()
