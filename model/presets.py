"""The one preprocessing path: training, evaluation and serving all import it.

Images become uint8 CHW tensors here; normalisation is the ``Normalize`` module at the
front of the network, so batches travel as uint8 and are normalised on the device.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Largest image resized whole before its centre crop: 4 Mi pixels (12 MiB in RGB), any aspect ratio
# up to 64:1 at the default sizes. Past it only the region that the crop keeps is resized.
MAX_RESIZED_PIXELS = 1 << 22


class ImageError(ValueError):
    """The bytes are not an image we can use; the message says why."""


class ImageTooLargeError(ImageError):
    """The image has more pixels than allowed (a possible decompression bomb)."""


class UnsupportedFormatError(ImageError):
    """A real image, but in a format the caller does not accept."""


@dataclass(frozen=True)
class Preprocessing:
    """Sizes and normalisation a checkpoint was trained with."""

    input_size: int = 227
    resize_size: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if not 0 < self.input_size <= self.resize_size:
            raise ValueError(f"input_size {self.input_size} must be in 1..resize_size ({self.resize_size})")


def open_image(
    source: bytes | str | Path,
    *,
    max_pixels: int | None = None,
    draft_size: int | None = None,
    formats: frozenset[str] | None = None,
) -> Image.Image:
    """Decode an image as RGB with its EXIF orientation applied.

    Dimensions are checked against ``max_pixels`` before any pixel is decoded. With
    ``draft_size`` a JPEG much larger than needed is decoded at a DCT-reduced scale
    whose shorter side stays at least ``draft_size``. ``formats`` (PIL format names)
    restricts what is accepted.
    """
    stream = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
    try:
        with stream:
            image = _decode(stream, max_pixels=max_pixels, draft_size=draft_size, formats=formats)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(str(exc)) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"cannot decode image: {exc}") from exc
    return image


def _decode(
    stream: io.IOBase, *, max_pixels: int | None, draft_size: int | None, formats: frozenset[str] | None
) -> Image.Image:
    try:
        image = Image.open(stream)
    except Image.UnidentifiedImageError as exc:
        stream.seek(0)
        if (known := sniff_format(stream.read(1024))) is not None:
            accepted = f"; use one of {', '.join(sorted(formats))}" if formats else ""
            raise UnsupportedFormatError(f"{known} images are not supported{accepted}") from exc
        raise ImageError("not a recognised image format") from exc
    if formats is not None and image.format not in formats:
        raise UnsupportedFormatError(f"{image.format} images are not accepted; use one of {', '.join(sorted(formats))}")
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(
            f"image is {width}x{height} = {width * height} pixels, more than the {max_pixels} allowed"
        )
    if max_pixels is not None and (cost := decode_bytes(image)) > max_pixels * BUDGET_BYTES_PER_PIXEL:
        raise ImageTooLargeError(
            f"{image.format} image of {width}x{height} pixels would take {cost >> 20} MiB to decode, more than the "
            f"{max_pixels * BUDGET_BYTES_PER_PIXEL >> 20} MiB allowed for one image"
        )
    if draft_size is not None and image.format == "JPEG":
        image.draft("RGB", (draft_size, draft_size))
    image.load()  # first frame only for GIF/TIFF/WebP animations
    ImageOps.exif_transpose(image, in_place=True)  # a copy otherwise, even when there is nothing to turn
    return to_rgb(image)


# What decoding may hold per pixel that ``max_pixels`` allows: an RGB image at the limit, decoded and
# converted, fits; formats and modes that hold more per pixel (``decode_bytes``) fit at fewer pixels.
BUDGET_BYTES_PER_PIXEL = 8
_BLENDED_MODES = frozenset({"RGBA", "LA", "PA", "La", "RGBa"})


def decode_bytes(image: Image.Image) -> int:
    """Bytes that decoding ``image`` (opened, not loaded) and converting it to RGB hold at their peak,
    from its header: its canvas times what each pixel costs on its way (measured on Pillow 13).

    Every WebP, still or animated, goes through libwebp's animation decoder, which keeps two RGBA
    canvases beside PIL's copy; images with transparency are blended onto white in RGBA; 16- and
    32-bit greyscale is scaled in float64."""
    blended = image.mode in _BLENDED_MODES or (image.mode == "P" and "transparency" in image.info)
    if image.format == "WEBP":
        per_pixel = 26
    elif blended or image.mode.startswith("I") or image.mode == "F":
        per_pixel = 16
    else:
        per_pixel = 7  # up to 4 bytes decoded (CMYK) and 3 in RGB
    return image.width * image.height * per_pixel


_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"})


def sniff_format(head: bytes) -> str | None:
    """Name image formats PIL cannot open from their first bytes (SVG, HEIF/AVIF, JPEG XL), so
    they can be refused as unsupported rather than as broken; None for anything else."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"<svg") or (text.startswith((b"<?xml", b"<!doctype svg", b"<!--")) and b"<svg" in text):
        return "SVG"
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return "HEIF/AVIF"
    if head.startswith((b"\xff\x0a", b"\x00\x00\x00\x0cJXL \r\n\x87\n")):
        return "JPEG XL"
    return None


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode (L, LA, RGBA, P, CMYK, I;16, I, F) to 8-bit RGB."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        # 16-bit and 32-bit greyscale: scale the used range down to 8 bits instead of clipping.
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        array = np.clip(array * (255.0 / peak), 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if image.mode == "P":
        if "transparency" not in image.info:  # opaque: straight to RGB, without an RGBA copy to blend
            return image.convert("RGB")
        image = image.convert("RGBA")
    if image.mode in _BLENDED_MODES:
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def resize_shorter(image: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is ``size`` (antialiased), keeping the aspect ratio."""
    return TF.resize(image, [size], interpolation=v2.InterpolationMode.BILINEAR, antialias=True)


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) after ``resize_shorter(image, size)``, as torchvision computes it."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def crop_box(width: int, height: int, prep: Preprocessing) -> tuple[float, float, float, float]:
    """The region of a ``width``×``height`` image that the evaluation transform keeps (resize the
    shorter side to ``resize_size``, centre crop ``input_size``), in the image's own pixels."""
    new_width, new_height = resized_size(width, height, prep.resize_size)
    top = round((new_height - prep.input_size) / 2)  # torchvision's centre-crop anchor
    left = round((new_width - prep.input_size) / 2)
    scale_x, scale_y = width / new_width, height / new_height
    right, bottom = left + prep.input_size, top + prep.input_size
    return left * scale_x, top * scale_y, min(width, right * scale_x), min(height, bottom * scale_y)


def resizes_whole(width: int, height: int, prep: Preprocessing) -> bool:
    """Whether resizing all of a ``width``×``height`` image before its centre crop stays within
    ``MAX_RESIZED_PIXELS``: true of every photo; false of thin or tall strips (65,500×1 would be
    resized to 16.8 M × 256 pixels), of which only the region the crop keeps is resized."""
    new_width, new_height = resized_size(width, height, prep.resize_size)
    return new_width * new_height <= MAX_RESIZED_PIXELS


def eval_tensor(image: Image.Image, prep: Preprocessing) -> torch.Tensor:
    """Evaluation transform: resize shorter side, center crop, uint8 CHW tensor.

    Past ``MAX_RESIZED_PIXELS`` only the crop's region is resized (PIL reads the pixels around it
    for the filter): the same pixels within 1 level (PIL takes the region's corners as float32),
    for the work and memory of one crop."""
    if resizes_whole(image.width, image.height, prep):
        return TF.pil_to_tensor(TF.center_crop(resize_shorter(image, prep.resize_size), [prep.input_size]))
    size = (prep.input_size, prep.input_size)
    crop = image.resize(size, Image.Resampling.BILINEAR, box=crop_box(image.width, image.height, prep))
    return TF.pil_to_tensor(crop)


def load_eval_tensor(
    source: bytes | str | Path,
    prep: Preprocessing,
    *,
    max_pixels: int | None = None,
    formats: frozenset[str] | None = None,
) -> torch.Tensor:
    """Decode and run the evaluation transform; what serving does for each upload."""
    image = open_image(source, max_pixels=max_pixels, draft_size=prep.resize_size, formats=formats)
    return eval_tensor(image, prep)


def train_augment(prep: Preprocessing, min_scale: float = 0.3) -> v2.Transform:
    """Training augmentation over uint8 CHW tensors (random resized crop, flip, colour jitter)."""
    return v2.Compose(
        [
            v2.RandomResizedCrop(prep.input_size, scale=(min_scale, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3),
        ]
    )


class Normalize(nn.Module):
    """uint8 (or 0–255 float) NCHW batch → normalised float in the module's dtype."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std_t), persistent=False)
        self.register_buffer("shift", -mean_t / std_t, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.scale.dtype) * self.scale + self.shift
