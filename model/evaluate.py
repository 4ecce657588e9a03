"""Evaluate a checkpoint on an image folder: accuracy, per-class precision/recall,
confusion matrix.

    python -m model.evaluate --checkpoint model/weights/catdog.safetensors --data DIR [--json] [--confusion-png PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from model.checkpoint import Checkpoint, load_checkpoint
from model.data import CachedImages
from model.inference import inference_module
from model.precision import parse_dtype, resolve_device
from model.quantize import compile_int8


@dataclass(frozen=True)
class Report:
    labels: tuple[str, ...]
    confusion: list[list[int]]  # rows: true class, columns: predicted class

    @property
    def total(self) -> int:
        return sum(map(sum, self.confusion))

    @property
    def accuracy(self) -> float:
        return sum(self.confusion[i][i] for i in range(len(self.labels))) / max(1, self.total)

    def precision(self, i: int) -> float:
        predicted = sum(row[i] for row in self.confusion)
        return self.confusion[i][i] / predicted if predicted else 0.0

    def recall(self, i: int) -> float:
        actual = sum(self.confusion[i])
        return self.confusion[i][i] / actual if actual else 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "images": self.total,
            "accuracy": self.accuracy,
            "per_class": {
                label: {"precision": self.precision(i), "recall": self.recall(i), "support": sum(self.confusion[i])}
                for i, label in enumerate(self.labels)
            },
            "confusion_matrix": {"labels": list(self.labels), "rows_true_columns_predicted": self.confusion},
        }

    def table(self) -> str:
        width = max(8, *(len(label) for label in self.labels))
        lines = [f"images: {self.total}   accuracy: {100 * self.accuracy:.2f}%", ""]
        lines.append(f"{'class':<{width}}  precision  recall  support")
        for i, label in enumerate(self.labels):
            lines.append(
                f"{label:<{width}}  {self.precision(i):9.4f}  {self.recall(i):6.4f}  {sum(self.confusion[i]):7d}"
            )
        lines += ["", "confusion matrix (rows: true, columns: predicted)"]
        lines.append(" " * width + "".join(f"{label:>{width + 2}}" for label in self.labels))
        for label, row in zip(self.labels, self.confusion, strict=True):
            lines.append(f"{label:<{width}}" + "".join(f"{count:>{width + 2}d}" for count in row))
        return "\n".join(lines)


@torch.inference_mode()
def confusion_matrix(
    module: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], num_classes: int, device: torch.device
) -> list[list[int]]:
    """Run ``module`` (uint8 batches in, logits out) over ``loader``; count (true, predicted)."""
    counts = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for images, targets in loader:
        images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        predicted = module(images).argmax(dim=1).cpu()
        counts.index_put_((targets, predicted), torch.ones_like(targets), accumulate=True)
    return counts.tolist()


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Evaluate an AlexNet checkpoint on an image folder", add_help=add_help)
    parser.add_argument("--checkpoint", required=True, help="model file (.safetensors, or a .pth state dict)")
    parser.add_argument("--data", required=True, help="image folder: DIR/<class>/<image>")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="fp32", help="fp32 (reference), bf16, fp16, int8 (calibrated, CPU) or auto")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--cache-dir", default=None, help="keep decoded images here between runs")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--confusion-png", type=Path, default=None, help="also draw the confusion matrix here")
    return parser


def evaluate_checkpoint(
    checkpoint: Checkpoint,
    data: str | Path,
    *,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    batch_size: int = 64,
    cache_dir: str | Path | None = None,
) -> Report:
    """Accuracy and confusion matrix of ``checkpoint`` on an image folder, run as served."""
    module = inference_module(checkpoint, device, dtype)
    if dtype == torch.int8:  # the int8 kernels, as served (run eagerly the graph only simulates them)
        module = compile_int8(module)
    images = CachedImages(data, checkpoint.meta.preprocessing, split="eval", cache_dir=cache_dir)
    if tuple(images.classes) != checkpoint.meta.labels:
        print(f"note: folder classes {images.classes} vs model labels {list(checkpoint.meta.labels)}", file=sys.stderr)
    loader = DataLoader(images, batch_size=batch_size)
    progress = tqdm(
        loader, desc="inference", unit="batch", file=sys.stderr, mininterval=1 if sys.stderr.isatty() else 10
    )
    return Report(checkpoint.meta.labels, confusion_matrix(module, progress, checkpoint.meta.num_classes, device))


def plot_confusion(report: Report, path: Path) -> Path:
    """The confusion matrix as a PNG: counts in the cells, shaded by each true class's share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = torch.tensor(report.confusion, dtype=torch.float64)
    shares = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    size = min(20.0, 2.0 + 0.6 * len(report.labels))
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(shares.numpy(), cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(report.labels))
    ax.set_xticks(ticks, report.labels, rotation=45, ha="right")
    ax.set_yticks(ticks, report.labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{report.total} images, accuracy {100 * report.accuracy:.2f}%")
    if len(report.labels) <= 30:
        for row in ticks:
            for column in ticks:
                color = "white" if shares[row, column] > 0.5 else "black"
                ax.text(column, row, str(report.confusion[row][column]), ha="center", va="center", color=color)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(args: argparse.Namespace) -> Report:
    device = resolve_device(args.device)
    report = evaluate_checkpoint(
        load_checkpoint(args.checkpoint),
        args.data,
        device=device,
        dtype=parse_dtype(args.dtype, device),
        batch_size=args.batch_size,
        cache_dir=args.cache_dir,
    )
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.table())
    if args.confusion_png:
        print(f"wrote {plot_confusion(report, args.confusion_png)}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main(get_args_parser().parse_args())
