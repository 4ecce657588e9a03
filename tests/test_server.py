"""A real ``python -m app`` process on 127.0.0.1, driven over real HTTP."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import torch

from model.checkpoint import load_checkpoint
from model.inference import inference_module
from model.presets import load_eval_tensor
from tests import rawhttp
from tests.conftest import RunningServer, make_image


def _post_all_at_once(port: int, bodies: list[bytes]) -> list[rawhttp.Answer]:
    """Every request sent whole but for its last byte, then all last bytes together, so that the
    server reads them in one go whatever the machine's speed (clients that merely run concurrently
    may each be answered before the next one is sent)."""
    requests = [rawhttp.predict_request(body, path="/predict?top_k=2") for body in bodies]
    sockets = [rawhttp.connect(port, timeout=60) for _ in bodies]
    try:
        for sock, request in zip(sockets, requests, strict=True):
            sock.sendall(request[:-1])
        for sock, request in zip(sockets, requests, strict=True):
            sock.sendall(request[-1:])
        answers = [rawhttp.read_answer(sock) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
    assert None not in answers, "a connection was closed without an answer"
    return [answer for answer in answers if answer is not None]


def test_concurrent_clients_are_batched_and_exact(fp32_server: RunningServer, random_checkpoint: Path) -> None:
    bodies = [make_image(seed) for seed in range(40)]
    responses = _post_all_at_once(fp32_server.port, bodies)
    assert [r.status for r in responses] == [200] * len(bodies)
    assert max(int(r.headers["x-batch-size"]) for r in responses) > 1

    checkpoint = load_checkpoint(random_checkpoint)
    reference = inference_module(checkpoint, torch.device("cpu"), torch.float32, channels_last=False)
    with torch.inference_mode():
        for body, response in zip(bodies, responses, strict=True):
            alone = reference(load_eval_tensor(body, checkpoint.meta.preprocessing)[None]).softmax(1)[0]
            served = {p["index"]: p["probability"] for p in json.loads(response.body)["predictions"]}
            assert max(abs(served[i] - alone[i].item()) for i in range(2)) < 1e-4


def test_a_lone_request_does_not_wait_out_the_batch_window(start_server, random_checkpoint: Path) -> None:  # type: ignore[no-untyped-def]
    server = start_server({"ALEXNET_CHECKPOINT": str(random_checkpoint), "ALEXNET_MAX_DELAY_MS": "10000"})
    response = httpx.post(
        server.url + "/predict", content=make_image(1), headers={"content-type": "image/jpeg"}, timeout=60
    )
    assert response.status_code == 200
    stages = dict(re.findall(r"(\w+);dur=([\d.]+)", response.headers["server-timing"]))
    assert float(stages["queue"]) < 10_000, "nothing else was being decoded, so the 10 s window must not apply"
    several = httpx.post(
        server.url + "/predict", files=[("file", (f"{i}.jpg", make_image(i), "image/jpeg")) for i in range(6)]
    )
    assert several.headers["x-batch-size"] == ",".join(["6"] * 6)  # decoded together, batched together


def test_request_id_and_early_413_over_real_http(fp32_server: RunningServer) -> None:
    response = httpx.post(
        fp32_server.url + "/predict",
        content=make_image(1),
        headers={"Content-Type": "image/jpeg", "X-Request-ID": "r-1"},
    )
    assert response.status_code == 200 and response.headers["x-request-id"] == "r-1"
    huge = httpx.post(
        fp32_server.url + "/predict", content=b"\0" * (21 * 1024 * 1024), headers={"Content-Type": "image/jpeg"}
    )
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "payload_too_large"
    assert httpx.get(fp32_server.url + "/healthz").status_code == 200
