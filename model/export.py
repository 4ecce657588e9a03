"""Ship a trained checkpoint: int8 weights (per-output-channel scales), measured against
full precision on the validation set, with a model card.

    python -m model.export --checkpoint runs/catdog/model.safetensors --data ../shared/data/catdog/val \\
        --out model/weights/catdog.safetensors
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
from dataclasses import replace
from pathlib import Path

import torch

from model.checkpoint import load_checkpoint, save_checkpoint
from model.evaluate import Report, evaluate_checkpoint
from model.precision import auto_dtype


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Quantise a checkpoint to int8 and write its model card", add_help=add_help
    )
    parser.add_argument("--checkpoint", required=True, help="full-precision checkpoint written by model.train")
    parser.add_argument("--data", required=True, help="validation image folder")
    parser.add_argument("--out", required=True, help="where the int8 .safetensors goes (the card goes next to it)")
    parser.add_argument("--command", default=None, help="training command to record in the card")
    parser.add_argument("--cache-dir", default=None)
    return parser


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main(args: argparse.Namespace) -> dict[str, object]:
    full = load_checkpoint(args.checkpoint)
    out = Path(args.out)
    save_checkpoint(out, full.network, full.meta, int8=True)
    shipped = load_checkpoint(out)
    cpu = torch.device("cpu")
    serving_dtype = auto_dtype(cpu)

    def accuracy(report: Report) -> float:
        return round(100 * report.accuracy, 2)

    results = {
        "fp32_full_precision": evaluate_checkpoint(full, args.data, device=cpu, cache_dir=args.cache_dir),
        "fp32_int8_weights": evaluate_checkpoint(shipped, args.data, device=cpu, cache_dir=args.cache_dir),
        f"{str(serving_dtype).removeprefix('torch.')}_int8_weights": evaluate_checkpoint(
            shipped, args.data, device=cpu, dtype=serving_dtype, cache_dir=args.cache_dir
        ),
    }
    measured = {name: accuracy(report) for name, report in results.items()}
    meta = replace(shipped.meta, training=shipped.meta.training | {"val_accuracy_percent": measured})
    save_checkpoint(out, shipped.network, meta, int8=True)  # same weights, metadata now carries the measurements
    card = {
        "file": out.name,
        "size_bytes": out.stat().st_size,
        "sha256": sha256(out),
        "val_accuracy_percent": measured,
        "int8_report": results["fp32_int8_weights"].to_dict(),
        "training": full.meta.training,
        "command": args.command,
        "hardware": f"{platform.machine()} {platform.processor()}".strip(),
    }
    out.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps({k: v for k, v in card.items() if k not in ("int8_report", "training")}, indent=2))
    print(results["fp32_int8_weights"].table())
    return card


if __name__ == "__main__":
    main(get_args_parser().parse_args())
