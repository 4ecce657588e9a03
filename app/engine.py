"""The torch side of the service: load, warm up, preprocess one upload, run one batch.

Routes and the batcher never import torch; they hand opaque tensors to this module.
"""

from __future__ import annotations

import logging
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from app.config import Settings
from app.gate import CPU_TURNS
from model.checkpoint import load_checkpoint
from model.inference import inference_module
from model.precision import parse_dtype, resolve_device
from model.presets import load_eval_tensor

logger = logging.getLogger(__name__)

# PIL format names we accept (JPEG, PNG, WebP, BMP, GIF's first frame, TIFF).
ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "MPO"})


def batch_buckets(max_batch_size: int) -> list[int]:
    """Batch sizes the model is compiled and warmed for: powers of two up to the maximum."""
    sizes = [1]
    while sizes[-1] * 2 < max_batch_size:
        sizes.append(sizes[-1] * 2)
    if max_batch_size > 1:
        sizes.append(max_batch_size)
    return sizes


@dataclass(frozen=True)
class ModelInfo:
    name: str
    labels: tuple[str, ...]
    input_size: int
    resize_size: int
    device: str
    dtype: str
    compiled: bool
    arch: str


class Engine:
    """A loaded model ready to run batches of preprocessed images."""

    def __init__(self, settings: Settings) -> None:
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        checkpoint = load_checkpoint(settings.checkpoint, labels=settings.label_list)
        self.device = resolve_device(settings.device)
        self.dtype = parse_dtype(settings.dtype, self.device)
        self.prep = checkpoint.meta.preprocessing
        self.max_image_pixels = settings.max_image_pixels
        self.buckets = batch_buckets(settings.max_batch_size)
        self.compiled = settings.compile if settings.compile is not None else self.device.type == "cpu"
        self.takes_turns = settings.cpu_turns and self.device.type == "cpu"
        module = inference_module(checkpoint, self.device, self.dtype)  # takes the network over
        # CUDA graphs (reduce-overhead) need static shapes, so on CUDA batches are padded
        # up to a bucket. On the CPU one graph with a dynamic batch size serves every
        # size without padding; warm-up compiles it (sizes 1 and 2 are the two compiles).
        self._pad_to_bucket = self.compiled and self.device.type == "cuda"
        if not self.compiled:
            self._module = module
        elif self._pad_to_bucket:
            self._module = torch.compile(module, mode="reduce-overhead", dynamic=False)
        else:
            self._module = torch.compile(module, dynamic=None)
        meta = checkpoint.meta
        self.info = ModelInfo(
            name=meta.name,
            labels=meta.labels,
            input_size=self.prep.input_size,
            resize_size=self.prep.resize_size,
            device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch."),
            compiled=self.compiled,
            arch=meta.arch,
        )

    def preprocess(self, data: bytes) -> torch.Tensor:
        """Upload bytes → uint8 CHW tensor; raises ``model.presets.ImageError`` subclasses."""
        with self._turn(exclusive=False):
            return load_eval_tensor(data, self.prep, max_pixels=self.max_image_pixels, formats=ACCEPTED_FORMATS)

    def _turn(self, *, exclusive: bool) -> AbstractContextManager[None]:
        if not self.takes_turns:
            return nullcontext()
        return CPU_TURNS.exclusive() if exclusive else CPU_TURNS.shared()

    def warm_up(self) -> float:
        """Run every bucket size once (compiling it when enabled); returns seconds taken."""
        started = time.monotonic()
        size = self.prep.input_size
        for bucket in self.buckets:
            self.run_tensors(torch.zeros(bucket, 3, size, size, dtype=torch.uint8))
        seconds = time.monotonic() - started
        logger.info("warmed up batch sizes %s in %.1f s", self.buckets, seconds)
        return seconds

    def run(self, images: list[torch.Tensor]) -> list[list[float]]:
        """A batch of uint8 CHW tensors → one list of class probabilities per image."""
        return self.run_tensors(torch.stack(images)).tolist()

    def run_tensors(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW → float32 probabilities (padded to a bucket for CUDA graphs)."""
        count = batch.shape[0]
        bucket = next((b for b in self.buckets if b >= count), count) if self._pad_to_bucket else count
        if bucket > count:
            batch = torch.cat([batch, batch.new_zeros((bucket - count, *batch.shape[1:]))])
        if self.device.type == "cuda":
            batch = batch.pin_memory()
        batch = batch.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with self._turn(exclusive=True), torch.inference_mode():
            logits = self._module(batch)[:count]
            return logits.float().softmax(dim=1).cpu()
