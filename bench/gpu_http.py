"""Step 4 of ``bench/gpu.sh``: end to end over loopback, one image per request, per server setting.

One server per (``ALEXNET_GPU_DECODE``, ``ALEXNET_WORKERS``) pair, started with
``bench.servers`` and loaded with ``bench.loadgen`` (wrk when installed, else the project's
Python client: which one ran is recorded per level), multipart and raw bodies at each
concurrency. Level durations come from the run's ``Budget``: levels that cannot get their
shortest time are skipped and listed, never run over.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from bench import loadgen, servers
from bench.gpu_budget import Budget

# A server's start before one is measured, by (device, compiled).
START_GUESS_S = {("cuda", True): 60.0, ("cuda", False): 20.0, ("cpu", True): 40.0, ("cpu", False): 10.0}


@dataclass(frozen=True)
class ServerConfig:
    """One server setting under test."""

    gpu_decode: str  # "on" | "off" | "auto"
    workers: int

    @property
    def label(self) -> str:
        return f"decode {self.gpu_decode}, {self.workers} worker{'s' if self.workers > 1 else ''}"


def server_configs(decodes: Sequence[str], workers: Sequence[int]) -> list[ServerConfig]:
    """In order of value when time runs short: the first decode setting (the GPU path) with each
    worker count, then the others."""
    return [ServerConfig(decode, count) for decode in decodes for count in workers]


def server_env(
    config: ServerConfig, *, device: str, compile_model: bool, max_concurrency: int, environ: Mapping[str, str]
) -> dict[str, str]:
    """The ``ALEXNET_*`` settings for one server. The queue bound is raised to twice the highest
    concurrency (else it answers 429 by design) unless ``ALEXNET_MAX_QUEUE`` is set already."""
    env = {
        "ALEXNET_DEVICE": device,
        "ALEXNET_COMPILE": "1" if compile_model else "0",
        "ALEXNET_GPU_DECODE": config.gpu_decode,
        "ALEXNET_WORKERS": str(config.workers),
    }
    if "ALEXNET_MAX_QUEUE" not in environ:
        env["ALEXNET_MAX_QUEUE"] = str(max(128, 2 * max_concurrency))
    return env


@dataclass(frozen=True)
class LoadPlan:
    concurrency: Sequence[int]
    bodies: Sequence[str]
    longest: float  # measured seconds per level when time allows
    shortest: float  # below this a level is skipped
    warm_up: float
    client: str  # "wrk" or "python", from loadgen.choose_client
    timeout: float = 30.0

    @property
    def levels(self) -> int:
        return len(self.concurrency) * len(self.bodies)


def served_model(base_url: str) -> dict[str, Any] | None:
    """What the server says it runs (device, dtype, compiled), from ``/models``."""
    try:
        return dict(httpx.get(base_url + "/models", timeout=10).json())
    except (httpx.HTTPError, ValueError):
        return None


def measure_config(
    config: ServerConfig,
    spec: servers.ServerSpec,
    images: Sequence[Path],
    plan: LoadPlan,
    budget: Budget,
    *,
    levels_after: int,
    starts_after: int,
    start_s: float,
    reserve: float,
    log_dir: Path,
    on_ready: Callable[[servers.Running], dict[str, Any]] | None = None,
    ready_timeout: float = 300.0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Start the server, run ``on_ready`` (the correctness check), then every level the budget
    allows. ``levels_after``/``starts_after``: what later configs still need, kept in reserve
    while it can be; when it cannot, this config's levels still run at their shortest (configs
    come in order of value) and the later ones find no time."""
    result: dict[str, Any] = {"label": config.label, **asdict(config), "env": dict(spec.env), "levels": []}
    skipped: list[str] = result.setdefault("skipped", [])
    try:
        with servers.running(spec, ready_timeout=ready_timeout, log_dir=log_dir) as server:
            result |= {
                "ready_after_s": server.ready_after_s,
                "log": str(server.log),
                "served": served_model(server.base_url),
            }
            log(f"  ready after {server.ready_after_s:.1f} s ({server.log})")
            if on_ready is not None:
                result["correctness"] = on_ready(server)
            start_s = max(start_s, server.ready_after_s)  # the later servers' starts, as this one took
            todo = plan.levels
            for body in plan.bodies:
                for concurrency in plan.concurrency:
                    later = reserve + starts_after * start_s
                    overhead = plan.warm_up + 1.0
                    seconds = budget.slot(
                        todo + levels_after,
                        longest=plan.longest,
                        shortest=plan.shortest,
                        overhead=overhead,
                        reserve=later,
                    )
                    if seconds is None:  # this setting comes first: its shortest levels before later servers
                        seconds = budget.slot(
                            todo, longest=plan.shortest, shortest=plan.shortest, overhead=overhead, reserve=reserve
                        )
                    todo -= 1
                    if seconds is None:
                        skipped.append(f"{body} c={concurrency}")
                        continue
                    result["levels"].append(_level(server.predict_url, images, plan, body, concurrency, seconds, log))
    except (servers.ServerExited, TimeoutError, OSError, RuntimeError) as exc:
        log(f"  FAILED: {exc}")
        result["error"] = str(exc)
    return result


def _level(
    url: str,
    images: Sequence[Path],
    plan: LoadPlan,
    body: str,
    concurrency: int,
    seconds: float,
    log: Callable[[str], None],
) -> dict[str, Any]:
    try:
        (level,) = loadgen.run_levels(
            url,
            images,
            [concurrency],
            seconds=seconds,
            warm_up=plan.warm_up,
            body=body,
            client_name=plan.client,
            timeout=plan.timeout,
        )
    except (subprocess.CalledProcessError, RuntimeError, OSError) as exc:
        log(f"  {body} c={concurrency}: FAILED {exc}")
        return {"body": body, "concurrency": concurrency, "error": str(exc)}
    return asdict(level)


def wrk_note(client: str) -> str | None:
    """What to say when the Python client stands in for wrk."""
    if client == "wrk":
        return None
    return (
        "wrk not found: using the Python load generator (bench.client), which tops out at a few thousand "
        "requests/s on one core; install wrk (apt-get install -y wrk) or put it on PATH "
        f"(PATH={os.environ.get('PATH', '')[:80]}...)"
    )
