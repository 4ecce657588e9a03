"""``bench/gpu.sh``'s fast parts on the CPU: the refusal, the budget, the correctness verdict,
model-only cells, and tiny whole runs against a real server that must leave every step in the
JSON (with its plot and table) whether correctness passes or not.

The full rehearsal (``bash bench/gpu.sh --rehearse``, ~2-4 minutes) is left to the script.
No test asserts a timing.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import common, gpu_correctness, gpu_http, gpu_model, gpu_report, gpu_run, loadgen
from bench.gpu_budget import Budget
from model.checkpoint import load_checkpoint
from model.presets import load_eval_tensor
from tests.conftest import SHIPPED

SCRIPT = common.REPO_ROOT / "bench" / "gpu.sh"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return common.make_synthetic_jpegs(tmp_path_factory.mktemp("gpu-photos"), 4, size=(320, 240))


@pytest.fixture(scope="module")
def shipped() -> Path:
    """The shipped model (tracked in git): decisive answers, so top-1 agreement means something."""
    assert SHIPPED.is_file(), f"{SHIPPED} is tracked in git and must be there"
    return SHIPPED


# --- refusal and prerequisites -----------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is what a machine without CUDA says")
def test_refuses_without_cuda_in_one_line(tmp_path: Path) -> None:
    env = os.environ | {"PYTHON": sys.executable}
    result = subprocess.run(
        ["bash", str(SCRIPT), "--out", str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("note: wrk")]
    assert len(lines) == 1 and "CUDA is not available" in lines[0] and "--rehearse" in lines[0]
    assert result.stdout == "" and not (tmp_path / "run").exists()  # refused before any work


def test_refuses_when_a_server_package_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu_run, "NEEDED_MODULES", ("fastapi", "no_such_module_here"))
    problem = gpu_run.refusal(gpu_run.parse_args(["--rehearse"]))
    assert problem is not None and "no_such_module_here" in problem and "fastapi" not in problem


def test_profiles_fill_only_what_no_flag_set() -> None:
    rehearse = gpu_run.parse_args(["--rehearse", "--photos", "7"])
    assert (rehearse.photos, rehearse.concurrency, rehearse.compile) == (7, "1,8", False)
    device = gpu_run.parse_args(["--no-compile"])
    assert (device.photos, device.concurrency, device.budget_s, device.compile) == (500, "1,64,256", 480.0, False)


# --- budget ------------------------------------------------------------------------------


def test_budget_shares_what_is_left_and_skips_what_cannot_fit() -> None:
    clock = FakeClock()
    budget = Budget(100.0, clock)
    assert budget.slot(4, longest=10, shortest=1) == 10  # 25 s each: capped at the longest
    assert budget.slot(4, longest=60, shortest=1, overhead=5) == 20
    clock.now += 90
    assert budget.left() == pytest.approx(10) and budget.left(reserve=4) == pytest.approx(6)
    assert budget.slot(5, longest=10, shortest=1) == 2
    assert budget.slot(50, longest=10, shortest=1) == 1  # the shortest still fits once
    assert budget.slot(5, longest=10, shortest=1, reserve=9.5) is None
    clock.now += 20
    assert budget.slot(1, longest=10, shortest=0.1) is None


# --- correctness -------------------------------------------------------------------------


def _probabilities(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_compare_counts_flips_unanswered_and_the_largest_difference() -> None:
    reference = _probabilities([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]])  # NaN's argmax is 0 too
    served = _probabilities([[0.89, 0.11], [0.2, 0.8], [0.45, 0.55], [math.nan, math.nan]])
    agreement = gpu_correctness.compare(served, reference, ["a", "b", "c", "d"])
    assert agreement.answered == 3 and agreement.top1_agreement == 0.5
    assert agreement.max_prob_diff == pytest.approx(0.15) and agreement.disagreements == ["c", "d"]
    assert agreement.worst[0]["photo"] == "c"


def test_verdict_names_each_missed_threshold() -> None:
    reference = _probabilities([[0.9, 0.1]] * 10)
    same = gpu_correctness.compare(reference.clone(), reference, [str(i) for i in range(10)])
    thresholds = gpu_correctness.Thresholds(min_photos=10)
    assert gpu_correctness.verdict(same, thresholds, real_photos=True) == []
    assert "real photos" in gpu_correctness.verdict(same, thresholds, real_photos=False)[0]
    rehearsal = gpu_correctness.Thresholds(min_photos=10, real_photos=False)
    assert gpu_correctness.verdict(same, rehearsal, real_photos=False) == []
    assert "need ≥ 11" in gpu_correctness.verdict(same, gpu_correctness.Thresholds(min_photos=11), True)[0]
    nudged = reference.clone()
    nudged[3] = torch.tensor([0.875, 0.125])  # 0.025 off: within top-1, over the probability bar
    problems = gpu_correctness.verdict(gpu_correctness.compare(nudged, reference, list("abcdefghij")), thresholds, True)
    assert len(problems) == 1 and "max probability difference 0.0250 > 0.02" in problems[0]
    flipped = reference.clone()
    flipped[0] = torch.tensor([0.1, 0.9])
    problems = gpu_correctness.verdict(
        gpu_correctness.compare(flipped, reference, list("abcdefghij")), thresholds, True
    )
    assert any("top-1 agreement 90.00% < 99.50%" in problem for problem in problems)


def test_served_answers_that_never_came_fail(photos: list[Path]) -> None:
    port = common.free_port()  # nothing listens there
    reference = torch.full((len(photos), 2), 0.5)
    result = gpu_correctness.check(
        f"http://127.0.0.1:{port}/predict",
        photos,
        reference,
        gpu_correctness.Thresholds(min_photos=1),
        real_photos=True,
    )
    assert not result["passed"] and result["answered"] == 0 and len(result["failures"]) == len(photos)


# --- model only --------------------------------------------------------------------------


def test_model_plan_puts_eager_first_then_the_served_dtype_graphs() -> None:
    plan = gpu_model.plan(["fp32", "bf16", "fp16"], ["eager", "graphs"], served="bf16")
    assert plan[:3] == [("fp32", "eager"), ("bf16", "eager"), ("fp16", "eager")]
    assert plan[3] == ("bf16", "graphs") and len(plan) == 6
    assert gpu_model.plan(["fp32"], ["eager"], served="fp32") == [("fp32", "eager")]


def test_model_cells_and_their_accuracy_on_the_cpu(shipped: Path, photos: list[Path]) -> None:
    loaded = load_checkpoint(shipped)
    reference = gpu_correctness.reference_probabilities(loaded, photos)
    tensors = torch.stack([load_eval_tensor(path.read_bytes(), loaded.meta.preprocessing) for path in photos])
    names = [path.name for path in photos]
    lines: list[str] = []
    result = gpu_model.measure(
        loaded, torch.device("cpu"), [("fp32", "eager")], [1, 3], tensors, reference, names, Budget(60.0),
        longest=0.05, log=lines.append,
    )  # fmt: skip
    assert [(cell["batch_size"], cell["mode"]) for cell in result["cells"]] == [(1, "eager"), (3, "eager")]
    assert all(cell["img_s"] > 0 and cell["runs"] >= 3 for cell in result["cells"])
    accuracy = result["accuracy_vs_cpu_fp32"]["fp32 eager"]
    assert accuracy["batch_size"] == 3 and accuracy["top1_agreement"] == 1.0 and accuracy["max_prob_diff"] < 1e-4
    assert result["skipped"] == [] and len(lines) == 3
    spent = gpu_model.measure(
        loaded, torch.device("cpu"), [("fp32", "eager")], [1, 3], tensors, reference, names, Budget(0.0),
        longest=0.05, log=lines.append,
    )  # fmt: skip
    assert spent["cells"] == [] and spent["skipped"] == ["fp32 eager b=1", "fp32 eager b=3"]


# --- end to end settings -----------------------------------------------------------------


def test_server_env_sets_the_agreed_variables_and_room_for_the_concurrency() -> None:
    config = gpu_http.ServerConfig("on", 4)
    env = gpu_http.server_env(config, device="cuda", compile_model=True, max_concurrency=256, environ={})
    assert env == {
        "ALEXNET_DEVICE": "cuda",
        "ALEXNET_COMPILE": "1",
        "ALEXNET_GPU_DECODE": "on",
        "ALEXNET_WORKERS": "4",
        "ALEXNET_MAX_QUEUE": "512",
    }
    mine = gpu_http.server_env(
        config, device="cpu", compile_model=False, max_concurrency=8, environ={"ALEXNET_MAX_QUEUE": "9"}
    )
    assert "ALEXNET_MAX_QUEUE" not in mine and mine["ALEXNET_COMPILE"] == "0"
    assert [c.label for c in gpu_http.server_configs(["on", "off"], [1, 2])] == [
        "decode on, 1 worker", "decode on, 2 workers", "decode off, 1 worker", "decode off, 2 workers",
    ]  # fmt: skip


def test_python_client_stands_in_for_wrk_and_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no wrk here
    assert loadgen.choose_client("auto") == "python"
    note = gpu_http.wrk_note("python")
    assert note is not None and "apt-get install -y wrk" in note
    assert gpu_http.wrk_note("wrk") is None


# --- whole tiny runs -----------------------------------------------------------------------


def _tiny_run(shipped: Path, photos: list[Path], out: Path, *extra: str) -> int:
    return gpu_run.main(
        ["--rehearse", "--images", str(photos[0].parent), "--photos", str(len(photos)), "--min-photos",
         str(len(photos)), "--checkpoint", str(shipped), "--out", str(out), "--batch-sizes", "1", "--dtypes", "fp32",
         "--modes", "eager", "--cell-seconds", "0.05", "--concurrency", "2", "--bodies", "raw", "--workers", "1",
         "--gpu-decode", "on", "--duration", "1", "--warm-up", "0", "--budget-s", "150", *extra]
    )  # fmt: skip


def test_tiny_rehearsal_records_every_step(
    shipped: Path, photos: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALEXNET_DTYPE", "fp32")  # reaches the server through the environment
    out = tmp_path / "run"
    assert _tiny_run(shipped, photos, out) == 0
    report = json.loads((out / "gpu.json").read_text())
    assert gpu_report.missing_steps(report) == [] and report["passed"] is True
    steps = report["steps"]
    assert steps["versions"]["device"] == "cpu" and steps["versions"]["torch"] == torch.__version__
    assert steps["correctness"]["status"] == "pass"
    checked = steps["correctness"]["per_config"]["decode on, 1 worker"]
    assert checked["answered"] == len(photos) and checked["top1_agreement"] == 1.0 and checked["max_prob_diff"] < 0.02
    (config,) = steps["http"]["configs"]
    assert config["env"]["ALEXNET_GPU_DECODE"] == "on" and config["served"]["models"][0]["dtype"] == "float32"
    (level,) = config["levels"]
    assert level["ok"] > 0 and level["client"] == steps["http"]["client"]
    assert [cell["batch_size"] for cell in steps["model"]["cells"]] == [1]
    assert (out / "gpu.png").read_bytes().startswith(b"\x89PNG")
    table = (out / "table.md").read_text()
    assert "decode on, 1 worker | raw | 2 |" in table and "| fp32 | eager | 1 |" in table
    assert report["settings"]["photo_names"] == [path.name for path in photos]


def test_tiny_run_that_misses_correctness_still_saves_every_number(
    shipped: Path,
    photos: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A served path whose probabilities differ from the reference: exit 1 with one clear line,
    every later step measured and written all the same (a device lease is not wasted)."""
    reference = gpu_correctness.reference_probabilities
    monkeypatch.setattr(
        gpu_correctness, "reference_probabilities", lambda *args, **kw: reference(*args, **kw).flip(dims=[1])
    )
    out = tmp_path / "run"
    assert _tiny_run(shipped, photos, out, "--client", "python") == 1
    failed = [line for line in capsys.readouterr().err.splitlines() if line.startswith("bench/gpu.sh: FAILED")]
    assert len(failed) == 1 and "top-1 agreement 0.00% < 99.50%" in failed[0]
    report = json.loads((out / "gpu.json").read_text())
    assert gpu_report.missing_steps(report) == [] and report["passed"] is False
    assert report["steps"]["correctness"]["status"] == "fail"
    assert report["steps"]["http"]["configs"][0]["levels"][0]["client"] == "python"
    assert report["steps"]["model"]["cells"] and (out / "gpu.png").is_file()


def test_a_report_missing_a_step_fails() -> None:
    steps = {name: {} for name in gpu_report.STEPS} | {"correctness": {"status": "pass"}}
    assert gpu_report.failures({"steps": steps}) == []
    del steps["model"]
    assert gpu_report.failures({"steps": steps}) == ["step model did not run"]
    steps["model"] = {"error": "RuntimeError: boom"}
    assert gpu_report.failures({"steps": steps}) == ["model: RuntimeError: boom"]


def test_failed_requests_and_a_server_that_never_started_fail_the_run() -> None:
    passed = {"passed": True, "problems": [], "answered": 4, "images": 4, "top1_agreement": 1.0}
    passed |= {"max_prob_diff": 0.001, "mean_prob_diff": 0.0005}
    level = {"body": "raw", "concurrency": 8, "errors": {}, "img_s": 1.0, "p50_ms": 1.0, "p99_ms": 2.0}
    configs = [
        {"label": "decode on, 1 worker", "correctness": passed, "levels": [level]},
        {"label": "decode off, 1 worker", "error": "server exited with code 1", "levels": []},
    ]
    verdict = gpu_run.correctness_step({"configs": configs}, gpu_correctness.Thresholds())
    assert verdict["status"] == "fail" and "decode off, 1 worker: server failed" in verdict["summary"]
    assert gpu_run.correctness_step({"configs": configs[:1]}, gpu_correctness.Thresholds())["status"] == "pass"
    steps = {name: {} for name in gpu_report.STEPS} | {"correctness": {"status": "pass"}}
    steps["http"] = {"configs": [{"label": "decode on, 1 worker", "levels": [level | {"errors": {"status_503": 3}}]}]}
    assert gpu_report.failures({"steps": steps}) == ["end to end: 3 requests did not get a 200 (see the errors column)"]


def test_carry_takes_the_smallest_photos_of_every_class_unchanged(tmp_path: Path) -> None:
    from bench import gpu_carry

    for label, sizes in (("cat", (500, 100, 300)), ("dog", (200, 400))):
        (tmp_path / "val" / label).mkdir(parents=True)
        for index, size in enumerate(sizes):
            (tmp_path / "val" / label / f"{index}.jpg").write_bytes(bytes([index]) * size)
    chosen = gpu_carry.smallest_photos(tmp_path / "val", 3, tmp_path / "photos")
    assert [path.stat().st_size for path in chosen] == [100, 200, 300]
    assert sorted(path.name for path in (tmp_path / "photos").iterdir()) == ["cat-1.jpg", "cat-2.jpg", "dog-0.jpg"]
    assert (tmp_path / "photos" / "cat-2.jpg").read_bytes() == (tmp_path / "val" / "cat" / "2.jpg").read_bytes()
    with pytest.raises(SystemExit, match="only 5 JPEGs"):
        gpu_carry.smallest_photos(tmp_path / "val", 6, tmp_path / "photos")
    assert gpu_carry.tree_bytes() > 50 * 2**20  # the shipped model travels with every call
