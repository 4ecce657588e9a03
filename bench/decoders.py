"""Decoders for the serving path: time per image and pixels against the one training and
evaluation use (``model.presets.load_eval_tensor``: Pillow with draft mode, Pillow resize).

    python -m bench.decoders [--images ../shared/data/catdog/val] [--num-images 256]

Every decoder produces the uint8 3×227×227 centre crop the model takes; the table gives
median ms per image on one thread and the largest / mean absolute pixel difference from the
current path. A decoder may replace the current one only if it is faster and its pixels stay
within the tolerance (``--tolerance``, max |Δ| on the 0–255 scale); otherwise accuracy must be
evaluated again. Writes ``bench/out/decoders.json``.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageOps
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from bench import common
from model.presets import Preprocessing, load_eval_tensor, to_rgb

Decoder = Callable[[bytes, Preprocessing], torch.Tensor]


def current(data: bytes, prep: Preprocessing) -> torch.Tensor:
    """What serving, evaluation and training's validation do now."""
    return load_eval_tensor(data, prep)


def pillow_full(data: bytes, prep: Preprocessing) -> torch.Tensor:
    """Pillow without draft mode: every DCT coefficient decoded, then the same resize."""
    image = to_rgb(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
    return _crop(TF.pil_to_tensor(_resize_pil(image, prep.resize_size)), prep)


def pillow_draft_crop_box(data: bytes, prep: Preprocessing) -> torch.Tensor:
    """Pillow with draft mode, resampling only the centre-crop box (``Image.resize(box=...)``)."""
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", (prep.resize_size, prep.resize_size))
    image = to_rgb(ImageOps.exif_transpose(image))
    width, height = image.size
    scale = prep.resize_size / min(width, height)
    side = prep.input_size / scale
    left, top = (width - side) / 2, (height - side) / 2
    box = (left, top, left + side, top + side)
    resized = image.resize((prep.input_size, prep.input_size), Image.Resampling.BILINEAR, box=box)
    return TF.pil_to_tensor(resized)


def torchvision_tensor_resize(data: bytes, prep: Preprocessing) -> torch.Tensor:
    """``torchvision.io.decode_jpeg`` (libjpeg-turbo, full scale) and an antialiased resize of the uint8 tensor.

    Deprecated since torchvision 0.29 (superseded by TorchCodec): measured, not a candidate as it is."""
    encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)  # a writable copy (~20 KB)
    image = decode_jpeg(encoded, mode=ImageReadMode.RGB, apply_exif_orientation=True)
    resized = TF.resize(image, [prep.resize_size], interpolation=v2.InterpolationMode.BILINEAR, antialias=True)
    return _crop(resized, prep)


def pillow_draft_tensor_resize(data: bytes, prep: Preprocessing) -> torch.Tensor:
    """Pillow with draft mode, then the resize on the uint8 tensor instead of the PIL image."""
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", (prep.resize_size, prep.resize_size))
    tensor = TF.pil_to_tensor(to_rgb(ImageOps.exif_transpose(image)))
    resized = TF.resize(tensor, [prep.resize_size], interpolation=v2.InterpolationMode.BILINEAR, antialias=True)
    return _crop(resized, prep)


DECODERS: dict[str, Decoder] = {
    "current: Pillow draft + Pillow resize": current,
    "Pillow full decode + Pillow resize": pillow_full,
    "Pillow draft + resize of the crop box only": pillow_draft_crop_box,
    "Pillow draft + uint8 tensor resize": pillow_draft_tensor_resize,
    "torchvision decode_jpeg + uint8 tensor resize": torchvision_tensor_resize,
}


def _resize_pil(image: Image.Image, size: int) -> Image.Image:
    return TF.resize(image, [size], interpolation=v2.InterpolationMode.BILINEAR, antialias=True)


def _crop(tensor: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    return TF.center_crop(tensor, [prep.input_size])


def measure(blobs: list[bytes], prep: Preprocessing, rounds: int) -> dict[str, dict[str, float]]:
    """Per decoder: median ms per image (rounds interleaved across decoders) and pixel differences."""
    reference = [current(blob, prep).to(torch.int16) for blob in blobs]
    rows: dict[str, dict[str, float]] = {}
    times: dict[str, list[float]] = {name: [] for name in DECODERS}
    for _ in range(rounds):
        for name, decode in DECODERS.items():
            started = time.perf_counter()
            for blob in blobs:
                decode(blob, prep)
            times[name].append((time.perf_counter() - started) / len(blobs))
    for name, decode in DECODERS.items():
        diffs = [(decode(blob, prep).to(torch.int16) - ref).abs() for blob, ref in zip(blobs, reference, strict=True)]
        rows[name] = {
            "ms_per_image": 1000 * statistics.median(times[name]),
            "max_abs_diff": max(int(diff.max()) for diff in diffs),
            "mean_abs_diff": statistics.fmean(float(diff.float().mean()) for diff in diffs),
            "share_of_pixels_off_by_more_than_2": statistics.fmean(float((diff > 2).float().mean()) for diff in diffs),
        }
    return rows


def markdown(rows: dict[str, dict[str, float]], tolerance: int) -> str:
    base = rows[next(iter(DECODERS))]["ms_per_image"]
    lines = [
        "| decoder | ms/img (1 thread) | vs current | max abs Δ | mean abs Δ | pixels off > 2 | same pixels? |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, row in rows.items():
        same = "yes" if row["max_abs_diff"] <= tolerance else f"no (> {tolerance})"
        lines.append(
            f"| {name} | {row['ms_per_image']:.2f} | {base / row['ms_per_image']:.2f}× | {row['max_abs_diff']:.0f} "
            f"| {row['mean_abs_diff']:.2f} | {100 * row['share_of_pixels_off_by_more_than_2']:.1f}% | {same} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.decoders", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=common.DEFAULT_IMAGES, help="directory of JPEGs")
    parser.add_argument("--num-images", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--tolerance", type=int, default=2, help="largest pixel difference that counts as the same")
    parser.add_argument("--out", type=Path, default=common.OUT_DIR / "decoders.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # each server decode thread resizes on one core
    warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision")
    with tempfile.TemporaryDirectory() as scratch:
        paths, described = common.resolve_images(args.images, args.num_images, synthetic_dir=Path(scratch))
        blobs = [path.read_bytes() for path in paths]
    prep = Preprocessing()
    rows = measure(blobs, prep, args.rounds)
    report = {"images": described, "tolerance": args.tolerance, "decoders": rows, "environment": common.environment()}
    common.write_json(args.out, report)
    print(f"decoders on {described}\n")
    print(markdown(rows, args.tolerance))
    print(f"\nwrote {args.out}")
    return report


if __name__ == "__main__":
    main()
