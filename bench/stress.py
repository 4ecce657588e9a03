"""Stress the server as an operator would: overload, vanishing and slow clients, SIGTERM, a soak.

    python -m bench.stress                                   # everything; the soak lasts 10 minutes
    python -m bench.stress --soak-seconds 20 --sigterm-trials 2 --overload-seconds 5   # a rehearsal

Each scenario starts its own server (``python -m app``, settings from ``ALEXNET_*`` plus the
scenario's own) and reports answers by status, lost answers (a request sent that got no HTTP
answer), p99 of admitted requests (the 200s) and the server's RSS at start, peak and end:

- capacity: a closed loop at concurrency 32, to size the overload;
- overload: an open loop at ``--overload-factor`` (10) times that capacity; the share of the
  excess refused with 429 is reported;
- abort: uploads cut off mid-body and clients that leave before their answer; the server's
  metrics must count them as 499, never 500;
- slowloris: connections that trickle their headers or body, while normal clients keep going;
- sigterm: SIGTERM under load, ``--sigterm-trials`` times; every request sent before the signal
  must be answered;
- soak: a closed loop at concurrency 8 for ``--soak-seconds``; RSS growth over the run.

Bodies are raw JPEGs from ``../shared/data/catdog/val`` when present, else generated ones.
Writes ``bench/out/stress-<time>.json`` and prints a table. The machine must be otherwise idle
for the numbers to mean anything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench import client, common, servers
from bench.loadgen import percentile

SCENARIOS = ("capacity", "overload", "abort", "slowloris", "sigterm", "soak", "hostile", "head", "overload5x")


@dataclass(frozen=True)
class Outcome:
    """One request: sent and finished (``perf_counter`` s), its status, or why it got no answer."""

    sent: float
    done: float
    status: int | None
    error: str | None = None


@dataclass
class Report:
    """One scenario's figures."""

    scenario: str
    seconds: float
    statuses: dict[str, int]
    lost: int
    p99_admitted_ms: float | None
    rss_mb: dict[str, float]
    extra: dict[str, Any] = field(default_factory=dict)


class RssSampler:
    """The server's resident memory, sampled in the background: start, peak, end (MB)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[float] = []
        self.sample()

    def sample(self) -> None:
        """Add a reading (none once the process is gone)."""
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    self.samples.append(int(line.split()[1]) / 1024)

    async def run(self, every: float = 1.0) -> None:
        while True:
            await asyncio.sleep(every)
            self.sample()


def rss_summary(samples: Sequence[float]) -> dict[str, float]:
    if not samples:
        return {"start": 0.0, "peak": 0.0, "end": 0.0}
    return {"start": round(samples[0], 1), "peak": round(max(samples), 1), "end": round(samples[-1], 1)}


class Pool:
    """Keep-alive connections to the server, each used by one request at a time."""

    def __init__(self, target: client.Target, timeout: float) -> None:
        self.target, self.timeout = target, timeout
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []

    async def request(self, payload: bytes) -> Outcome:
        sent = time.perf_counter()
        reader = writer = None
        while self.idle:  # reuse only connections idle for less than the server's keep-alive
            reader, writer, since = self.idle.pop()
            if sent - since < 2.0:
                break
            writer.close()
            reader = writer = None
        try:
            if writer is None:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.target.host, self.target.port), self.timeout
                )
            assert reader is not None
            writer.write(payload)
            status, _, keep_alive = await asyncio.wait_for(client.read_response(reader), self.timeout)
        except (OSError, TimeoutError, EOFError, ValueError, IndexError, asyncio.IncompleteReadError) as exc:
            if writer is not None:
                writer.close()
            kind = "connect" if writer is None else type(exc).__name__
            return Outcome(sent, time.perf_counter(), None, kind)
        if keep_alive:
            self.idle.append((reader, writer, time.perf_counter()))
        else:
            writer.close()
        return Outcome(sent, time.perf_counter(), status)

    def close(self) -> None:
        for _, writer, _ in self.idle:
            writer.close()
        self.idle.clear()


async def closed_loop(
    pool: Pool, requests: Sequence[bytes], concurrency: int, stop: Callable[[], bool], outcomes: list[Outcome]
) -> None:
    async def worker(offset: int) -> None:
        index = offset
        while not stop():
            outcome = await pool.request(requests[index % len(requests)])
            outcomes.append(outcome)
            index += 1
            if outcome.error == "connect":  # the server is gone or refusing: do not spin
                await asyncio.sleep(0.05)

    await asyncio.gather(*(worker(k * 7) for k in range(concurrency)))


async def open_loop(pool: Pool, requests: Sequence[bytes], rate: float, seconds: float) -> list[Outcome]:
    """Send ``rate`` requests a second for ``seconds``, whatever the answers; wait for them all."""
    started = time.perf_counter()
    tasks = []
    for index in range(int(rate * seconds)):
        delay = started + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(pool.request(requests[index % len(requests)])))
    return list(await asyncio.gather(*tasks))


def summarize(name: str, outcomes: Sequence[Outcome], seconds: float, rss: Sequence[float], **extra: Any) -> Report:
    statuses = Counter(str(o.status) if o.status is not None else f"no answer ({o.error})" for o in outcomes)
    admitted = [1000 * (o.done - o.sent) for o in outcomes if o.status == 200]
    return Report(
        scenario=name,
        seconds=round(seconds, 1),
        statuses=dict(sorted(statuses.items())),
        lost=sum(1 for o in outcomes if o.status is None),
        p99_admitted_ms=round(percentile(admitted, 99), 1) if admitted else None,
        rss_mb=rss_summary(rss),
        extra=extra,
    )


def metric_totals(base_url: str) -> dict[str, float]:
    """``alexnet_http_requests_total`` for POST /predict, by status."""
    text = httpx.get(base_url + "/metrics", timeout=10).text
    totals: dict[str, float] = {}
    for match in re.finditer(r"alexnet_http_requests_total\{([^}]*)\} (\S+)", text):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if labels.get("route") == "/predict":
            totals[labels["status"]] = totals.get(labels["status"], 0) + float(match.group(2))
    return totals


@contextlib.contextmanager
def server(checkpoint: Path, env: dict[str, str]) -> Iterator[servers.Running]:
    with servers.running(servers.ours(checkpoint, env)) as running:
        yield running


def capacity(checkpoint: Path, env: dict[str, str], requests: list[bytes], seconds: float) -> Report:
    with server(checkpoint, env) as running:
        rss = RssSampler(running.pid)

        async def main() -> list[Outcome]:
            pool, outcomes = Pool(client.Target.parse(running.predict_url), 60), []
            sampler = asyncio.create_task(rss.run())
            end = time.perf_counter() + seconds
            await closed_loop(pool, requests, 32, lambda: time.perf_counter() > end, outcomes)
            sampler.cancel()
            pool.close()
            return outcomes

        outcomes = asyncio.run(main())
    ok = sum(1 for o in outcomes if o.status == 200)
    return summarize("capacity", outcomes, seconds, rss.samples, img_s=round(ok / seconds, 1), concurrency=32)


def overload(
    checkpoint: Path, env: dict[str, str], requests: list[bytes], seconds: float, rate: float, capacity_img_s: float
) -> Report:
    with server(checkpoint, env) as running:
        rss = RssSampler(running.pid)

        async def main() -> list[Outcome]:
            pool = Pool(client.Target.parse(running.predict_url), 120)
            sampler = asyncio.create_task(rss.run())
            outcomes = await open_loop(pool, requests, rate, seconds)
            sampler.cancel()
            pool.close()
            return outcomes

        started = time.perf_counter()
        outcomes = asyncio.run(main())
        elapsed = time.perf_counter() - started
        served = metric_totals(running.base_url)
    refused = sum(1 for o in outcomes if o.status == 429)
    excess = max(1.0, len(outcomes) - capacity_img_s * seconds)
    return summarize(
        "overload",
        outcomes,
        elapsed,
        rss.samples,
        rate_per_s=round(rate, 1),
        sent=len(outcomes),
        excess_refused_429_share=round(refused / excess, 3),
        server_counted=served,
        p99_refused_ms=round(percentile([1000 * (o.done - o.sent) for o in outcomes if o.status == 429] or [0], 99)),
        answered_vs_capacity=round(sum(1 for o in outcomes if o.status == 200) / elapsed / capacity_img_s, 3),
    )


def abort_storm(checkpoint: Path, env: dict[str, str], requests: list[bytes], image: bytes, count: int) -> Report:
    with server(checkpoint, env) as running:
        rss = RssSampler(running.pid)
        target = client.Target.parse(running.predict_url)

        async def abort(index: int, semaphore: asyncio.Semaphore) -> None:
            payload = requests[index % len(requests)]
            async with semaphore:
                with contextlib.suppress(OSError):
                    _, writer = await asyncio.open_connection(target.host, target.port)
                    # half of them stop mid-body, the other half leave right after a whole request
                    writer.write(payload[: len(payload) // 2] if index % 2 else payload)
                    await writer.drain()
                    await asyncio.sleep(0.01 if index % 2 else 0.05)
                    writer.transport.abort()

        async def main() -> None:
            sampler = asyncio.create_task(rss.run())
            semaphore = asyncio.Semaphore(64)
            await asyncio.gather(*(abort(index, semaphore) for index in range(count)))
            await asyncio.sleep(2)  # let the server notice the last ones
            sampler.cancel()

        started = time.perf_counter()
        asyncio.run(main())
        elapsed = time.perf_counter() - started
        counted = metric_totals(running.base_url)
        after = httpx.post(running.predict_url, content=image, headers={"Content-Type": "image/jpeg"})
        output = running.log.read_text(errors="replace")
    return Report(
        scenario="abort",
        seconds=round(elapsed, 1),
        statuses={status: int(n) for status, n in sorted(counted.items())},
        lost=0,
        p99_admitted_ms=None,
        rss_mb=rss_summary(rss.samples),
        extra={
            "aborted": count,
            "server_500s": int(counted.get("500", 0)),
            "tracebacks_in_log": output.count("Traceback"),
            "next_request_status": after.status_code,
        },
    )


def slowloris(
    checkpoint: Path, env: dict[str, str], requests: list[bytes], connections: int, read_timeout: float
) -> Report:
    env = env | {"ALEXNET_READ_TIMEOUT_S": str(read_timeout)}
    with server(checkpoint, env) as running:
        rss = RssSampler(running.pid)
        target = client.Target.parse(running.predict_url)
        held: list[float] = []
        answered_408 = 0

        async def slow(index: int) -> None:
            nonlocal answered_408
            with contextlib.suppress(OSError):
                reader, writer = await asyncio.open_connection(target.host, target.port)
                opened = time.perf_counter()
                if index % 2:  # headers that never finish
                    writer.write(b"POST /predict HTTP/1.1\r\nHost: x\r\n")
                    drip = b"X"
                else:  # a body at one byte a second
                    writer.write(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n")
                    writer.write(b"Content-Length: 100000\r\n\r\n")
                    drip = b"\0"
                while True:
                    with contextlib.suppress(TimeoutError):
                        data = await asyncio.wait_for(reader.read(65536), 1.0)
                        answered_408 += data.startswith(b"HTTP/1.1 408")
                        break
                    if time.perf_counter() - opened > 4 * read_timeout:
                        break
                    writer.write(drip)
                held.append(time.perf_counter() - opened)
                writer.close()

        async def main() -> list[Outcome]:
            pool, outcomes = Pool(target, 60), []
            sampler = asyncio.create_task(rss.run())
            slow_ones = asyncio.gather(*(slow(index) for index in range(connections)))
            await closed_loop(pool, requests, 4, slow_ones.done, outcomes)
            await slow_ones
            sampler.cancel()
            pool.close()
            return outcomes

        started = time.perf_counter()
        outcomes = asyncio.run(main())
        elapsed = time.perf_counter() - started
    return summarize(
        "slowloris",
        outcomes,
        elapsed,
        rss.samples,
        slow_connections=connections,
        read_timeout_s=read_timeout,
        slow_answered_408=answered_408,
        slow_held_max_s=round(max(held, default=0.0), 1),
        slow_closed_by_server=sum(1 for seconds in held if seconds < 4 * read_timeout),
    )


def sigterm_trials(checkpoint: Path, env: dict[str, str], requests: list[bytes], trials: int) -> Report:
    outcomes_before: list[Outcome] = []
    after_signal = Counter[str]()
    exited = 0
    rss_all: list[float] = []
    for _ in range(trials):
        spec = servers.ours(checkpoint, env)
        with servers.running(spec) as running:
            rss = RssSampler(running.pid)

            async def main(running: servers.Running = running, rss: RssSampler = rss) -> tuple[list[Outcome], float]:
                pool, outcomes = Pool(client.Target.parse(running.predict_url), 60), []
                sampler = asyncio.create_task(rss.run(0.5))
                signalled = [0.0]

                async def signal_later() -> None:
                    await asyncio.sleep(2.0)
                    signalled[0] = time.perf_counter()
                    os.killpg(running.pid, signal.SIGTERM)

                killer = asyncio.create_task(signal_later())
                await closed_loop(
                    pool, requests, 32, lambda: bool(signalled[0]) and time.perf_counter() > signalled[0] + 3, outcomes
                )
                await killer
                sampler.cancel()
                pool.close()
                return outcomes, signalled[0]

            outcomes, signalled = asyncio.run(main())
            exited += _exits(running.pid)
            rss_all.extend(rss.samples)
        outcomes_before += [o for o in outcomes if o.sent < signalled]
        after_signal.update(
            str(o.status) if o.status else f"no answer ({o.error})" for o in outcomes if o.sent >= signalled
        )
    report = summarize("sigterm", outcomes_before, 0.0, rss_all, trials=trials, exited_by_itself=exited)
    report.extra["sent_after_signal"] = dict(sorted(after_signal.items()))
    return report


def _exits(pid: int, timeout: float = 60.0) -> bool:
    """Whether the server ``pid`` ends (a zombie, until ``servers.stop`` reaps it) within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.1)
    return False


def soak(checkpoint: Path, env: dict[str, str], requests: list[bytes], seconds: float) -> Report:
    with server(checkpoint, env) as running:
        rss = RssSampler(running.pid)

        async def main() -> list[Outcome]:
            pool, outcomes = Pool(client.Target.parse(running.predict_url), 60), []
            sampler = asyncio.create_task(rss.run(5.0))
            end = time.perf_counter() + seconds
            await closed_loop(pool, requests, 8, lambda: time.perf_counter() > end, outcomes)
            sampler.cancel()
            rss.sample()
            pool.close()
            return outcomes

        outcomes = asyncio.run(main())
    summary = rss_summary(rss.samples)
    growth = (summary["end"] - summary["start"]) / summary["start"] if summary["start"] else None
    return summarize(
        "soak", outcomes, seconds, rss.samples, concurrency=8, rss_growth=None if growth is None else round(growth, 4)
    )


def hostile_corpus() -> dict[str, bytes]:
    """Images that cost far more to decode or resize than their bytes: strips and huge canvases."""
    from PIL import Image

    def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format=fmt, **options)
        return buffer.getvalue()

    def animation(fmt: str, side: int) -> bytes:
        frames = [Image.new("RGBA", (side, side), (shade, 0, 0, 255)) for shade in (0, 40)]
        extra = {"lossless": True} if fmt == "WEBP" else {}
        return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **extra)

    strips = {
        f"{w}x{h}": encode(Image.new("L", (w, h), 128), "PNG") for w, h in ((65_500, 1), (1, 65_500), (30_000, 2))
    }
    return strips | {"gif-canvas-16000": animation("GIF", 16_000), "webp-canvas-6300": animation("WEBP", 6300)}


def hostile_images(checkpoint: Path, env: dict[str, str], total: int) -> Report:
    """``total`` hostile images, one at a time, case by case: each answer's status and time, the
    server's peak RSS growth per case (VmHWM, reset before each) and its RSS after them all against its start."""
    corpus = hostile_corpus()
    outcomes: list[Outcome] = []
    cases: dict[str, dict[str, Any]] = {}
    with server(checkpoint, env) as running, httpx.Client(timeout=60) as http:
        start = _status_mb(running.pid)
        peak = start["VmRSS"]
        for name, body in corpus.items():
            Path(f"/proc/{running.pid}/clear_refs").write_text("5")  # VmHWM restarts from VmRSS: this case's peak
            before = _status_mb(running.pid)
            seconds: list[float] = []
            for _ in range(total // len(corpus)):
                sent = time.perf_counter()
                status = http.post(running.predict_url, content=body, headers={"Content-Type": "image/png"}).status_code
                outcomes.append(Outcome(sent, time.perf_counter(), status))
                seconds.append(outcomes[-1].done - sent)
            after = _status_mb(running.pid)
            peak = max(peak, after["VmHWM"])
            cases[name] = {
                "bytes": len(body),
                "statuses": sorted({o.status for o in outcomes[-len(seconds) :]}),
                "max_s": round(max(seconds), 3),
                "peak_growth_mb": round(after["VmHWM"] - before["VmRSS"], 1),
            }
        time.sleep(2)  # the heap is trimmed once requests pause
        end = _status_mb(running.pid)
    rss = [start["VmRSS"], peak, end["VmRSS"]]
    growth = round((end["VmRSS"] - start["VmRSS"]) / start["VmRSS"], 4)
    return summarize("hostile", outcomes, sum(o.done - o.sent for o in outcomes), rss, cases=cases, rss_growth=growth)


def _status_mb(pid: int) -> dict[str, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {key: int(fields[key].split()[0]) / 1024 for key in ("VmHWM", "VmRSS")}


async def _huge_head(host: str, port: int, size: int) -> tuple[int | None, int]:
    """Send a ``size``-byte header while reading; (status, bytes sent when the answer came)."""
    reader, writer = await asyncio.open_connection(host, port)
    sent, status = 0, None
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
    answer = asyncio.create_task(reader.readline())
    chunk = b"a" * 65536
    with contextlib.suppress(OSError):
        while sent < size and not answer.done():
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)
    with contextlib.suppress(OSError, ValueError, IndexError, asyncio.IncompleteReadError):
        status = int((await asyncio.wait_for(answer, 30)).split()[1])
    writer.close()
    return status, sent


def head_attack(checkpoint: Path, env: dict[str, str], connections: int = 4, size: int = 60 * 2**20) -> Report:
    """``connections`` clients sending ``size``-byte heads at once, while a client polls /healthz."""
    with server(checkpoint, env) as running:
        rss = RssSampler(running.pid)
        target = client.Target.parse(running.predict_url)

        async def main() -> tuple[list[tuple[int | None, int]], list[float]]:
            sampler = asyncio.create_task(rss.run(0.1))
            attacks = asyncio.gather(*(_huge_head(target.host, target.port, size) for _ in range(connections)))
            health: list[float] = []
            async with httpx.AsyncClient(base_url=running.base_url, timeout=30) as probe:
                while not attacks.done() or len(health) < 20:
                    started = time.perf_counter()
                    await probe.get("/healthz")
                    health.append(1000 * (time.perf_counter() - started))
            sampler.cancel()
            rss.sample()
            return await attacks, health

        started = time.perf_counter()
        results, health = asyncio.run(main())
        elapsed = time.perf_counter() - started
    summary = rss_summary(rss.samples)
    return Report(
        scenario="head",
        seconds=round(elapsed, 1),
        statuses=dict(Counter(str(status) for status, _ in results)),
        lost=sum(1 for status, _ in results if status is None),
        p99_admitted_ms=None,
        rss_mb=summary,
        extra={
            "head_mb": size / 2**20,
            "sent_before_answer_kb": [round(sent / 1024) for _, sent in results],
            "healthz_p99_ms": round(percentile(health, 99), 1),
            "rss_growth_mb": round(summary["peak"] - summary["start"], 1),
        },
    )


def overload_open_loop(
    checkpoint: Path, env: dict[str, str], requests: list[bytes], capacity_img_s: float, workers: int, seconds: float
) -> Report:
    """5x ``capacity_img_s`` open loop for ``seconds`` on ``workers`` workers, default queue: lost, share of
    the excess refused, 429 p99, 200 p99, answered throughput against capacity."""
    env = env | {"ALEXNET_WORKERS": str(workers)}
    report = overload(checkpoint, env, requests, seconds, 5 * capacity_img_s, capacity_img_s)
    report.scenario = f"overload5x-w{workers}"
    return report


def _overload_5x(
    checkpoint: Path, env: dict[str, str], requests: list[bytes], capacity_img_s: float, seconds: float
) -> Report:
    """The 5x open loop with 1 worker, then with one per core (the first report is printed here)."""
    single = overload_open_loop(checkpoint, env, requests, capacity_img_s, 1, seconds)
    print(format_table([single]), flush=True)
    return overload_open_loop(checkpoint, env, requests, capacity_img_s, os.cpu_count() or 1, seconds)


def format_table(reports: Sequence[Report]) -> str:
    lines = [
        f"{'scenario':<10} {'secs':>6} {'lost':>5} {'p99 ok ms':>10} {'RSS MB start/peak/end':>22}  answers by status",
    ]
    for report in reports:
        p99 = f"{report.p99_admitted_ms:.0f}" if report.p99_admitted_ms is not None else "-"
        rss = "/".join(f"{report.rss_mb[key]:.0f}" for key in ("start", "peak", "end"))
        answers = " ".join(f"{status}:{count}" for status, count in report.statuses.items())
        lines.append(f"{report.scenario:<10} {report.seconds:>6} {report.lost:>5} {p99:>10} {rss:>22}  {answers}")
        if report.extra:
            lines.append(f"{'':<10} {json.dumps(report.extra, default=str)}")
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.stress", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="default: the shipped model")
    parser.add_argument("--images", type=Path, default=common.DEFAULT_IMAGES, help="folder of JPEGs")
    parser.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated, of {', '.join(SCENARIOS)}")
    parser.add_argument("--capacity-seconds", type=float, default=15.0)
    parser.add_argument("--capacity", type=float, help="img/s to overload from (default: measured)")
    parser.add_argument("--overload-seconds", type=float, default=30.0)
    parser.add_argument("--overload-factor", type=float, default=10.0)
    parser.add_argument("--aborts", type=int, default=1000, help="aborted requests in the abort storm")
    parser.add_argument("--slow-connections", type=int, default=200)
    parser.add_argument("--slow-read-timeout", type=float, default=5.0, help="ALEXNET_READ_TIMEOUT_S for slowloris")
    parser.add_argument("--sigterm-trials", type=int, default=10)
    parser.add_argument("--soak-seconds", type=float, default=600.0)
    parser.add_argument("--hostile-requests", type=int, default=1000, help="thin/tall strips and huge canvases")
    parser.add_argument("--out", type=Path, help="JSON path (default: bench/out/stress-<time>.json)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    wanted = [name for name in args.only.split(",") if name]
    if unknown := set(wanted) - set(SCENARIOS):
        raise SystemExit(f"unknown scenarios: {', '.join(sorted(unknown))}")
    checkpoint = common.checkpoint_or_random(args.checkpoint)
    paths, described = common.resolve_images(args.images, 64)
    requests = [client.raw_request(client.Target("127.0.0.1", 0, "/predict"), path.read_bytes()) for path in paths]
    env = {key: value for key, value in os.environ.items() if key.startswith("ALEXNET_")}
    print(f"stress: {described}; checkpoint {checkpoint}; scenarios {', '.join(wanted)}", flush=True)
    reports: list[Report] = []
    measured = args.capacity
    if "capacity" in wanted or ({"overload", "overload5x"} & set(wanted) and measured is None):
        reports.append(capacity(checkpoint, env, requests, args.capacity_seconds))
        measured = measured or reports[-1].extra["img_s"]
        print(format_table(reports[-1:]), flush=True)
    runs: dict[str, Callable[[], Report]] = {
        "overload": lambda: overload(
            checkpoint, env, requests, args.overload_seconds, args.overload_factor * measured, measured
        ),
        "abort": lambda: abort_storm(checkpoint, env, requests, paths[0].read_bytes(), args.aborts),
        "slowloris": lambda: slowloris(checkpoint, env, requests, args.slow_connections, args.slow_read_timeout),
        "sigterm": lambda: sigterm_trials(checkpoint, env, requests, args.sigterm_trials),
        "soak": lambda: soak(checkpoint, env, requests, args.soak_seconds),
        "hostile": lambda: hostile_images(checkpoint, env, args.hostile_requests),
        "head": lambda: head_attack(checkpoint, env),
        "overload5x": lambda: _overload_5x(checkpoint, env, requests, measured, args.overload_seconds),
    }
    for name in wanted:
        if name in runs:
            reports.append(runs[name]())
            print(format_table(reports[-1:]), flush=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = args.out or common.OUT_DIR / f"stress-{stamp}.json"
    payload = {"environment": common.environment(), "images": described, "reports": [asdict(r) for r in reports]}
    common.write_json(out, payload)
    print("\n" + format_table(reports))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
