"""Several workers on one port (``ALEXNET_WORKERS``): real ``python -m app`` processes on 127.0.0.1.

Each server here starts two workers one after the other (``app.workers``), each warming its own
model: the smallest settings (batch size 2, eager) keep that to seconds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.config import Settings
from app.workers import worker_settings
from tests import rawhttp
from tests.conftest import RunningServer, free_port, json_lines, make_image

JPEG = {"Content-Type": "image/jpeg"}
TWO_WORKERS = {
    "ALEXNET_WORKERS": "2",
    "ALEXNET_MAX_BATCH_SIZE": "2",
    "ALEXNET_COMPILE": "false",
    "ALEXNET_LOG_FORMAT": "json",
    "ALEXNET_MAX_QUEUE": "128",  # bursts of 64 below count answers, not refusals (sizing: test_overload_head)
}


def start_two_workers(checkpoint: Path) -> tuple[RunningServer, Counter[int]]:
    """The server, and the /readyz statuses it gave from when worker 0 was ready until worker 1 was."""
    server = RunningServer(TWO_WORKERS | {"ALEXNET_CHECKPOINT": str(checkpoint)}, wait_ready=False)
    server.wait_for("worker 1 started")  # once worker 0 is ready
    probes: Counter[int] = Counter()
    while "all 2 workers ready" not in server.output():
        assert server.process.poll() is None, server.output()
        probes[httpx.get(server.url + "/readyz", timeout=10).status_code] += 1  # a new connection each
    return server, probes


def worker_pids(server: RunningServer) -> dict[int, int]:
    """Worker index → pid, from the parent's log."""
    started = [r for r in json_lines(server.output()) if r["logger"] == "app.workers" and r["message"].endswith(")")]
    return {int(r["message"].split()[1]): r["pid"] for r in started if "started (pid" in r["message"]}


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(url + "/metrics", timeout=10).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture(scope="module")
def started(random_checkpoint: Path) -> Iterator[tuple[RunningServer, Counter[int]]]:
    """Shared by the tests below in file order; the last one stops it with SIGTERM."""
    server, probes = start_two_workers(random_checkpoint)
    yield server, probes
    server.stop()


@pytest.fixture
def two_workers(started: tuple[RunningServer, Counter[int]]) -> RunningServer:
    return started[0]


def test_a_worker_warming_up_takes_no_connection(started: tuple[RunningServer, Counter[int]]) -> None:
    """Once the server says ready, a probe never reaches the worker still warming up: it is not listening yet."""
    assert set(started[1]) == {200}, started[1]


def test_both_workers_answer_and_every_scrape_counts_them_all(two_workers: RunningServer) -> None:
    server, sent = two_workers, 0

    def both_answered() -> bool:
        nonlocal sent
        with ThreadPoolExecutor(8) as pool:  # a new connection per request: the kernel picks the worker
            answers = list(pool.map(lambda seed: httpx.post(server.url + "/predict", content=make_image(seed),
                                                            headers=JPEG, timeout=60), range(8)))  # fmt: skip
        assert [answer.status_code for answer in answers] == [200] * 8
        sent += 8
        access = [r for r in json_lines(server.output()) if r["logger"] == "app.access" and r["route"] == "/predict"]
        return {record["worker"] for record in access} == {0, 1}

    rawhttp.wait_for(both_answered, timeout=120, what="both workers answering /predict")

    pids = worker_pids(server)
    assert sorted(pids) == [0, 1] and len(set(pids.values())) == 2 and server.process.pid not in pids.values()
    (starting,) = [r for r in json_lines(server.output()) if r["message"].startswith("starting 2 workers")]
    assert starting["torch_threads"] == max(1, len(os.sched_getaffinity(0)) // 2), "the cores shared out"

    model = "random-catdog"
    requests = (
        "alexnet_http_requests_total",
        frozenset({"method": "POST", "route": "/predict", "status": "200"}.items()),
    )
    rawhttp.wait_for(lambda: scrape(server.url).get(requests) == sent, timeout=15, what=f"{sent} requests counted")
    for _ in range(6):  # a new connection each: whichever worker answers, the sums are the server's
        samples = scrape(server.url)
        assert samples[requests] == sent
        assert samples[("alexnet_batch_size_sum", frozenset({"model": model}.items()))] == sent
        assert samples[("alexnet_queue_wait_seconds_count", frozenset({"model": model}.items()))] == sent
        ready = {
            dict(labels)["pid"]: value for (name, labels), value in samples.items() if name == "alexnet_model_ready"
        }
        assert ready == {str(pid): 1.0 for pid in pids.values()}, "one readiness sample per worker"


def test_sigterm_under_load_answers_every_request_in_every_worker(two_workers: RunningServer) -> None:
    server = two_workers
    image = make_image(3)
    socks = []

    def send(count: int) -> None:
        for _ in range(count):
            sock = rawhttp.connect(server.port)
            sock.sendall(rawhttp.predict_request(image))
            socks.append(sock)

    answered = rawhttp.metric(server.url, "alexnet_http_requests_total", route="/predict", status="200")
    send(48)
    rawhttp.wait_for(
        lambda: rawhttp.metric(server.url, "alexnet_http_requests_total", route="/predict", status="200") > answered,
        what="the server answering the load",
    )
    send(16)  # the last ones sent just before the signal
    server.process.send_signal(signal.SIGTERM)
    statuses: Counter[int | None] = Counter()
    for sock in socks:
        answer = rawhttp.read_answer(sock)
        statuses[answer.status if answer else None] += 1
        sock.close()
    assert statuses[None] == 0, f"requests without an answer: {statuses}"
    assert set(statuses) <= {200, 503} and statuses[200] > 0, statuses
    assert server.process.wait(timeout=60) == 0
    output = json_lines(server.output())
    assert {r.get("worker") for r in output if r["message"] == "Application shutdown complete."} == {0, 1}
    assert not [r for r in output if r["level"] in ("ERROR", "CRITICAL") or "exception" in r]


def test_a_worker_that_dies_stops_the_server_with_an_error(random_checkpoint: Path) -> None:
    server, _ = start_two_workers(random_checkpoint)
    try:
        pid = worker_pids(server)[1]
        os.kill(pid, signal.SIGKILL)
        assert server.process.wait(timeout=60) == 1
    finally:
        server.stop()
    output = json_lines(server.output())
    errors = [r["message"] for r in output if r["level"] == "ERROR"]
    assert errors == [f"worker 1 (pid {pid}) died while serving (signal SIGKILL); stopping the server"]
    assert [r.get("worker") for r in output if r["message"] == "Application shutdown complete."] == [0], (
        "the other worker drained"
    )


def run_app(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    full_env = os.environ | {"ALEXNET_PORT": str(free_port())} | TWO_WORKERS | env
    return subprocess.run(
        [sys.executable, "-m", "app", *args], env=full_env, capture_output=True, text=True, timeout=180, check=False
    )


def test_a_bad_checkpoint_with_two_workers_exits_3_with_one_message(tmp_path: Path) -> None:
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"PK\x03\x04 this is not a real zip")
    result = run_app({"ALEXNET_CHECKPOINT": str(bad)})
    assert result.returncode == 3, result.stderr
    assert result.stdout == "" and "Traceback" not in result.stderr
    output = json_lines(result.stderr)
    errors = [r["message"] for r in output if r["level"] == "ERROR"]
    assert len(errors) == 2 and errors[1] == "Application startup failed. Exiting.", errors
    assert errors[0].startswith(f"cannot load checkpoint '{bad}': truncated or corrupt file"), "said once"
    assert [r["worker"] for r in output if r.get("worker") is not None and r["level"] == "ERROR"] == [0, 0]


def test_workers_must_be_at_least_one() -> None:
    result = run_app({}, "--workers", "0")
    assert result.returncode == 2
    assert (
        result.stderr
        == "alexnet-serve: ALEXNET_WORKERS (--workers): input should be greater than or equal to 1 (got 0)\n"
    )


@pytest.mark.parametrize(
    ("workers", "torch_threads", "cores", "each"), [(2, 0, 2, 1), (3, 0, 2, 1), (4, 0, 16, 4), (2, 3, 2, 3)]
)
def test_each_worker_gets_its_share_of_the_cores(workers: int, torch_threads: int, cores: int, each: int) -> None:
    settings = Settings(workers=workers, torch_threads=torch_threads)  # type: ignore[call-arg]
    assert worker_settings(settings, cores).torch_threads == each
