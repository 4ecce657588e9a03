"""Load generator for ``POST /predict``: real images, fixed concurrencies, bounded time.

    python -m bench.loadgen --url http://127.0.0.1:8000/predict --concurrency 1,8,32 --duration 15

It first waits for the server's ``/readyz`` (``--ready-timeout``; a server that never gets ready
stops the run with its last answer). At each concurrency it reports img/s (successful answers
completed in the measured window), p50/p90/p99 latency, the answers by status code, errors, the
mean batch size seen by an image (from ``X-Batch-Size``) and
the client's own CPU use: on a 2-core machine the client competes with the server, so the
share it took is part of the result. The client is ``wrk`` with ``bench/wrk_predict.lua``
(request bodies built once from pre-read files) when installed, else the asyncio client in
``bench.client``. Bodies are multipart ``file`` uploads (default) or raw ``image/jpeg``.
Writes JSON and a PNG plot to ``bench/out/``. Exits 1 when any request failed (a non-200 answer, a
refused connection, a timeout).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from bench import client, common
from bench.plots import plot_levels

WRK_SCRIPT = Path(__file__).with_name("wrk_predict.lua")
BODY_MODES = ("multipart", "raw")


@dataclass(frozen=True)
class LevelResult:
    """One concurrency level: throughput, latency (ms), errors, batching and the client's CPU."""

    concurrency: int
    client: str
    body: str
    seconds: float
    ok: int
    errors: dict[str, int]
    img_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    mean_batch: float | None
    client_cpu_s: float
    client_core_share: float
    client_machine_share: float
    statuses: dict[str, int] = field(default_factory=dict)  # answers in the window by HTTP status ("200": n)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def parse_batch_sizes(header: str | None) -> list[int]:
    """``X-Batch-Size`` → one batch size per image in the request (``"32, 31"`` → ``[32, 31]``)."""
    if not header:
        return []
    return [int(part) for part in header.split(",") if part.strip().isdigit()]


def mean_batch(headers: Sequence[str | None]) -> float | None:
    """Average batch size over images (each image counts once); None when no answer had the header."""
    sizes = [size for header in headers for size in parse_batch_sizes(header)]
    return sum(sizes) / len(sizes) if sizes else None


def cpu_shares(cpu_s: float, wall_s: float) -> tuple[float, float]:
    """(share of one core, share of the whole machine) for ``cpu_s`` CPU seconds over ``wall_s``."""
    if wall_s <= 0:
        return 0.0, 0.0
    core = cpu_s / wall_s
    return core, core / (os.cpu_count() or 1)


def summarize_samples(
    samples: Sequence[client.Sample],
    errors: Counter[str],
    window: tuple[float, float],
    *,
    concurrency: int,
    body: str,
    cpu: tuple[float, float],
) -> LevelResult:
    """Reduce the asyncio client's samples: only answers completed inside ``window`` count."""
    start, end = window
    measured = [sample for sample in samples if start <= sample.done <= end]
    ok = [sample for sample in measured if sample.status == 200]
    all_errors = Counter(errors)
    all_errors.update(f"status_{sample.status}" for sample in measured if sample.status != 200)
    statuses = Counter(str(sample.status) for sample in measured)
    latencies = [1000 * (sample.done - sample.sent) for sample in ok]
    core, machine = cpu_shares(*cpu)
    seconds = end - start
    return LevelResult(
        concurrency=concurrency,
        client="python",
        body=body,
        seconds=seconds,
        ok=len(ok),
        errors=dict(all_errors),
        img_s=len(ok) / seconds,
        p50_ms=percentile(latencies, 50),
        p90_ms=percentile(latencies, 90),
        p99_ms=percentile(latencies, 99),
        mean_ms=sum(latencies) / len(latencies) if latencies else math.nan,
        max_ms=max(latencies, default=math.nan),
        mean_batch=mean_batch([sample.batch_header for sample in ok]),
        client_cpu_s=cpu[0],
        client_core_share=core,
        client_machine_share=machine,
        statuses=dict(sorted(statuses.items())),
    )


def build_requests(url: str, blobs: Sequence[tuple[str, bytes]], body: str) -> list[bytes]:
    target = client.Target.parse(url)
    if body == "raw":
        return [client.raw_request(target, data) for _, data in blobs]
    return [client.multipart_request(target, data, name) for name, data in blobs]


def run_python_level(
    url: str, requests: list[bytes], concurrency: int, seconds: float, warm_up: float, timeout: float, body: str
) -> LevelResult:
    """One level with the asyncio client; its CPU share is measured over the whole run."""
    target = client.Target.parse(url)
    cpu_before, wall_before = time.process_time(), time.perf_counter()
    samples, errors = asyncio.run(client.drive(target, requests, concurrency, warm_up + seconds, timeout))
    cpu = (time.process_time() - cpu_before, time.perf_counter() - wall_before)
    window = (wall_before + warm_up, wall_before + warm_up + seconds)
    return summarize_samples(samples, errors, window, concurrency=concurrency, body=body, cpu=cpu)


def wrk_command(url: str, manifest: Path, concurrency: int, seconds: int, timeout: float, body: str) -> list[str]:
    return [
        "wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", f"--timeout={math.ceil(timeout)}s",
        "-s", str(WRK_SCRIPT), url, "--", body, str(manifest),
    ]  # fmt: skip


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_wrk_level(
    url: str, manifest: Path, concurrency: int, seconds: float, warm_up: float, timeout: float, body: str
) -> LevelResult:
    """One level with wrk (one thread): an unmeasured warm-up run, then the measured run."""
    whole = max(1, round(seconds))
    if warm_up > 0:
        subprocess.run(
            wrk_command(url, manifest, concurrency, max(1, round(warm_up)), timeout, body),
            capture_output=True,
            check=True,
        )
    cpu_before, wall_before = _children_cpu(), time.perf_counter()
    result = subprocess.run(
        wrk_command(url, manifest, concurrency, whole, timeout, body), capture_output=True, text=True, check=True
    )
    cpu = (_children_cpu() - cpu_before, time.perf_counter() - wall_before)
    return summarize_wrk(parse_wrk_output(result.stdout), concurrency=concurrency, body=body, cpu=cpu)


def parse_wrk_output(stdout: str) -> dict[str, Any]:
    for line in stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            return dict(json.loads(line.removeprefix("BENCH_JSON ")))
    raise RuntimeError(f"wrk printed no BENCH_JSON line:\n{stdout}")


def summarize_wrk(raw: dict[str, Any], *, concurrency: int, body: str, cpu: tuple[float, float]) -> LevelResult:
    """Reduce the Lua script's summary (microseconds) to a ``LevelResult``."""
    statuses: Counter[str] = Counter()
    for item in filter(None, raw["statuses"].split(",")):
        code, count = item.split(":")
        statuses[code] += int(count)
    errors = {kind: raw[kind] for kind in ("connect", "read", "write", "timeout") if raw[kind]}
    errors |= {f"status_{code}": count for code, count in statuses.items()}
    ok = raw["requests"] - sum(statuses.values())
    seconds = raw["duration_us"] / 1e6
    core, machine = cpu_shares(*cpu)
    return LevelResult(
        concurrency=concurrency,
        client="wrk",
        body=body,
        seconds=seconds,
        ok=ok,
        errors=errors,
        img_s=ok / seconds,
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        mean_ms=raw["mean_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        mean_batch=raw["batch_sum"] / raw["batch_count"] if raw["batch_count"] else None,
        client_cpu_s=cpu[0],
        client_core_share=core,
        client_machine_share=machine,
        statuses=dict(sorted((statuses + Counter({"200": ok})).items())),
    )


def choose_client(name: str) -> str:
    if name == "auto":
        return "wrk" if shutil.which("wrk") else "python"
    if name == "wrk" and not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install wrk), use --client python")
    return name


def run_levels(
    url: str,
    images: Sequence[Path],
    concurrencies: Sequence[int],
    *,
    seconds: float,
    warm_up: float = 2.0,
    body: str = "multipart",
    client_name: str = "auto",
    timeout: float = 30.0,
    settle: float = 1.0,
) -> list[LevelResult]:
    """Every concurrency level in turn, with ``settle`` seconds between them for the server to drain."""
    chosen = choose_client(client_name)
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        manifest = Path(scratch) / "images.txt"
        manifest.write_text("".join(f"{path.resolve()}\n" for path in images))
        requests = build_requests(url, [(path.name, path.read_bytes()) for path in images], body)
        for index, concurrency in enumerate(concurrencies):
            if index:
                time.sleep(settle)
            if chosen == "wrk":
                level = run_wrk_level(url, manifest, concurrency, seconds, warm_up, timeout, body)
            else:
                level = run_python_level(url, requests, concurrency, seconds, warm_up, timeout, body)
            print(format_level(level), flush=True)
            results.append(level)
    return results


def format_level(level: LevelResult) -> str:
    errors = sum(level.errors.values())
    batch = f"{level.mean_batch:.1f}" if level.mean_batch is not None else "-"
    line = (
        f"  c={level.concurrency:<4} {level.img_s:7.1f} img/s  p50 {level.p50_ms:7.1f}  p90 {level.p90_ms:7.1f}  "
        f"p99 {level.p99_ms:7.1f} ms  batch {batch:>5}  errors {errors}  "
        f"client {level.client} {100 * level.client_core_share:.1f}% of a core"
    )
    if errors:
        answers = " ".join(f"{code}:{count}" for code, count in level.statuses.items())
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(level.errors.items()))
        line += f"\n         answers by status {answers or '-'}; errors: {kinds}"
    return line


def failed_requests(levels: Sequence[LevelResult]) -> int:
    """Requests that did not get a 200: error answers, refused or broken connections, timeouts."""
    return sum(sum(level.errors.values()) for level in levels)


def wait_ready(predict_url: str, ready_path: str, timeout: float) -> float:
    """Poll ``ready_path`` on ``predict_url``'s server until it answers 200; returns the seconds waited.
    ``SystemExit`` with the last answer (or connection error) when ``timeout`` passes first."""
    parts = urlsplit(predict_url)
    url = f"{parts.scheme}://{parts.netloc}{ready_path}"
    started = time.monotonic()
    last = "no answer yet"
    while True:
        try:
            response = httpx.get(url, timeout=5)
            if response.status_code == 200:
                return time.monotonic() - started
            last = f"HTTP {response.status_code}: {response.text.strip()[:200]}"
        except httpx.TransportError as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() - started > timeout:
            raise SystemExit(f"loadgen: {url} not ready after {timeout:g} s; last answer: {last}")
        time.sleep(0.25)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000/predict")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated requests in flight")
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per level")
    parser.add_argument("--warm-up", type=float, default=2.0, help="unmeasured seconds before each level")
    parser.add_argument("--images", type=Path, default=common.DEFAULT_IMAGES, help="directory of JPEGs")
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--body", choices=BODY_MODES, default="multipart")
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request timeout, seconds")
    parser.add_argument("--ready-path", default="/readyz", help="path that answers 200 once the server is ready")
    parser.add_argument("--ready-timeout", type=float, default=120.0, help="seconds to wait for --ready-path")
    parser.add_argument("--label", default="server", help="name in the output files and plot")
    parser.add_argument("--out", type=Path, help="JSON path (default bench/out/loadgen-<label>.json)")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = get_args_parser().parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        images, described = common.resolve_images(args.images, args.num_images, synthetic_dir=Path(scratch))
        print(f"loadgen → {args.url}: {described}, {args.body} bodies", flush=True)
        waited = wait_ready(args.url, args.ready_path, args.ready_timeout)
        print(f"  ready ({args.ready_path} 200 after {waited:.1f} s)", flush=True)
        levels = run_levels(
            args.url,
            images,
            common.parse_ints(args.concurrency),
            seconds=args.duration,
            warm_up=args.warm_up,
            body=args.body,
            client_name=args.client,
            timeout=args.timeout,
        )
    report = {
        "environment": common.environment(),
        "url": args.url,
        "images": described,
        "label": args.label,
        "levels": [asdict(level) for level in levels],
        "failed_requests": failed_requests(levels),
    }
    out = common.write_json(args.out or common.OUT_DIR / f"loadgen-{args.label}.json", report)
    if any(level.ok for level in levels):
        plot = plot_levels({args.label: report["levels"]}, out.with_suffix(".png"), f"/predict load: {args.label}")
        print(f"wrote {out} and {plot}", file=sys.stderr)
    else:
        print(f"wrote {out} (no plot: not one request succeeded)", file=sys.stderr)
    if report["failed_requests"]:
        print(f"FAILED: {report['failed_requests']} requests did not get a 200 (see errors above)", file=sys.stderr)
    return report


if __name__ == "__main__":
    sys.exit(1 if main()["failed_requests"] else 0)
