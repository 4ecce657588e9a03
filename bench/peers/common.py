"""What the peer servers share with each other and with us: checkpoint loading, preprocessing, model.

Preprocessing is ``model.presets.load_eval_tensor`` (the function our service calls) and the
module comes from ``model.inference.inference_module``, so only the serving style differs.
By default the peers run what a tutorial would: fp32, NCHW, eager, ``torch.nn.LocalResponseNorm``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.models import Variant, build
from model.checkpoint import load_checkpoint
from model.precision import resolve_device
from model.presets import Preprocessing, load_eval_tensor

MAX_PIXELS = 40_000_000


@dataclass(frozen=True)
class PeerModel:
    module: nn.Module
    device: torch.device
    name: str
    labels: tuple[str, ...]
    prep: Preprocessing

    def preprocess(self, data: bytes) -> torch.Tensor:
        return load_eval_tensor(data, self.prep, max_pixels=MAX_PIXELS)

    def probabilities(self, batch: torch.Tensor) -> list[list[float]]:
        """uint8 NCHW batch → probabilities per image."""
        with torch.inference_mode():
            logits = self.module(batch.to(self.device, non_blocking=True))
            return logits.float().softmax(dim=1).cpu().tolist()

    def answer(self, probabilities: list[float], batch_size: int) -> dict[str, Any]:
        """Our response shape (top-k = all classes), plus the batch size the image ran in."""
        order = sorted(range(len(probabilities)), key=probabilities.__getitem__, reverse=True)
        predictions = [{"label": self.labels[i], "index": i, "probability": probabilities[i]} for i in order]
        return {
            "model": self.name,
            **{k: predictions[0][k] for k in ("label", "probability")},
            "predictions": predictions,
            "batch_size": batch_size,
        }


def load(checkpoint: Path, device: str, *, dtype: str = "fp32", fast_lrn: bool = False) -> PeerModel:
    loaded = load_checkpoint(checkpoint)
    target = resolve_device(device)
    variant = Variant(dtype, channels_last=False, stock_lrn=not fast_lrn)
    meta = loaded.meta
    return PeerModel(build(loaded, target, variant), target, meta.name, meta.labels, meta.preprocessing)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda")
    parser.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    parser.add_argument("--fast-lrn", action="store_true", help="our GEMM LRN instead of torch's (same function)")
    return parser
