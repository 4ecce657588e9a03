"""Step 3 of ``bench/gpu.sh``: the model alone, by batch size and precision, eager against graphs.

"graphs" is what the server runs with ``ALEXNET_COMPILE=1`` on CUDA: ``torch.compile`` in
``reduce-overhead`` mode with static shapes, i.e. CUDA graphs per batch size (on the CPU, in
the rehearsal, the same call compiles without graphs). Inputs are already on the device as
float32 channels-last, as ``app.engine.Engine.run_tensors`` hands them to the model; a step is
forward + softmax, synchronised once per timed run. Each (dtype, mode) is also checked against
the CPU fp32 reference on the photos (CPU-decoded, so this isolates the model's precision).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from app.engine import allow_recompiles
from bench import models
from bench.gpu_budget import Budget
from bench.gpu_correctness import compare
from bench.models import Variant
from model.checkpoint import Checkpoint

MODES = ("eager", "graphs")
COMPILE_GUESS_S = {"cuda": 25.0, "cpu": 40.0}  # first compile of a variant, until one is measured


@dataclass(frozen=True)
class Cell:
    dtype: str
    mode: str
    batch_size: int
    ms_per_batch: float
    img_s: float
    runs: int
    first_call_s: float  # the first call: compiling and capturing for "graphs"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def runner(checkpoint: Checkpoint, device: torch.device, dtype: str, mode: str) -> nn.Module:
    module = models.build(checkpoint, device, Variant(dtype, channels_last=True))
    if mode == "graphs":
        return torch.compile(module, mode="reduce-overhead", dynamic=False)  # type: ignore[return-value]
    return module


def device_input(pixels: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 NCHW on the host → float32 channels-last on ``device``, as the engine feeds the model."""
    return models.to_device(pixels, device, channels_last=True).to(torch.float32, memory_format=torch.channels_last)


def step(module: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return module(batch).float().softmax(dim=1)


def time_cell(
    module: nn.Module, batch: torch.Tensor, device: torch.device, seconds: float, min_runs: int = 3
) -> tuple[float, float, int]:
    """(first call s, median ms per batch, runs): one unmeasured call more, then timed runs of
    ``repeat`` steps each (enough to last ~50 ms), synchronised per run, for ``seconds``."""
    started = time.perf_counter()
    step(module, batch)
    sync(device)
    first = time.perf_counter() - started
    step(module, batch)
    sync(device)
    started = time.perf_counter()
    step(module, batch)
    sync(device)
    repeat = max(1, min(200, int(0.05 / max(time.perf_counter() - started, 1e-6))))
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(samples) < min_runs or time.perf_counter() < deadline:
        started = time.perf_counter()
        for _ in range(repeat):
            step(module, batch)
        sync(device)
        samples.append((time.perf_counter() - started) / repeat)
    return first, 1000 * statistics.median(samples), len(samples) * repeat


def photo_probabilities(
    module: nn.Module, tensors: torch.Tensor, batch_size: int, device: torch.device
) -> torch.Tensor:
    """Probabilities for every photo, in batches of exactly ``batch_size`` (the last one padded
    with repeats, as static graphs need), on the CPU."""
    rows = []
    for start in range(0, len(tensors), batch_size):
        chunk = tensors[start : start + batch_size]
        padded = torch.cat([chunk, chunk[:1].expand(batch_size - len(chunk), *chunk.shape[1:])])
        rows.append(step(module, device_input(padded, device))[: len(chunk)].cpu())
    return torch.cat(rows)


def plan(dtypes: Sequence[str], modes: Sequence[str], served: str) -> list[tuple[str, str]]:
    """(dtype, mode) in order of value when time runs short: every eager variant (cheap), then
    graphs for the served dtype, then graphs for the others."""
    eager = [(dtype, "eager") for dtype in dtypes if "eager" in modes]
    graphs = [(dtype, "graphs") for dtype in sorted(dtypes, key=lambda d: d != served) if "graphs" in modes]
    return eager + graphs


def measure(
    checkpoint: Checkpoint,
    device: torch.device,
    variants: Sequence[tuple[str, str]],
    batch_sizes: Sequence[int],
    photos: torch.Tensor,
    reference: torch.Tensor,
    names: Sequence[str],
    budget: Budget,
    *,
    longest: float,
    shortest: float = 0.2,
    reserve: float = 0.0,
    log: Callable[[str], None] = print,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Every (variant, batch size) cell the budget allows; the rest is listed as skipped.
    ``progress`` gets the partial result after each variant (so a run cut short keeps it)."""
    allow_recompiles()
    cells: list[Cell] = []
    accuracy: dict[str, dict[str, Any]] = {}
    skipped: list[str] = []
    compile_s = COMPILE_GUESS_S.get(device.type, 40.0)
    remaining = len(variants) * len(batch_sizes)
    for dtype, mode in variants:
        module = None
        for size in batch_sizes:
            overhead = 0.2 + (compile_s if mode == "graphs" else 0.0)
            seconds = budget.slot(remaining, longest=longest, shortest=shortest, overhead=overhead, reserve=reserve)
            remaining -= 1
            if seconds is None:
                skipped.append(f"{dtype} {mode} b={size}")
                continue
            if module is None:
                module = runner(checkpoint, device, dtype, mode)  # a copy of the weights each
            first, ms, runs = time_cell(module, device_input(_cycle(photos, size), device), device, seconds)
            if mode == "graphs":
                compile_s = first
            cell = Cell(dtype, mode, size, ms, 1000 * size / ms, runs, first)
            cells.append(cell)
            log(
                f"  {dtype:4} {mode:6} b={size:<4} {cell.ms_per_batch:9.3f} ms/batch  {cell.img_s:10.1f} img/s"
                f"  (first call {first:.1f} s)"
            )
        if module is not None:
            measured = max(cell.batch_size for cell in cells if (cell.dtype, cell.mode) == (dtype, mode))
            probabilities = photo_probabilities(module, photos, measured, device)
            agreement = compare(probabilities, reference, names)
            accuracy[f"{dtype} {mode}"] = {
                "batch_size": measured,
                "top1_agreement": agreement.top1_agreement,
                "max_prob_diff": agreement.max_prob_diff,
                "mean_prob_diff": agreement.mean_prob_diff,
            }
            log(
                f"  {dtype} {mode} vs CPU fp32 on {len(names)} photos: top-1 agreement "
                f"{100 * agreement.top1_agreement:.2f}%, max probability difference {agreement.max_prob_diff:.4f}"
            )
            del module
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if progress is not None:
            progress(_result(cells, accuracy, skipped))
    return _result(cells, accuracy, skipped)


def _result(cells: list[Cell], accuracy: dict[str, dict[str, Any]], skipped: list[str]) -> dict[str, Any]:
    return {
        "cells": [cell.__dict__ for cell in cells],
        "accuracy_vs_cpu_fp32": accuracy,
        "skipped": list(skipped),
        "input": "float32 channels-last on the device; step = forward + softmax",
    }


def _cycle(photos: torch.Tensor, size: int) -> torch.Tensor:
    return photos[torch.arange(size) % len(photos)]
