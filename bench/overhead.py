"""What observability costs per request: Prometheus metrics and the JSON access log line.

    python -m bench.overhead [--compare bench/out/compare.json]

Runs the service's own ``Metrics`` and ``AccessMiddleware`` logging code on one thread for a
``/predict`` request with one image (what the middleware and the batcher's hook do for it)
and prints the CPU microseconds per request. With ``--compare`` it relates them to the CPU
the whole server spent per request at each concurrency of our multipart run
(cores × seconds / images).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from app.access import AccessRecord, log_request
from app.logs import JsonFormatter
from app.metrics import Metrics
from app.service import Timed

ANSWER = Timed(probabilities=[0.9, 0.1], batch_size=16, preprocess=0.002, queue=0.05, inference=0.12)
SCOPE = {"type": "http", "method": "POST", "path": "/predict", "state": {"request_id": "0" * 32}}


def per_request_us(what: str, iterations: int) -> float:
    """CPU µs per request spent on ``metrics``, ``log`` or ``both``."""
    metrics = Metrics(max_batch_size=32)
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(JsonFormatter())
    access = logging.getLogger("app.access")
    access.handlers, access.propagate, access.level = [handler], False, logging.INFO
    record = AccessRecord(model="alexnet-catdog", images=1, answers=[ANSWER], bytes_in=22_000, bytes_out=208)

    def one() -> None:
        if what in ("metrics", "both"):
            metrics.in_flight.inc()
            metrics.in_flight.dec()
            metrics.observe_request("POST", "/predict", 200, 0.2, "alexnet-catdog", [ANSWER])
            metrics.observe_batch("alexnet-catdog", 16, 0.12)  # one batch per image: an upper bound
        if what in ("log", "both"):
            log_request(SCOPE, "/predict", 200, 0.2, record)  # type: ignore[arg-type]

    for _ in range(200):
        one()
    started = time.process_time()
    for _ in range(iterations):
        one()
    return 1e6 * (time.process_time() - started) / iterations


def server_us_per_request(compare_json: Path) -> dict[int, float]:
    """CPU µs the server had per request at each concurrency of our multipart run."""
    report = json.loads(compare_json.read_text())
    cores = report["environment"]["cpu_count"]
    ours = next(r for r in report["results"] if r["server"] == "ours" and r["body"] == "multipart")
    return {level["concurrency"]: 1e6 * cores / level["img_s"] for level in ours["levels"] if level["img_s"]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=20_000)
    parser.add_argument("--compare", type=Path, help="bench.compare JSON to relate the cost to")
    args = parser.parse_args(argv)
    costs = {what: per_request_us(what, args.iterations) for what in ("metrics", "log", "both")}
    print(f"per /predict request, one thread ({os.cpu_count()} cores here):")
    for what, us in costs.items():
        print(f"  {what:8} {us:7.1f} µs CPU")
    report: dict[str, Any] = {"us_per_request": costs}
    if args.compare:
        budget = server_us_per_request(args.compare)
        report["share_of_server_cpu"] = {c: costs["both"] / us for c, us in budget.items()}
        for concurrency, us in budget.items():
            print(
                f"  c={concurrency:<3} the server spent {us / 1000:6.1f} ms CPU per request: "
                f"metrics {100 * costs['metrics'] / us:.2f}%, log {100 * costs['log'] / us:.2f}%, "
                f"both {100 * costs['both'] / us:.2f}%"
            )
    return report


if __name__ == "__main__":
    main()
