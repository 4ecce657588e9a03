"""Step 5 of ``bench/gpu.sh``: the run's JSON, its plot and its markdown table.

The JSON is rewritten after every step, so a run cut short still leaves what it measured.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench import common

STEPS = ("versions", "correctness", "model", "http", "report")
# The targets on one H100/H200-class GPU.
TARGET_E2E_IMG_S, TARGET_E2E_CONCURRENCY = 5000.0, 256
TARGET_P50_MS = 5.0
TARGET_MODEL_IMG_S, TARGET_MODEL_BATCH = 30000.0, 256


def write(report: dict[str, Any], directory: Path) -> Path:
    return common.write_json(directory / "gpu.json", report)


def missing_steps(report: dict[str, Any]) -> list[str]:
    """Steps without a record in ``report['steps']``: a complete run has none."""
    return [name for name in STEPS if name not in report.get("steps", {})]


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def model_table(model: dict[str, Any]) -> list[str]:
    lines = ["| dtype | mode | batch | ms/batch | img/s | first call s |", "|---|---|---:|---:|---:|---:|"]
    lines += [
        f"| {c['dtype']} | {c['mode']} | {c['batch_size']} | {c['ms_per_batch']:.3f} | {_fmt(c['img_s'])} "
        f"| {c['first_call_s']:.1f} |"
        for c in model.get("cells", [])
    ]
    accuracy = model.get("accuracy_vs_cpu_fp32", {})
    if accuracy:
        lines += ["", "| model variant vs CPU fp32 | top-1 agreement | max prob diff |", "|---|---:|---:|"]
        lines += [
            f"| {name} | {100 * row['top1_agreement']:.2f}% | {row['max_prob_diff']:.4f} |"
            for name, row in accuracy.items()
        ]
    return lines


def http_rows(http: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(config label, level) for every measured level."""
    return [(config["label"], level) for config in http.get("configs", []) for level in config["levels"]]


def http_table(http: dict[str, Any]) -> list[str]:
    lines = [
        "| server | body | c | img/s | p50 ms | p99 ms | mean batch | errors | client |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for config in http.get("configs", []):
        if "error" in config:
            lines.append(f"| {config['label']} | failed: {config['error'].splitlines()[0][:80]} | | | | | | | |")
    for label, level in http_rows(http):
        if "error" in level:
            lines.append(f"| {label} | {level['body']} | {level['concurrency']} | failed | | | | | |")
            continue
        batch = _fmt(level["mean_batch"]) if level["mean_batch"] is not None else "-"
        lines.append(
            f"| {label} | {level['body']} | {level['concurrency']} | {_fmt(level['img_s'])} | {level['p50_ms']:.2f} "
            f"| {level['p99_ms']:.2f} | {batch} | {sum(level['errors'].values())} | {level['client']} |"
        )
    return lines


def targets(report: dict[str, Any]) -> list[str]:
    """The issue's GPU targets against this run's best numbers (only meaningful on the device)."""
    steps = report.get("steps", {})
    levels = [level for _, level in http_rows(steps.get("http", {})) if "error" not in level]
    cells = steps.get("model", {}).get("cells", [])
    lines = []
    high = [level["img_s"] for level in levels if level["concurrency"] == TARGET_E2E_CONCURRENCY]
    if high:
        lines.append(f"- end to end c={TARGET_E2E_CONCURRENCY}: best {max(high):,.0f} img/s (target ≥ 5,000)")
    low = [level["p50_ms"] for level in levels if level["concurrency"] == 1]
    if low:
        lines.append(f"- end to end c=1: best p50 {min(low):.2f} ms (target ≤ {TARGET_P50_MS:g} ms)")
    big = [cell["img_s"] for cell in cells if cell["batch_size"] == TARGET_MODEL_BATCH]
    if big:
        lines.append(f"- model only b={TARGET_MODEL_BATCH}: best {max(big):,.0f} img/s (target ≥ 30,000)")
    return lines


def table(report: dict[str, Any]) -> str:
    """Everything a person reads after the run, as markdown."""
    steps = report.get("steps", {})
    lines = [f"## {report['run']['name']} ({report['run']['mode']})", "", report["steps"]["versions"]["summary"], ""]
    correctness = steps.get("correctness", {})
    lines.append(f"Correctness ({correctness.get('status', 'not run')}):")
    lines += [f"- {label}: {line}" for label, line in correctness.get("lines", {}).items()]
    if "model" in steps:
        lines += ["", "Model only:", "", *model_table(steps["model"])]
        if steps["model"].get("skipped"):
            lines.append(f"\nskipped for time: {', '.join(steps['model']['skipped'])}")
    if "http" in steps:
        lines += ["", "End to end:", "", *http_table(steps["http"])]
        skipped = [f"{c['label']}: {', '.join(c['skipped'])}" for c in steps["http"]["configs"] if c.get("skipped")]
        skipped += [f"{label}: not started" for label in steps["http"].get("not_started", [])]
        if skipped:
            lines.append("\nskipped for time: " + "; ".join(skipped))
    if checks := targets(report):
        lines += ["", "Targets:", *checks]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> Path:
    """Three panels: model img/s by batch size, end-to-end img/s and p99 by concurrency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = report["steps"]
    figure, (model_axis, throughput, tail) = plt.subplots(1, 3, figsize=(16, 4.6), constrained_layout=True)
    cells = steps.get("model", {}).get("cells", [])
    for name in dict.fromkeys(f"{c['dtype']} {c['mode']}" for c in cells):
        rows = sorted((c for c in cells if f"{c['dtype']} {c['mode']}" == name), key=lambda c: c["batch_size"])
        model_axis.plot([c["batch_size"] for c in rows], [c["img_s"] for c in rows], marker="o", label=name)
    _axes(model_axis, "batch size", "images / s", "model only")
    series: dict[str, list[dict[str, Any]]] = {}
    for label, level in http_rows(steps.get("http", {})):
        if "error" not in level:
            series.setdefault(f"{label}, {level['body']}", []).append(level)
    for name, levels in series.items():
        levels = sorted(levels, key=lambda level: level["concurrency"])
        xs = [level["concurrency"] for level in levels]
        throughput.plot(xs, [level["img_s"] for level in levels], marker="o", label=name)
        tail.plot(xs, [level["p99_ms"] for level in levels], marker="o", label=name)
    _axes(throughput, "concurrency", "images / s", "end to end")
    _axes(tail, "concurrency", "p99 latency (ms)", "end to end, p99")
    figure.suptitle(f"{report['run']['name']}: {steps['versions']['summary'][:110]}", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _axes(axis: Any, xlabel: str, ylabel: str, title: str) -> None:
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    axis.set_xscale("log", base=2)
    ticks = sorted({x for line in axis.get_lines() for x in line.get_xdata()})
    if ticks:
        axis.set_xticks(ticks)
    axis.xaxis.set_major_formatter(ScalarFormatter())
    axis.xaxis.set_minor_formatter(NullFormatter())
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(True, which="both", alpha=0.3)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=7)


def failures(report: dict[str, Any]) -> list[str]:
    """Why the run fails: correctness missed, a step missing or broken."""
    problems = [f"step {name} did not run" for name in missing_steps(report)]
    steps = report.get("steps", {})
    correctness = steps.get("correctness", {})
    if correctness.get("status") != "pass":
        problems.append(f"correctness: {correctness.get('summary', 'not checked')}")
    problems += [f"{name}: {steps[name]['error']}" for name in STEPS if "error" in steps.get(name, {})]
    failed = sum(sum(level.get("errors", {}).values()) for _, level in http_rows(steps.get("http", {})))
    failed_levels = [
        f"{label} {level['body']} c={level['concurrency']}"
        for label, level in http_rows(steps.get("http", {}))
        if "error" in level
    ]
    if failed:
        problems.append(f"end to end: {failed} requests did not get a 200 (see the errors column)")
    if failed_levels:
        problems.append(f"end to end: load generator failed at {', '.join(failed_levels)}")
    return problems
