"""HTTP behaviour over a real socket, against one uvicorn server in this process.

The server is built by ``create_app`` and served by uvicorn on 127.0.0.1 in a thread, so a
test can reach the running model: the 500 test gives the network a real failure (its forward
raises for one kind of batch, as a broken kernel would) and checks what the client and the
log see. Streamed bodies are sent by hand, chunk by chunk, as a client without a
Content-Length does.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
import uvicorn
from fastapi import FastAPI
from PIL import Image
from torch import nn

from app.config import Settings
from app.main import create_app
from tests.conftest import free_port, make_image

LIMIT = 256 * 1024  # the server's max_upload_bytes
SECRET = "kernel exploded at 0xdeadbeef"


class ThreadedServer:
    """uvicorn serving ``app`` on a free port of 127.0.0.1 from a background thread."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None, access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.ready():
            assert self.thread.is_alive(), "the server thread died while starting"
            assert time.monotonic() < deadline, "the server never became ready"
            time.sleep(0.05)
        return self

    def ready(self) -> bool:
        try:
            return httpx.get(self.url + "/readyz", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(60)


class FailsOnBlack(nn.Module):
    """The real network, except that a batch holding an all-black image raises, the way a
    broken kernel or an out-of-memory error does deep inside a forward pass."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        if bool((batch.flatten(1).amax(dim=1) == 0).any()):
            raise RuntimeError(SECRET)
        return self.network(batch)


def _png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buffer, format="PNG")
    return buffer.getvalue()


BLACK = _png((0, 0, 0))


@pytest.fixture(scope="module")
def server(random_checkpoint: Path) -> Iterator[ThreadedServer]:
    settings = Settings(checkpoint=random_checkpoint, dtype="fp32", max_upload_bytes=LIMIT)  # type: ignore[call-arg]
    with ThreadedServer(create_app(settings)) as running:
        engine = running.app.state.registry.default.engine
        engine._module = FailsOnBlack(engine._module)
        yield running


def test_an_internal_failure_is_a_500_json_error_without_details(
    server: ThreadedServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    headers = {"Content-Type": "image/png", "X-Request-ID": "boom-1"}
    response = httpx.post(server.url + "/predict", content=BLACK, headers=headers, timeout=60)
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "boom-1", "errors carry the request id too"
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error": {"code": "internal_error", "message": "internal server error"}}
    assert SECRET not in response.text
    logged = "\n".join(
        record.getMessage() + (logging.Formatter().formatException(record.exc_info) if record.exc_info else "")
        for record in caplog.records
    )
    assert "unhandled error on POST /predict" in logged and "Traceback" in logged and SECRET in logged

    v2 = {"inputs": [{"name": "images", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(BLACK).decode()]}]}
    infer = httpx.post(server.url + "/v2/models/random-catdog/infer", json=v2, timeout=60)
    assert infer.status_code == 500 and infer.json() == {"error": "internal server error"}

    # The failure stayed with its batch: the server, its batcher and the model still answer.
    fine = httpx.post(
        server.url + "/predict", content=make_image(1), headers={"Content-Type": "image/jpeg"}, timeout=60
    )
    assert fine.status_code == 200 and fine.json()["model"] == "random-catdog"
    assert httpx.get(server.url + "/readyz").status_code == 200
    scrape = httpx.get(server.url + "/metrics").text
    assert 'alexnet_http_requests_total{method="POST",route="/predict",status="500"} 1.0' in scrape


def _send_chunked(url: str, path: str, chunk: bytes, most: int) -> tuple[bytes, int]:
    """POST ``chunk`` repeatedly with ``Transfer-Encoding: chunked`` until the server answers
    (or ``most`` bytes went out); return everything the server sent until it closed, and the bytes sent."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\n"
        sock.sendall(head.encode())
        sent = 0
        sock.setblocking(False)
        while sent < most:
            try:
                if sock.recv(1, socket.MSG_PEEK):  # the server has answered: stop sending
                    break
            except BlockingIOError:
                pass
            try:
                sock.settimeout(30)
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                sent += len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            finally:
                sock.setblocking(False)
        sock.settimeout(30)
        received = b""
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            except TimeoutError:
                raise AssertionError(f"the server left the connection open after {received[:200]!r}") from None
            if not data:  # the server closed the connection
                break
            received += data
        return received, sent


def test_a_streamed_body_over_the_limit_is_cut_with_413_and_the_connection_closed(server: ThreadedServer) -> None:
    most = 64 * 1024 * 1024  # far more than the sockets' buffers hold: only an early answer stops us short
    received, sent = _send_chunked(server.url, "/predict", b"\xff" * 65536, most=most)
    assert sent < most, "the server read the whole body instead of cutting it at the limit"
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0] == "HTTP/1.1 413 Request Entity Too Large", lines[0]
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    assert headers["connection"] == "close" and headers["content-type"] == "application/json"
    length = int(headers["content-length"])
    error = json.loads(body[:length])["error"]
    assert error["code"] == "payload_too_large" and str(LIMIT) in error["message"]
    # Under the limit, the same streamed upload is an ordinary request.
    image = make_image(2)
    assert len(image) < LIMIT
    small = httpx.post(
        server.url + "/predict", content=iter([image[:1000], image[1000:]]), headers={"Content-Type": "image/jpeg"}
    )
    assert small.status_code == 200
