"""Throughput and p99 latency against concurrency, one line per server (matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def plot_levels(series: Mapping[str, Sequence[Mapping[str, Any]]], path: Path, title: str) -> Path:
    """``series`` maps a label to its levels (dicts with ``concurrency``, ``img_s``, ``p99_ms``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    figure, (throughput, tail) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    ticks = sorted({level["concurrency"] for levels in series.values() for level in levels})
    for label, levels in series.items():
        ordered = sorted(levels, key=lambda level: level["concurrency"])
        concurrency = [level["concurrency"] for level in ordered]
        throughput.plot(concurrency, [level["img_s"] for level in ordered], marker="o", label=label)
        tail.plot(concurrency, [level["p99_ms"] for level in ordered], marker="o", label=label)
    for axis, ylabel in ((throughput, "images / s"), (tail, "p99 latency (ms)")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(ticks)
        axis.xaxis.set_major_formatter(ScalarFormatter())
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.set_xlabel("concurrency (requests in flight)")
        axis.set_ylabel(ylabel)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    throughput.set_ylim(bottom=0)
    tail.set_yscale("log")
    tail.yaxis.set_major_formatter(ScalarFormatter())
    figure.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
