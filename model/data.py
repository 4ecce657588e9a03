"""Image-folder data decoded once and cached as uint8 tensors.

Training images are cached at shorter side ``resize_size`` (augmentation crops them
later); validation images are cached as the exact evaluation transform's output, so
per-epoch validation sees what serving sees.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset, Sampler
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

from model.presets import Preprocessing, eval_tensor, open_image, resize_shorter

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
_CACHE_VERSION = 2


def list_image_folder(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """``root/<class>/<file>`` → class names (sorted, as ImageFolder) and (file, index) pairs."""
    classes = sorted(entry.name for entry in root.iterdir() if entry.is_dir())
    if not classes:
        raise FileNotFoundError(f"no class folders under {root}")
    samples = [
        (file, index)
        for index, name in enumerate(classes)
        for file in sorted((root / name).iterdir())
        if file.suffix.lower() in IMAGE_SUFFIXES
    ]
    return classes, samples


def _train_tensor(path: Path, prep: Preprocessing) -> torch.Tensor:
    """Shorter side brought down to ``resize_size``; smaller photos kept as they are (the random
    resized crop scales them once, rather than twice)."""
    image = open_image(path, draft_size=prep.resize_size)
    if min(image.size) > prep.resize_size:
        image = resize_shorter(image, prep.resize_size)
    return TF.pil_to_tensor(image)


def _eval_tensor(path: Path, prep: Preprocessing) -> torch.Tensor:
    return eval_tensor(open_image(path, draft_size=prep.resize_size), prep)


class CachedImages(Dataset[tuple[torch.Tensor, int]]):
    """An image folder held in memory as uint8 tensors, cached on disk between runs."""

    def __init__(
        self,
        root: str | Path,
        prep: Preprocessing,
        *,
        split: str,
        cache_dir: str | Path | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        limit: int | None = None,
    ) -> None:
        if split not in ("train", "eval"):
            raise ValueError("split must be 'train' or 'eval'")
        self.root = Path(root)
        self.transform = transform
        self.classes, samples = list_image_folder(self.root)
        if limit is not None:
            samples = samples[:: max(1, len(samples) // limit)][:limit]
        key = json.dumps([_CACHE_VERSION, split, str(self.root.resolve()), len(samples), prep.__dict__], default=str)
        cache = (
            Path(cache_dir) / f"{split}-{hashlib.sha1(key.encode()).hexdigest()[:12]}.safetensors"
            if cache_dir
            else None
        )
        self.images, self.targets = self._load_or_build(samples, prep, split, cache)

    def _load_or_build(
        self, samples: list[tuple[Path, int]], prep: Preprocessing, split: str, cache: Path | None
    ) -> tuple[list[torch.Tensor], list[int]]:
        if cache is not None and cache.is_file():
            try:
                stored = load_file(str(cache))
                count = len(stored) - 1
                return [stored[f"image.{i}"] for i in range(count)], stored["targets"].tolist()
            except (SafetensorError, KeyError, OSError):
                pass  # unreadable cache: rebuild it
        decode = _train_tensor if split == "train" else _eval_tensor
        images = [decode(path, prep) for path, _ in tqdm(samples, desc=f"decode {self.root.name}", mininterval=10)]
        targets = [index for _, index in samples]
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tensors = {f"image.{i}": image.contiguous() for i, image in enumerate(images)}
            tensors["targets"] = torch.tensor(targets, dtype=torch.int64)
            save_file(tensors, str(cache))
        return images, targets

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]


class MixSampler(Sampler[int]):
    """Indices into a ``ConcatDataset`` of several sources, shuffled together: each epoch takes
    ``fractions[i]`` of source ``i``, a fresh random draw (without replacement) every epoch.

    Every draw comes from ``generator``, so seeding it per epoch makes an epoch's order repeatable
    (a resumed run sees the batches an uninterrupted one would have)."""

    def __init__(self, sizes: list[int], fractions: list[float], generator: torch.Generator) -> None:
        if len(sizes) != len(fractions) or any(not 0.0 <= f <= 1.0 for f in fractions):
            raise ValueError("one fraction in [0, 1] per source")
        self.sizes, self.fractions, self.generator = sizes, fractions, generator
        self.offsets = [sum(sizes[:i]) for i in range(len(sizes))]

    def __len__(self) -> int:
        return sum(round(size * f) for size, f in zip(self.sizes, self.fractions, strict=True))

    def __iter__(self) -> Iterator[int]:
        picked = [
            offset + torch.randperm(size, generator=self.generator)[: round(size * f)]
            for size, f, offset in zip(self.sizes, self.fractions, self.offsets, strict=True)
        ]
        indices = torch.cat(picked)
        yield from indices[torch.randperm(len(indices), generator=self.generator)].tolist()
