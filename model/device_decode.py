"""JPEG uploads decoded in batches on the model's device (nvjpeg on CUDA), then resized and cropped there.

The evaluation transform of ``model.presets`` on tensors instead of PIL images: the same
``Preprocessing`` sizes, EXIF orientation applied, shorter side resized (``resize_shorter``,
antialiased bilinear) and centre-cropped. ``jpeg_header`` decides from the header alone which
uploads can take this path; everything else keeps ``presets.load_eval_tensor`` and its errors.

nvjpeg cannot decode at a reduced DCT scale the way PIL's draft mode does for large JPEGs; a box
average by the same factor stands in for it, so a photo over twice the resize size gets pixels a
little further from the CPU path's than a smaller one (tests/test_device_decode.py states and checks
the tolerance).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as TF

from model.presets import Preprocessing, resize_shorter, resizes_whole

GpuDecode = Literal["auto", "on", "off"]
DECODABLE_MODES = frozenset({"RGB", "L"})  # CMYK/YCCK JPEGs keep the CPU path
_ORIENTATION_TAG = 0x0112
_END_OF_IMAGE = b"\xff\xd9"
# Full-size pixels decoded by one call: bounds device memory when a batch holds large photos.
CHUNK_PIXELS = 1 << 27
_EVAL = Preprocessing()


def decodes_on_device(setting: GpuDecode, device: torch.device) -> bool:
    """Whether JPEG uploads take the tensor path: ``auto`` means only for a CUDA device."""
    return setting == "on" or (setting == "auto" and device.type == "cuda")


@dataclass(frozen=True)
class EncodedJpeg:
    """An upload that the device decodes in its batch: the bytes and what their header says."""

    data: bytes
    width: int
    height: int
    orientation: int  # EXIF orientation: 1 (as stored) to 8


def jpeg_header(data: bytes, max_pixels: int | None, prep: Preprocessing = _EVAL) -> EncodedJpeg | None:
    """An ``EncodedJpeg`` for a complete JPEG in RGB or greyscale within ``max_pixels``, read from
    its header without decoding; None for anything else (other formats, CMYK, too many pixels, a
    strip too thin or tall to resize whole for ``prep`` (``presets.resizes_whole``: the CPU path
    resizes only its crop), no end-of-image marker after its scan starts as in a truncated upload,
    unreadable bytes), which the CPU path decodes or refuses with its own error."""
    stream = io.BytesIO(data)
    try:
        with Image.open(stream) as image:
            scan = stream.tell()  # PIL reads the header up to the start of the first scan
            if image.format != "JPEG" or image.mode not in DECODABLE_MODES:
                return None
            width, height = image.size
            orientation = image.getexif().get(_ORIENTATION_TAG, 1)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError):
        return None
    if (max_pixels is not None and width * height > max_pixels) or not resizes_whole(width, height, prep):
        return None
    if data.find(_END_OF_IMAGE, scan) < 0:  # the marker cannot occur inside entropy-coded data
        return None
    return EncodedJpeg(data, width, height, orientation if orientation in range(1, 9) else 1)


# EXIF orientation → what ``PIL.ImageOps.exif_transpose`` does, on C×H×W.
_ORIENT: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {
    2: lambda x: x.flip(-1),
    3: lambda x: x.flip(-2, -1),
    4: lambda x: x.flip(-2),
    5: lambda x: x.transpose(-2, -1),
    6: lambda x: x.rot90(-1, (-2, -1)),
    7: lambda x: x.transpose(-2, -1).flip(-2, -1),
    8: lambda x: x.rot90(1, (-2, -1)),
}


def draft_scale(width: int, height: int, size: int) -> int:
    """The DCT scaling PIL's ``draft`` picks for a JPEG whose shorter side should stay ``size``: 1, 2, 4 or 8."""
    fits = min(width // size, height // size)
    return next((scale for scale in (8, 4, 2) if fits >= scale), 1)


def eval_transform(image: torch.Tensor, orientation: int, prep: Preprocessing) -> torch.Tensor:
    """Decoded uint8 C×H×W as stored → the evaluation crop, on the tensor's own device.

    A JPEG that the CPU path decodes at a reduced DCT scale is first box-averaged by that
    factor, which comes close to what the reduced decode computes."""
    if (scale := draft_scale(image.shape[-1], image.shape[-2], prep.resize_size)) > 1:
        image = F.avg_pool2d(image.float(), scale, ceil_mode=True).round_().to(torch.uint8)
    if (orient := _ORIENT.get(orientation)) is not None:
        image = orient(image)
    return TF.center_crop(resize_shorter(image, prep.resize_size), [prep.input_size])


@dataclass(frozen=True)
class DecodedBatch:
    """uint8 N×3×S×S crops on the device, and the pinned host buffer the encoded bytes were read
    from: keep it referenced until the device has passed the decode (until a copy back to the host
    made after it has finished), as the decoder may still be reading it asynchronously."""

    images: torch.Tensor
    staging: torch.Tensor


def decode_jpegs(items: Sequence[EncodedJpeg], prep: Preprocessing, device: torch.device) -> DecodedBatch:
    """Decode ``items`` on ``device`` in batched calls and transform them; raises ``RuntimeError``
    when any of them fails to decode (torchvision returns no partial results).

    The encoded bytes are copied into one pinned buffer (on CUDA) that the decoder reads;
    nothing here waits for the device."""
    staging = torch.empty(sum(len(item.data) for item in items), dtype=torch.uint8, pin_memory=device.type == "cuda")
    views: list[torch.Tensor] = []
    start = 0
    for item in items:
        view = staging[start : start + len(item.data)]
        view.numpy()[:] = np.frombuffer(item.data, dtype=np.uint8)
        views.append(view)
        start += len(item.data)
    crops: list[torch.Tensor] = []
    for chunk in _chunks(items, CHUNK_PIXELS):
        decoded = decode_jpeg(views[chunk.start : chunk.stop], mode=ImageReadMode.RGB, device=device)
        crops += (eval_transform(image, items[i].orientation, prep) for i, image in zip(chunk, decoded, strict=True))
    return DecodedBatch(torch.stack(crops), staging)


def _chunks(items: Sequence[EncodedJpeg], pixels: int) -> list[range]:
    """Consecutive ranges of ``items``, each decoding to at most ``pixels`` (or holding a single item)."""
    ranges: list[range] = []
    start, total = 0, 0
    for index, item in enumerate(items):
        size = item.width * item.height
        if index > start and total + size > pixels:
            ranges.append(range(start, index))
            start, total = index, 0
        total += size
    ranges.append(range(start, len(items)))
    return ranges


def sample_jpegs() -> list[EncodedJpeg]:
    """A colour and a greyscale JPEG, for warming the decoder up."""
    samples = []
    for mode in ("RGB", "L"):
        buffer = io.BytesIO()
        Image.linear_gradient("L").resize((320, 240)).convert(mode).save(buffer, format="JPEG")
        jpeg = jpeg_header(buffer.getvalue(), None)
        assert jpeg is not None
        samples.append(jpeg)
    return samples
