"""Paths, image sets, random checkpoints, JSON output and environment facts shared by the benchmarks.

Nothing here imports torch at module level, so the load generator stays a light process.
"""

from __future__ import annotations

import io
import json
import os
import platform
import random
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = REPO_ROOT / "bench" / "out"
DEFAULT_IMAGES = REPO_ROOT.parent / "shared" / "data" / "catdog" / "val"
DEFAULT_CHECKPOINT = REPO_ROOT / "model" / "weights" / "catdog.safetensors"
JPEG_SUFFIXES = frozenset({".jpg", ".jpeg"})


def find_images(directory: Path, limit: int) -> list[Path]:
    """Up to ``limit`` JPEGs under ``directory``, spread evenly over the sorted list (so both classes appear)."""
    found = sorted(path for path in directory.rglob("*") if path.suffix.lower() in JPEG_SUFFIXES and path.is_file())
    if not found:
        raise FileNotFoundError(f"no .jpg/.jpeg files under {directory}")
    if len(found) <= limit:
        return found
    step = len(found) / limit
    return [found[int(index * step)] for index in range(limit)]


def make_synthetic_jpegs(directory: Path, count: int, size: tuple[int, int] = (450, 375), seed: int = 0) -> list[Path]:
    """Write ``count`` photo-sized JPEGs (smooth colour fields plus grain) for runs without real photos."""
    from PIL import Image, ImageFilter

    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths = []
    for index in range(count):
        coarse = Image.frombytes("RGB", (12, 10), rng.randbytes(12 * 10 * 3))
        image = coarse.resize(size, Image.Resampling.BICUBIC)
        grain = Image.frombytes("L", size, rng.randbytes(size[0] * size[1])).filter(ImageFilter.GaussianBlur(1))
        image = Image.blend(image, Image.merge("RGB", (grain, grain, grain)), 0.15)
        path = directory / f"synthetic-{index:04d}.jpg"
        image.save(path, format="JPEG", quality=85)
        paths.append(path)
    return paths


def jpeg_bytes(size: tuple[int, int] = (320, 240), seed: int = 0) -> bytes:
    """One small synthetic JPEG in memory (for tests and quick checks)."""
    from PIL import Image

    rng = random.Random(seed)
    image = Image.frombytes("RGB", (8, 6), rng.randbytes(8 * 6 * 3)).resize(size, Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def resolve_images(directory: Path | None, limit: int, *, synthetic_dir: Path | None = None) -> tuple[list[Path], str]:
    """Real photos from ``directory`` when it exists, else generated ones; returns (paths, description)."""
    if directory is not None and directory.is_dir():
        paths = find_images(directory, limit)
        return paths, f"{len(paths)} photos from {directory}"
    target = synthetic_dir or OUT_DIR / "synthetic-images"
    print(f"note: {directory} not found; using {limit} synthetic JPEGs in {target}", file=sys.stderr)
    return make_synthetic_jpegs(target, limit), f"{limit} synthetic 450x375 JPEGs (no photos at {directory})"


def random_checkpoint(path: Path, seed: int = 0) -> Path:
    """A cat/dog AlexNet with random weights in our format: what to benchmark before the real one exists."""
    import torch

    from model.checkpoint import ModelMeta, save_checkpoint
    from model.network import AlexNet

    torch.manual_seed(seed)
    meta = ModelMeta("random-catdog", "alexnet", ("cat", "dog"))
    return save_checkpoint(path, AlexNet(2), meta, int8=True)


def checkpoint_or_random(path: Path | None) -> Path:
    """``path`` if given, else the shipped checkpoint if present, else a random one in ``bench/out``."""
    if path is not None:
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        return path
    if DEFAULT_CHECKPOINT.is_file():
        return DEFAULT_CHECKPOINT
    target = OUT_DIR / "random-catdog.safetensors"
    if not target.is_file():
        print(f"note: {DEFAULT_CHECKPOINT} not found; benchmarking random weights ({target})", file=sys.stderr)
        random_checkpoint(target)
    return target


def parse_ints(text: str) -> list[int]:
    """``"1,8,32"`` → ``[1, 8, 32]``."""
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or any(value < 1 for value in values):
        raise ValueError(f"expected comma-separated positive integers, got {text!r}")
    return values


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def environment() -> dict[str, Any]:
    """Facts that make a number comparable: machine, software versions, commit, thread settings."""
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "git_commit": _git_commit(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "alexnet_env": {key: value for key, value in os.environ.items() if key.startswith("ALEXNET_")},
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5)
    return result.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
