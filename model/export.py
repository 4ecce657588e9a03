"""Ship a trained checkpoint: int8 weights (per-output-channel scales), optionally a static
int8 calibration, measured against full precision on the validation set, with a model card.

    python -m model.export --checkpoint runs/catdog/model.safetensors --data ../shared/data/catdog/val \\
        --calibrate ../shared/data/catdog/train --out model/weights/catdog.safetensors

``--calibrate DIR`` runs ``model.quantize``'s observers over images under DIR (never the
validation folder) and stores their state in the checkpoint, so ``ALEXNET_DTYPE=int8``
needs no data at start-up. An input that is already int8 on disk (the shipped file) keeps
its recorded full-precision accuracy; everything else is measured again.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import platform
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from model import quantize
from model.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from model.data import IMAGE_SUFFIXES, CachedImages
from model.evaluate import Report
from model.inference import inference_module
from model.precision import auto_dtype
from model.presets import load_eval_tensor

REFERENCE = "fp32_int8_weights"  # the shipped weights in fp32: what the other paths are compared with


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Quantise a checkpoint to int8, optionally calibrate static int8, write its model card",
        add_help=add_help,
    )
    parser.add_argument("--checkpoint", required=True, help="checkpoint written by model.train (or a shipped one)")
    parser.add_argument("--data", required=True, help="validation image folder")
    parser.add_argument("--out", required=True, help="where the int8 .safetensors goes (the card goes next to it)")
    parser.add_argument("--calibrate", default=None, help="image folder to calibrate static int8 on (not --data)")
    parser.add_argument("--calibration-images", type=int, default=512, help="how many images --calibrate uses")
    parser.add_argument("--command", default=None, help="training command to record in the card")
    parser.add_argument("--cache-dir", default=None)
    return parser


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def calibration_batches(
    root: str | Path, checkpoint: Checkpoint, count: int, *, batch_size: int = 32, seed: int = 0
) -> list[torch.Tensor]:
    """``count`` images under ``root`` (any depth, a seeded random choice) through the evaluation transform."""
    files = sorted(path for path in Path(root).rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images under {root}")
    random.Random(seed).shuffle(files)
    prep = checkpoint.meta.preprocessing
    tensors = [load_eval_tensor(path, prep) for path in files[:count]]
    return [torch.stack(tensors[start : start + batch_size]) for start in range(0, len(tensors), batch_size)]


@torch.inference_mode()
def side_by_side(modules: dict[str, nn.Module], loader: DataLoader) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Top-1 predictions of every module over ``loader`` (same images, same order), and the targets."""
    predicted: dict[str, list[torch.Tensor]] = {name: [] for name in modules}
    targets = []
    for images, labels in loader:
        batch = images.contiguous(memory_format=torch.channels_last)
        for name, module in modules.items():
            predicted[name].append(module(batch).argmax(dim=1))
        targets.append(labels)
    return {name: torch.cat(parts) for name, parts in predicted.items()}, torch.cat(targets)


def report(labels: tuple[str, ...], predicted: torch.Tensor, targets: torch.Tensor) -> Report:
    counts = torch.zeros(len(labels), len(labels), dtype=torch.int64)
    counts.index_put_((targets, predicted), torch.ones_like(targets), accumulate=True)
    return Report(labels, counts.tolist())


def main(args: argparse.Namespace) -> dict[str, object]:
    full = load_checkpoint(args.checkpoint)
    out = Path(args.out)
    save_checkpoint(out, full.network, full.meta, int8=True, calibration=full.calibration)
    shipped = load_checkpoint(out)
    already_int8 = all(
        torch.equal(a, b)
        for a, b in zip(full.network.state_dict().values(), shipped.network.state_dict().values(), strict=True)
    )
    meta, calibration = shipped.meta, shipped.calibration
    if not already_int8:  # new weights: a calibration made for the old ones no longer applies
        meta, calibration = replace(meta, int8={}), {}
    if args.calibrate:
        if Path(args.calibrate).resolve() == Path(args.data).resolve():
            raise SystemExit("--calibrate must not be the validation folder (--data)")
        batches = calibration_batches(args.calibrate, shipped, args.calibration_images)
        found = quantize.calibrate(shipped, batches, source=str(args.calibrate))
        calibration, meta = found.tensors, replace(meta, int8=found.info)
    shipped = Checkpoint(shipped.network, meta, calibration)

    cpu = torch.device("cpu")
    serving_dtype = auto_dtype(cpu)
    modules: dict[str, nn.Module] = {REFERENCE: inference_module(copy.deepcopy(shipped), cpu, torch.float32)}
    if not already_int8:
        modules["fp32_full_precision"] = inference_module(full, cpu, torch.float32)
    modules[f"{str(serving_dtype).removeprefix('torch.')}_int8_weights"] = inference_module(
        copy.deepcopy(shipped), cpu, serving_dtype
    )
    if calibration:
        modules["int8_static"] = quantize.compile_int8(inference_module(copy.deepcopy(shipped), cpu, torch.int8))
    images = CachedImages(args.data, meta.preprocessing, split="eval", cache_dir=args.cache_dir)
    predicted, targets = side_by_side(modules, DataLoader(images, batch_size=64))
    reports = {name: report(meta.labels, found, targets) for name, found in predicted.items()}
    recorded = dict(full.meta.training.get("val_accuracy_percent", {}))
    measured = recorded | {name: round(100 * result.accuracy, 2) for name, result in reports.items()}
    agreement = {
        name: round(100 * (found == predicted[REFERENCE]).float().mean().item(), 2)
        for name, found in predicted.items()
        if name != REFERENCE
    }
    training = full.meta.training | {"val_accuracy_percent": measured, "top1_agreement_with_fp32_percent": agreement}
    meta = replace(meta, training=training)
    save_checkpoint(out, shipped.network, meta, int8=True, calibration=calibration)  # now with the measurements
    served = "int8_static" if calibration else REFERENCE
    card: dict[str, Any] = {
        "file": out.name,
        "size_bytes": out.stat().st_size,
        "sha256": sha256(out),
        "val_accuracy_percent": measured,
        "top1_agreement_with_fp32_percent": agreement,
        "int8_report": reports[served].to_dict(),
        "reports": {name: result.to_dict() for name, result in reports.items()},
        "int8_calibration": {key: value for key, value in meta.int8.items() if key != "layout"},
        "training": {key: value for key, value in full.meta.training.items() if not key.startswith(("val_", "top1_"))},
        "command": args.command,
        "hardware": f"{platform.machine()} {platform.processor()}".strip(),
    }
    out.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps({k: v for k, v in card.items() if k not in ("int8_report", "reports", "training")}, indent=2))
    print(reports[served].table())
    return card


if __name__ == "__main__":
    main(get_args_parser().parse_args())
