"""A real ``python -m app`` process on 127.0.0.1, driven over real HTTP."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import pytest
import torch

from model.checkpoint import load_checkpoint
from model.inference import inference_module
from model.presets import load_eval_tensor
from tests.conftest import RunningServer, make_image


async def _post_all(url: str, bodies: list[bytes]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=len(bodies))) as client:
        return await asyncio.gather(
            *(
                client.post(url + "/predict?top_k=2", files={"file": (f"{i}.jpg", body, "image/jpeg")})
                for i, body in enumerate(bodies)
            )
        )


def test_concurrent_clients_are_batched_and_exact(fp32_server: RunningServer, random_checkpoint: Path) -> None:
    bodies = [make_image(seed) for seed in range(40)]
    responses = asyncio.run(_post_all(fp32_server.url, bodies))
    assert [r.status_code for r in responses] == [200] * len(bodies)
    assert max(int(r.headers["x-batch-size"]) for r in responses) > 1

    checkpoint = load_checkpoint(random_checkpoint)
    reference = inference_module(checkpoint, torch.device("cpu"), torch.float32, channels_last=False)
    with torch.inference_mode():
        for body, response in zip(bodies, responses, strict=True):
            alone = reference(load_eval_tensor(body, checkpoint.meta.preprocessing)[None]).softmax(1)[0]
            served = {p["index"]: p["probability"] for p in response.json()["predictions"]}
            assert max(abs(served[i] - alone[i].item()) for i in range(2)) < 1e-4


def test_a_lone_request_does_not_wait_out_the_batch_window(start_server, random_checkpoint: Path) -> None:  # type: ignore[no-untyped-def]
    server = start_server({"ALEXNET_CHECKPOINT": str(random_checkpoint), "ALEXNET_MAX_DELAY_MS": "10000"})
    started = time.monotonic()
    response = httpx.post(server.url + "/predict", content=make_image(1), headers={"content-type": "image/jpeg"})
    assert response.status_code == 200
    assert time.monotonic() - started < 8, "nothing else was being decoded, so the 10 s window must not apply"
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


def test_sigterm_drains_in_flight_requests(start_server, random_checkpoint: Path) -> None:  # type: ignore[no-untyped-def]
    server = start_server(
        {"ALEXNET_CHECKPOINT": str(random_checkpoint), "ALEXNET_MAX_DELAY_MS": "300", "ALEXNET_MAX_BATCH_SIZE": "8"}
    )

    async def scenario() -> list[httpx.Response]:
        pending = asyncio.ensure_future(_post_all(server.url, [make_image(seed) for seed in range(20)]))
        await asyncio.sleep(0.15)  # the requests are in the server, inside a batching window
        server.process.send_signal(signal.SIGTERM)
        return await pending

    responses = asyncio.run(scenario())
    assert [r.status_code for r in responses] == [200] * 20
    # uvicorn re-raises SIGTERM after a clean shutdown, so the exit status says so.
    assert server.process.wait(timeout=60) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in server.output()


def test_bad_checkpoint_stops_start_up_with_a_clear_message(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"PK\x03\x04 this is not a real zip")
    server = start_server({"ALEXNET_CHECKPOINT": str(bad)}, wait_ready=False)
    assert server.process.wait(timeout=60) != 0
    assert "broken.pth" in server.output() and "truncated or corrupt" in server.output()


def test_missing_checkpoint_is_a_settings_error(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = start_server({"ALEXNET_CHECKPOINT": str(tmp_path / "nope.safetensors")}, wait_ready=False)
    assert server.process.wait(timeout=60) == 2
    assert "nope.safetensors" in server.output() and "does not exist" in server.output()


@pytest.mark.parametrize("flag", ["--help"])
def test_console_script_help(flag: str) -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "app", flag], capture_output=True, text=True, check=True).stdout
    for option in ("--host", "--port", "--checkpoint", "--device"):
        assert option in out


def test_readiness_flips_after_warm_up(start_server, random_checkpoint: Path) -> None:  # type: ignore[no-untyped-def]
    server = start_server(
        {"ALEXNET_CHECKPOINT": str(random_checkpoint), "ALEXNET_MAX_BATCH_SIZE": "64"}, wait_ready=False
    )
    server.wait("/healthz")
    seen = set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = httpx.get(server.url + "/readyz").status_code
        seen.add(status)
        if status == 200:
            break
        time.sleep(0.01)
    assert 200 in seen
