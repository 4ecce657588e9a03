"""The fleet drill's pure parts (bench/fleet): figures, recovery, targets, HAProxy's stats, log
lines. No Docker: the drill itself runs by hand (deploy/fleet/README.md)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench.client import Target
from bench.fleet import control
from bench.fleet.__main__ import MAX_PHOTO_BYTES, load_requests, main
from bench.fleet.report import SCENARIOS, check_targets, format_table, recovery_seconds, summarize


@dataclass(frozen=True)
class Done:
    sent: float
    done: float
    status: int | None


def _result(**overrides: Any) -> dict[str, Any]:
    base = {"sent": 100, "status": {"200": 100}, "no_answer": 0, "p50_ms": 50.0, "p99_ms": 90.0, "recovery_s": 12.0}
    return base | overrides


def _all_good() -> dict[str, dict[str, Any]]:
    return {
        "rolling_restart": _result(),
        "scale_out_in": _result(),
        "replica_killed": _result(in_flight_at_kill=3),
        "broken_replica": _result(routed_to_broken=0, recovery_s=0.0),
    }


def test_summarize_counts_statuses_and_lost_requests() -> None:
    outcomes = [Done(0.0, 0.010 * (i + 1), 200) for i in range(100)] + [Done(0, 1, 503), Done(0, 2, None)]
    summary = summarize(outcomes)
    assert summary["sent"] == 102 and summary["no_answer"] == 1
    assert summary["status"] == {"200": 100, "503": 1}, "keyed by the status code as a string"
    assert summary["p50_ms"] == pytest.approx(505, abs=6) and summary["p99_ms"] == pytest.approx(990, abs=11)
    assert summarize([Done(0, 1, None)])["p50_ms"] is None, "no 200s: no latency"


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        ([(0, 3), (1, 3), (2, 3)], 0.0),  # never dropped
        ([(0, 3), (1, 2), (2, 2), (3, 3), (4, 3)], 3.0),  # back at t=3
        ([(0, 3), (1, 2), (2, 3), (3, 2), (4, 3)], 4.0),  # the last dip counts
        ([(0, 3), (1, 2), (2, 2)], None),  # not back by the end
        ([(-5, 1), (0, 3)], 0.0),  # before the start does not count
    ],
)
def test_recovery_seconds(samples: list[tuple[float, int]], expected: float | None) -> None:
    assert recovery_seconds(samples, start=0.0, full=3) == expected


def test_targets_hold_for_a_clean_run() -> None:
    assert check_targets(_all_good()) == {}


@pytest.mark.parametrize(
    ("scenario", "change", "expected"),
    [
        ("rolling_restart", {"no_answer": 1}, "1 requests without an answer"),
        ("rolling_restart", {"status": {"200": 99, "503": 1}}, "answers other than 200"),
        ("scale_out_in", {"status": {"200": 99, "502": 1}}, "answers other than 200"),
        ("replica_killed", {"no_answer": 4, "in_flight_at_kill": 3}, "4 without an answer > 3 in flight"),
        ("replica_killed", {"recovery_s": None}, "full capacity did not come back"),
        ("broken_replica", {"routed_to_broken": 2}, "2 requests routed to the broken replica"),
        ("broken_replica", {"status": {"503": 100}}, "the fleet served nothing"),
    ],
)
def test_targets_name_what_failed(scenario: str, change: dict[str, Any], expected: str) -> None:
    scenarios = _all_good()
    scenarios[scenario] |= change
    failed = check_targets(scenarios)
    assert list(failed) == [scenario]
    assert any(expected in problem for problem in failed[scenario]), failed


def test_a_killed_replica_may_lose_what_it_held() -> None:
    scenarios = _all_good()
    scenarios["replica_killed"] |= {"no_answer": 3, "status": {"200": 97}, "in_flight_at_kill": 3}
    assert check_targets(scenarios) == {}


def test_a_scenario_that_did_not_run_is_a_failure() -> None:
    scenarios = _all_good()
    del scenarios["broken_replica"]
    assert check_targets(scenarios) == {"broken_replica": ["did not run"]}


def test_table_has_a_line_per_scenario() -> None:
    table = format_table(_all_good()).splitlines()
    assert len(table) == 1 + len(SCENARIOS)
    assert table[3].startswith("replica_killed") and "'in_flight_at_kill': 3" in table[3]
    assert " - " not in table[1] and "12" in table[1]


STATS = """# pxname,svname,qcur,qmax,scur,smax,slim,stot,status,addr,
predict,FRONTEND,,,4,9,512,120,OPEN,,
alexnet,alexnet1,0,0,2,5,,40,UP,172.18.0.3:8000,
alexnet,alexnet2,0,0,0,5,,41,DOWN,172.18.0.4:8000,
alexnet,alexnet3,0,0,0,0,,0,MAINT (resolution),,
alexnet,BACKEND,0,0,2,9,,81,UP,,
stats,FRONTEND,,,1,1,,3,OPEN,,
"""


def test_parse_stats_keeps_the_backends_servers() -> None:
    servers = control.parse_stats_csv(STATS)
    assert servers == [
        control.Server("alexnet1", "172.18.0.3", "UP", 2),
        control.Server("alexnet2", "172.18.0.4", "DOWN", 0),
        control.Server("alexnet3", "", "MAINT (resolution)", 0),
    ]


@pytest.mark.parametrize(
    ("line", "counted"),
    [
        (json.dumps({"message": "POST /predict 503", "path": "/predict", "status": 503}), True),
        (json.dumps({"message": "GET /readyz 503", "path": "/readyz", "status": 503}), False),
        (json.dumps({"message": "cannot load checkpoint"}), False),
        ("Traceback (most recent call last):", False),
    ],
)
def test_only_prediction_requests_count_as_routed(line: str, counted: bool) -> None:
    assert control._is_predict_log(line) is counted


def test_requests_skip_photos_too_big_to_replay(tmp_path: Path) -> None:
    (tmp_path / "small.jpg").write_bytes(b"\xff\xd8\xff" + b"0" * 100)
    (tmp_path / "big.jpg").write_bytes(b"\xff\xd8\xff" + b"0" * MAX_PHOTO_BYTES)
    requests = load_requests(tmp_path, 10, Target("127.0.0.1", 8080, "/predict"))
    assert len(requests) == 1 and requests[0].startswith(b"POST /predict HTTP/1.1")


def test_no_photos_means_could_not_run(tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path / "out.json"), "--images", str(tmp_path / "absent"), "--keep"]) == 2
    assert not (tmp_path / "out.json").exists()


def test_unknown_scenario_means_could_not_run(tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path / "out.json"), "--only", "chaos"]) == 2
