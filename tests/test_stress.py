"""``python -m bench.stress``, rehearsed: short scenarios against real servers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import stress


@pytest.mark.slow
def test_a_short_stress_run_reports_no_false_errors(tmp_path: Path, random_checkpoint: Path) -> None:
    out = tmp_path / "stress.json"
    stress.main(
        ["--checkpoint", str(random_checkpoint), "--images", str(tmp_path / "none"), "--only", "abort,slowloris"]
        + ["--aborts", "20", "--slow-connections", "4", "--slow-read-timeout", "1", "--out", str(out)]
    )
    reports = {report["scenario"]: report for report in json.loads(out.read_text())["reports"]}
    abort = reports["abort"]
    # Half are cut off mid-body (always 499); the other half leave 50 ms after a whole request (499, or
    # 200 when the server was quicker).
    assert set(abort["statuses"]) <= {"200", "499"} and abort["statuses"]["499"] >= 10
    assert abort["extra"]["server_500s"] == 0 and abort["extra"]["tracebacks_in_log"] == 0
    assert abort["extra"]["next_request_status"] == 200
    slow = reports["slowloris"]
    assert slow["extra"]["slow_answered_408"] == 4 and slow["extra"]["slow_closed_by_server"] == 4
    assert slow["lost"] == 0 and set(slow["statuses"]) == {"200"}
