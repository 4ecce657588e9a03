"""Preprocessed arrays from the Open Inference Protocol → the per-image items the engine batches.

An item is what ``Engine.run`` stacks: a CHW tensor on the 0–255 scale (uint8 for decoded
images and ``pixels``, float32 for ``tensor``), normalised later by the network's first module.
"""

from __future__ import annotations

import torch

from model.presets import Preprocessing


class ArrayError(ValueError):
    """The array's values cannot be used (the shape was checked by the caller)."""


def pixel_items(data: bytes, count: int, size: int) -> list[torch.Tensor]:
    """``UINT8 [N, size, size, 3]`` RGB pixels (row-major bytes) → N uint8 CHW tensors."""
    batch = torch.frombuffer(bytearray(data), dtype=torch.uint8).view(count, size, size, 3)
    return [image.permute(2, 0, 1).contiguous() for image in batch]


def tensor_items(data: bytes, count: int, prep: Preprocessing) -> list[torch.Tensor]:
    """``FP32 [N, 3, size, size]`` already normalised with the model's mean and std → N float CHW
    tensors on the 0–255 scale, so the network's own normalisation gives back the same input."""
    size = prep.input_size
    batch = torch.frombuffer(bytearray(data), dtype=torch.float32).view(count, 3, size, size)
    if not bool(torch.isfinite(batch).all()):
        raise ArrayError("the tensor holds NaN or infinite values")
    std = torch.tensor(prep.std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    mean = torch.tensor(prep.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    return list((batch * std + mean).unbind(0))
