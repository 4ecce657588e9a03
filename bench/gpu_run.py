"""``bench/gpu.sh``: prove the GPU path in one command inside a device lease, or rehearse it on the CPU.

    bash bench/gpu.sh                # CUDA: ≤ 8 min; results in bench/results/gpu-<gpu>-<date>/
    bash bench/gpu.sh --rehearse     # CPU: the same five steps at small sizes, in bench/out/gpu-rehearsal/

(1) versions of the device, driver, torch and CUDA; (2) correctness: every server setting's answers
against CPU fp32 on the photos (top-1 agreement and probability difference); (3) the model alone by
batch size and precision, eager against graphs; (4) end to end over loopback at each concurrency,
multipart and raw, GPU decode on and off, one and several workers; (5) ``gpu.json``, ``gpu.png`` and
``table.md``. A missed correctness bar does not stop the run: a device lease is too short to waste,
and the later numbers (per-dtype accuracy among them) say what to change; it makes the exit code 1.
Exit codes: 0 passed, 1 correctness missed or a step failed (all numbers still saved), 2 refused
before any work (no CUDA without ``--rehearse``, a missing package).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the server sets it (app/cli.py)

import argparse
import importlib.util
import re
import shutil
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from bench import common, gpu_correctness, gpu_facts, gpu_http, gpu_model, gpu_report, loadgen, servers
from bench.gpu_budget import Budget

REHEARSAL_DIR = common.OUT_DIR / "gpu-rehearsal"
RESULTS_DIR = common.REPO_ROOT / "bench" / "results"
# What a full run and a rehearsal use where no flag says otherwise.
PROFILES: dict[str, dict[str, Any]] = {
    "device": {
        "budget_s": 480.0,
        "photos": 500,
        "batch_sizes": "1,8,32,64,128,256",
        "concurrency": "1,64,256",
        "workers": "1,4",
        "duration": 5.0,
        "cell_seconds": 1.0,
        "min_photos": 500,
        "compile": True,
    },
    "rehearse": {
        "budget_s": 240.0,
        "photos": 32,
        "batch_sizes": "1,2",
        "concurrency": "1,8",
        "workers": "1,2",
        "duration": 2.0,
        "cell_seconds": 0.3,
        "min_photos": 32,
        "compile": False,
    },
}
NEEDED_MODULES = ("fastapi", "uvicorn", "multipart", "pydantic_settings", "platformdirs", "matplotlib", "httpx")
REPORT_RESERVE_S = 10.0


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench/gpu.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rehearse", action="store_true", help="run every step on the CPU at small sizes")
    parser.add_argument("--budget-s", type=float, help="wall-time budget; levels are trimmed to fit (480; 240)")
    parser.add_argument("--images", type=Path, help="JPEG folder (default ../shared/data/catdog/val, else carried)")
    parser.add_argument("--photos", type=int, help="photos for the correctness check (500; 32)")
    parser.add_argument("--min-photos", type=int, help="fewer real photos fail correctness (500; 32)")
    parser.add_argument("--checkpoint", type=Path, help="model file (default: the shipped one)")
    parser.add_argument("--out", type=Path, help="results folder (default bench/results/<run>; rehearsal: bench/out)")
    parser.add_argument("--batch-sizes", help="model-only batch sizes (1,8,32,64,128,256; 1,2)")
    parser.add_argument("--dtypes", help="model-only dtypes (CUDA: fp32,bf16,fp16; CPU: fp32,bf16)")
    parser.add_argument("--modes", default="eager,graphs", help="model-only modes: eager, graphs")
    parser.add_argument("--cell-seconds", type=float, help="measured seconds per model-only cell (1; 0.3)")
    parser.add_argument("--concurrency", help="end-to-end concurrencies (1,64,256; 1,8)")
    parser.add_argument("--bodies", default="multipart,raw", help="request bodies: multipart, raw")
    parser.add_argument("--gpu-decode", default="on,off", help="ALEXNET_GPU_DECODE values to serve with")
    parser.add_argument("--workers", help="ALEXNET_WORKERS values to serve with (1,4; 1,2)")
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        help="serve with ALEXNET_COMPILE=1 (on; rehearsal off: a compiled start costs ~40 s on a 2-core CPU)",
    )
    parser.add_argument("--duration", type=float, help="longest measured seconds per level (5; 2)")
    parser.add_argument("--warm-up", type=float, default=1.0, help="unmeasured seconds before each level")
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto", help="load generator")
    parser.add_argument("--model-share", type=float, default=0.2, help="share of the budget kept for step 3")
    parser.add_argument("--min-agreement", type=float, default=0.995, help="top-1 agreement needed")
    parser.add_argument("--max-prob-diff", type=float, default=0.02, help="largest probability difference allowed")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    args = get_args_parser().parse_args(argv)
    args.mode = "rehearse" if args.rehearse else "device"
    args.images = args.images or common.DEFAULT_IMAGES
    for key, value in PROFILES[args.mode].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def refusal(args: argparse.Namespace) -> str | None:
    """Why the run cannot start, in one line (checked before anything slow), or None."""
    if not args.rehearse and not torch.cuda.is_available():
        return (
            f"bench/gpu.sh: CUDA is not available (torch {torch.__version__}, CUDA build {torch.version.cuda}); "
            "run it on a GPU machine, or rehearse on the CPU with --rehearse"
        )
    if missing := [name for name in NEEDED_MODULES if importlib.util.find_spec(name) is None]:
        return (
            f"bench/gpu.sh: Python packages missing for the server: {', '.join(missing)} (pip install -e .; on a "
            "bare GPU machine: python -m bench.gpu_carry beforehand, then bash bench/gpu.sh --prepare there)"
        )
    return None


def run_name(args: argparse.Namespace, facts: dict[str, Any]) -> str:
    if args.rehearse:
        return "gpu-rehearsal"
    slug = re.sub(r"[^a-z0-9]+", "-", (facts.get("gpu") or "gpu").lower()).strip("-")
    return f"gpu-{slug}-{datetime.now(UTC).strftime('%Y%m%d-%H%M')}"


class Run:
    """One run's report, rewritten to disk after every step."""

    def __init__(self, args: argparse.Namespace, argv: list[str]) -> None:
        self.args = args
        self.device = torch.device("cpu" if args.rehearse else "cuda")
        self.budget = Budget(args.budget_s)
        facts = gpu_facts.versions(self.device)
        self.name = run_name(args, facts)
        self.out: Path = args.out or (REHEARSAL_DIR if args.rehearse else RESULTS_DIR / self.name)
        self.report: dict[str, Any] = {
            "run": {
                "name": self.name,
                "mode": args.mode,
                "started": datetime.now(UTC).isoformat(timespec="seconds"),
                "budget_s": args.budget_s,
                "argv": argv,
                "args": {key: value for key, value in vars(args).items()},
            },
            "environment": common.environment(),
            "steps": {"versions": facts | {"summary": gpu_facts.describe(facts), "seconds": self.budget.elapsed()}},
        }
        print(f"[1/5] versions: {self.report['steps']['versions']['summary']}", flush=True)

    def save_partial(self, name: str, record: dict[str, Any]) -> None:
        """Write what a step has so far (marked partial): a run cut short keeps it."""
        self.report["steps"][name] = record | {"partial": True}
        gpu_report.write(self.report, self.out)

    def step(self, name: str, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run one step; an exception is recorded (the run goes on) rather than raised."""
        started = time.monotonic()
        try:
            record = work()
        except Exception as exc:  # a broken step must not cost the lease the other steps' numbers
            print(f"  step {name} FAILED: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            record = {"error": f"{type(exc).__name__}: {exc}"}
        record["seconds"] = time.monotonic() - started
        self.report["steps"][name] = record
        gpu_report.write(self.report, self.out)
        return record


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if problem := refusal(args):
        print(problem, file=sys.stderr)
        return 2
    with servers.sigterm_as_exit():
        return execute(Run(args, argv))


def execute(run: Run) -> int:
    args = run.args
    from model.checkpoint import load_checkpoint

    photos, described = common.resolve_images(args.images, args.photos, synthetic_dir=run.out / "synthetic")
    real = not described.startswith(f"{args.photos} synthetic")
    checkpoint = common.checkpoint_or_random(args.checkpoint)
    loaded = load_checkpoint(checkpoint)
    run.report["settings"] = {
        "photos": described,
        "photo_names": [path.name for path in photos],
        "checkpoint": str(checkpoint),
        "model": loaded.meta.name,
    }
    names = [path.name for path in photos]
    reference = gpu_correctness.reference_probabilities(loaded, photos)
    thresholds = gpu_correctness.Thresholds(
        args.min_agreement, args.max_prob_diff, args.min_photos, real_photos=not args.rehearse
    )
    model_reserve = args.model_share * args.budget_s + REPORT_RESERVE_S

    def correctness(server: servers.Running) -> dict[str, Any]:
        result = gpu_correctness.check(server.predict_url, photos, reference, thresholds, real_photos=real)
        print(f"  correctness: {gpu_correctness.describe(result)}", flush=True)
        return result

    print(f"[2/5 + 4/5] correctness and end to end: {described}; checkpoint {checkpoint}", flush=True)
    http = run.step("http", lambda: end_to_end(run, checkpoint, photos, correctness, model_reserve))
    run.step("correctness", lambda: correctness_step(http, thresholds))
    print("[3/5] model only", flush=True)
    run.step("model", lambda: model_step(run, loaded, photos, reference, names, http))
    print("[5/5] report", flush=True)
    run.step("report", lambda: report_step(run))
    print("\n" + run.report["steps"]["report"].get("table", ""), flush=True)
    problems = gpu_report.failures(run.report)
    run.report["passed"] = not problems
    run.report["run"]["wall_s"] = run.budget.elapsed()
    gpu_report.write(run.report, run.out)
    print(f"\nwrote {run.out} in {run.budget.elapsed():.0f} s (budget {args.budget_s:.0f} s)", flush=True)
    if problems:
        print("bench/gpu.sh: FAILED: " + "; ".join(problems), file=sys.stderr, flush=True)
        return 1
    print("bench/gpu.sh: passed", flush=True)
    return 0


def end_to_end(
    run: Run,
    checkpoint: Path,
    photos: list[Path],
    correctness: Callable[[servers.Running], dict[str, Any]],
    model_reserve: float,
) -> dict[str, Any]:
    args, budget = run.args, run.budget
    concurrency = common.parse_ints(args.concurrency)
    client = loadgen.choose_client(args.client)
    if note := gpu_http.wrk_note(client):
        print(f"  note: {note}", flush=True)
    plan = gpu_http.LoadPlan(
        concurrency=concurrency,
        bodies=args.bodies.split(","),
        longest=args.duration,
        shortest=1.0,
        warm_up=args.warm_up,
        client=client,
    )
    configs = gpu_http.server_configs(args.gpu_decode.split(","), common.parse_ints(args.workers))
    start_s = gpu_http.START_GUESS_S[run.device.type, args.compile]
    results: list[dict[str, Any]] = []
    not_started: list[str] = []
    log_dir = common.OUT_DIR / "gpu-logs" / run.name
    shutil.rmtree(log_dir, ignore_errors=True)  # this run's server logs only
    for index, config in enumerate(configs):
        after = len(configs) - index - 1
        if budget.left(model_reserve) < start_s + plan.shortest + plan.warm_up:
            not_started.append(config.label)
            print(f"  {config.label}: not started, out of time", flush=True)
            continue
        env = gpu_http.server_env(
            config,
            device=str(run.device),
            compile_model=args.compile,
            max_concurrency=max(concurrency),
            environ=os.environ,
        )
        print(f"\n== {config.label} ({' '.join(f'{k}={v}' for k, v in env.items())}) ==", flush=True)
        result = gpu_http.measure_config(
            config,
            servers.ours(checkpoint, env),
            photos[:64],
            plan,
            budget,
            levels_after=after * plan.levels,
            starts_after=after,
            start_s=start_s,
            reserve=model_reserve,
            log_dir=log_dir,
            on_ready=correctness,
            ready_timeout=max(60.0, budget.left(model_reserve)),
        )
        if "ready_after_s" in result:
            start_s = max(result["ready_after_s"], 5.0)
        results.append(result)
        run.save_partial("http", {"configs": results})
    return {
        "client": client,
        "client_note": gpu_http.wrk_note(client),
        "configs": results,
        "not_started": not_started,
        "plan": {
            "concurrency": concurrency,
            "bodies": plan.bodies,
            "longest_s": plan.longest,
            "warm_up_s": plan.warm_up,
        },
    }


def correctness_step(http: dict[str, Any], thresholds: gpu_correctness.Thresholds) -> dict[str, Any]:
    """The verdict over every server setting that answered: all must pass, and at least one ran."""
    configs = http.get("configs", [])
    checked = {c["label"]: c["correctness"] for c in configs if "correctness" in c}
    lines = {label: gpu_correctness.describe(result) for label, result in checked.items()}
    problems = [f"{c['label']}: server failed ({c['error'].splitlines()[0][:120]})" for c in configs if "error" in c]
    problems += [
        f"{label}: {', '.join(result['problems'])}" for label, result in checked.items() if not result["passed"]
    ]
    if not checked:
        status, summary = "fail", "no server answered (see the http step)"
    elif problems:
        status, summary = "fail", "; ".join(problems)
    else:
        status, summary = "pass", f"{len(checked)} server settings within the thresholds"
    return {"status": status, "summary": summary, "lines": lines, "per_config": checked, "thresholds": vars(thresholds)}


def model_step(
    run: Run,
    loaded: Any,
    photos: list[Path],
    reference: torch.Tensor,
    names: list[str],
    http: dict[str, Any],
) -> dict[str, Any]:
    from model.precision import parse_dtype
    from model.presets import load_eval_tensor

    args, device = run.args, run.device
    dtypes = (
        args.dtypes.split(",")
        if args.dtypes
        else (["fp32", "bf16", "fp16"] if device.type == "cuda" else ["fp32", "bf16"])
    )
    served = next((c["served"] for c in http.get("configs", []) if c.get("served")), None)
    served_dtype = (
        _short_dtype(served["models"][0]["dtype"]) if served else _short_dtype(str(parse_dtype("auto", device)))
    )
    tensors = torch.stack([load_eval_tensor(path.read_bytes(), loaded.meta.preprocessing) for path in photos])
    variants = gpu_model.plan(dtypes, args.modes.split(","), served_dtype)
    return gpu_model.measure(
        loaded,
        device,
        variants,
        common.parse_ints(args.batch_sizes),
        tensors,
        reference,
        names,
        run.budget,
        longest=args.cell_seconds,
        reserve=REPORT_RESERVE_S,
        progress=lambda partial: run.save_partial("model", partial),
    ) | {"served_dtype": served_dtype, "dtypes": dtypes}


def _short_dtype(name: str) -> str:
    name = name.removeprefix("torch.")
    return {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(name, name)


def report_step(run: Run) -> dict[str, Any]:
    run.report["steps"]["report"] = {}  # so the table and the plot see every step
    png = gpu_report.plot(run.report, run.out / "gpu.png")
    table = gpu_report.table(run.report)
    (run.out / "table.md").write_text(table + "\n")
    return {"json": str(run.out / "gpu.json"), "png": str(png), "table": table}


if __name__ == "__main__":
    sys.exit(main())
