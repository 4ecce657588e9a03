"""Step 2 of ``bench/gpu.sh``: the served path against the CPU fp32 reference, photo by photo.

The reference decodes with PIL and runs the network eager in fp32 on the CPU with torch's own
``LocalResponseNorm`` (``bench.models``' reference variant). The served answers come from a real
server over HTTP, so they go through whatever that server does: device decode, its dtype, its
compiled graphs padded to batch buckets (answers are requested concurrently, so batches form).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import torch

from bench import models
from bench.models import Variant
from model.checkpoint import Checkpoint
from model.presets import load_eval_tensor

CPU = torch.device("cpu")


@dataclass(frozen=True)
class Thresholds:
    """The issue's bar: top-1 agreement and the largest probability difference, on enough photos."""

    min_agreement: float = 0.995
    max_prob_diff: float = 0.02
    min_photos: int = 500
    real_photos: bool = True  # synthetic images count only in the rehearsal


def reference_probabilities(checkpoint: Checkpoint, photos: Sequence[Path], batch_size: int = 32) -> torch.Tensor:
    """CPU fp32 probabilities (one row per photo): PIL decode, eval transform, eager NCHW network."""
    prep = checkpoint.meta.preprocessing
    module = models.build(checkpoint, CPU, Variant("fp32", channels_last=False, stock_lrn=True))
    rows = []
    for start in range(0, len(photos), batch_size):
        batch = torch.stack([load_eval_tensor(path.read_bytes(), prep) for path in photos[start : start + batch_size]])
        rows.append(models.probabilities(module, batch))
    return torch.cat(rows)


def served_probabilities(
    predict_url: str, photos: Sequence[Path], num_classes: int, *, concurrency: int = 16, timeout: float = 60.0
) -> tuple[torch.Tensor, dict[str, str]]:
    """Every photo POSTed (multipart, ``top_k`` = all classes) ``concurrency`` at a time; returns the
    probabilities (NaN rows for photos without a 200) and, per failed photo, why."""
    rows = torch.full((len(photos), num_classes), math.nan)
    failures: dict[str, str] = {}

    def ask(index: int) -> None:
        path = photos[index]
        try:
            response = client.post(
                predict_url,
                params={"top_k": num_classes},
                files={"file": (path.name, path.read_bytes(), "image/jpeg")},
            )
        except httpx.HTTPError as exc:
            failures[path.name] = f"{type(exc).__name__}: {exc}"
            return
        if response.status_code != 200:
            failures[path.name] = f"HTTP {response.status_code}: {response.text[:200]}"
            return
        for prediction in response.json()["predictions"]:
            rows[index, prediction["index"]] = prediction["probability"]

    with httpx.Client(timeout=timeout) as client, ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(ask, range(len(photos))))
    return rows, failures


@dataclass(frozen=True)
class Agreement:
    images: int
    answered: int
    top1_agreement: float
    max_prob_diff: float
    mean_prob_diff: float
    worst: list[dict[str, Any]]  # the photos that differ most, largest first
    disagreements: list[str]  # photos whose top-1 class differs (or that got no answer)


def compare(served: torch.Tensor, reference: torch.Tensor, names: Sequence[str], worst: int = 5) -> Agreement:
    """Top-1 agreement over all photos (an unanswered one counts as a disagreement) and the
    probability differences over the answered ones."""
    answered = ~served.isnan().any(dim=1)
    diff = (served - reference).abs().amax(dim=1)
    agree = (served.argmax(dim=1) == reference.argmax(dim=1)) & answered
    answered_diff = diff[answered]
    order = sorted(range(len(names)), key=lambda i: -diff[i].item() if answered[i] else math.inf)[:worst]
    return Agreement(
        images=len(names),
        answered=int(answered.sum()),
        top1_agreement=agree.float().mean().item() if len(names) else 0.0,
        max_prob_diff=answered_diff.max().item() if answered_diff.numel() else math.inf,
        mean_prob_diff=answered_diff.mean().item() if answered_diff.numel() else math.inf,
        worst=[
            {
                "photo": names[i],
                "max_prob_diff": diff[i].item(),
                "served_top1": int(served[i].argmax()),
                "reference_top1": int(reference[i].argmax()),
            }
            for i in order
            if answered[i]
        ],
        disagreements=[names[i] for i in range(len(names)) if not agree[i]],
    )


def verdict(agreement: Agreement, thresholds: Thresholds, real_photos: bool) -> list[str]:
    """Why ``agreement`` misses ``thresholds`` (empty when it passes)."""
    problems = []
    if (thresholds.real_photos and not real_photos) or agreement.images < thresholds.min_photos:
        kind = "real photos" if real_photos else "photos (synthetic here, not real)"
        problems.append(f"checked {agreement.images} {kind}, need ≥ {thresholds.min_photos} real photos")
    if agreement.answered < agreement.images:
        problems.append(f"{agreement.images - agreement.answered} of {agreement.images} photos got no answer")
    if agreement.top1_agreement < thresholds.min_agreement:
        problems.append(
            f"top-1 agreement {100 * agreement.top1_agreement:.2f}% < {100 * thresholds.min_agreement:.2f}%"
        )
    if not agreement.max_prob_diff <= thresholds.max_prob_diff:
        problems.append(f"max probability difference {agreement.max_prob_diff:.4f} > {thresholds.max_prob_diff}")
    return problems


def check(
    predict_url: str,
    photos: Sequence[Path],
    reference: torch.Tensor,
    thresholds: Thresholds,
    *,
    real_photos: bool,
    concurrency: int = 16,
) -> dict[str, Any]:
    """Ask the server about every photo and judge its answers against ``reference``."""
    served, failures = served_probabilities(predict_url, photos, reference.shape[1], concurrency=concurrency)
    agreement = compare(served, reference, [path.name for path in photos])
    problems = verdict(agreement, thresholds, real_photos)
    return asdict(agreement) | {
        "passed": not problems,
        "problems": problems,
        "failures": dict(list(failures.items())[:10]),
        "thresholds": asdict(thresholds),
    }


def describe(result: dict[str, Any]) -> str:
    """One line: the numbers and the verdict."""
    line = (
        f"top-1 agreement {100 * result['top1_agreement']:.2f}% on {result['answered']}/{result['images']} photos, "
        f"max probability difference {result['max_prob_diff']:.4f} (mean {result['mean_prob_diff']:.5f})"
    )
    return line + (" — PASS" if result["passed"] else " — FAIL: " + "; ".join(result["problems"]))
