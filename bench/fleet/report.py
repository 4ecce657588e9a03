"""The drill's figures and targets: pure functions over outcomes and samples (unit-tested)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from bench.loadgen import percentile

SCENARIOS = ("rolling_restart", "scale_out_in", "replica_killed", "broken_replica")
# Scenarios in which every request must be answered, and answered 200.
LOSSLESS = ("rolling_restart", "scale_out_in")


class Answered(Protocol):
    """One request as the load generator saw it (``bench.stress.Outcome`` fits)."""

    sent: float
    done: float
    status: int | None


def summarize(outcomes: Sequence[Answered]) -> dict[str, Any]:
    """``sent``, ``status`` (counts by code, as strings), ``no_answer``, ``p50_ms`` / ``p99_ms`` of the 200s."""
    statuses = Counter(str(o.status) for o in outcomes if o.status is not None)
    latencies = [1000 * (o.done - o.sent) for o in outcomes if o.status == 200]
    return {
        "sent": len(outcomes),
        "status": dict(sorted(statuses.items())),
        "no_answer": sum(1 for o in outcomes if o.status is None),
        "p50_ms": round(percentile(latencies, 50), 1) if latencies else None,
        "p99_ms": round(percentile(latencies, 99), 1) if latencies else None,
    }


def recovery_seconds(samples: Sequence[tuple[float, int]], start: float, full: int) -> float | None:
    """Seconds from ``start`` until the replicas in service (``(time, count)`` samples) were back
    to ``full`` for good: 0.0 when they never dropped, None when they had not recovered by the end."""
    after = [(t, count) for t, count in samples if t >= start]
    if not after or after[-1][1] < full:
        return None
    dips = [index for index, (_, count) in enumerate(after) if count < full]
    if not dips:
        return 0.0
    return round(after[dips[-1] + 1][0] - start, 2)


def non_200(result: Mapping[str, Any]) -> int:
    return sum(count for status, count in result["status"].items() if status != "200")


def _problems(name: str, result: Mapping[str, Any]) -> list[str]:
    problems = []
    if result["recovery_s"] is None:
        problems.append("full capacity did not come back")
    if (name in LOSSLESS or name == "broken_replica") and result["no_answer"]:
        problems.append(f"{result['no_answer']} requests without an answer")
    if name in LOSSLESS and non_200(result):
        problems.append(f"{non_200(result)} answers other than 200: {result['status']}")
    if name == "replica_killed" and result["no_answer"] > (in_flight := result["in_flight_at_kill"]):
        problems.append(f"{result['no_answer']} without an answer > {in_flight} in flight at the kill")
    if name == "broken_replica":
        if result["routed_to_broken"]:
            problems.append(f"{result['routed_to_broken']} requests routed to the broken replica")
        if not result["status"].get("200"):
            problems.append("the fleet served nothing")
    return problems


def check_targets(scenarios: Mapping[str, Mapping[str, Any]]) -> dict[str, list[str]]:
    """The issue's targets: for each scenario that misses one, what it missed (empty: all held)."""
    failures = {name: _problems(name, scenarios[name]) for name in SCENARIOS if name in scenarios}
    missing = [name for name in SCENARIOS if name not in scenarios]
    failures |= {name: ["did not run"] for name in missing}
    return {name: problems for name, problems in failures.items() if problems}


def format_table(scenarios: Mapping[str, Mapping[str, Any]]) -> str:
    """One line a scenario: what a reader of the note wants at a glance."""
    lines = [f"{'scenario':<16} {'sent':>6} {'no answer':>9} {'p50 ms':>8} {'p99 ms':>8} {'recovery s':>10}  status"]
    for name, r in scenarios.items():
        extra = {k: r[k] for k in ("in_flight_at_kill", "routed_to_broken") if k in r}
        lines.append(
            f"{name:<16} {r['sent']:>6} {r['no_answer']:>9} {_num(r['p50_ms']):>8} {_num(r['p99_ms']):>8} "
            f"{_num(r['recovery_s']):>10}  {r['status']} {extra or ''}".rstrip()
        )
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"
