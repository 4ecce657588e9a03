import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from model.presets import (
    ImageError,
    ImageTooLargeError,
    Normalize,
    Preprocessing,
    UnsupportedFormatError,
    eval_tensor,
    load_eval_tensor,
    open_image,
    train_augment,
)

PREP = Preprocessing()


def _encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _gradient(size: tuple[int, int] = (300, 200)) -> Image.Image:
    x = np.linspace(0, 255, size[0], dtype=np.uint8)
    rgb = np.stack(
        [np.tile(x, (size[1], 1)), np.full((size[1], size[0]), 80, np.uint8), np.tile(x[::-1], (size[1], 1))], -1
    )
    return Image.fromarray(rgb, "RGB")


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("L", "PNG"),
        ("RGBA", "PNG"),
        ("P", "PNG"),
        ("CMYK", "JPEG"),
        ("I;16", "PNG"),
        ("LA", "PNG"),
        ("RGB", "WEBP"),
        ("RGB", "BMP"),
        ("P", "GIF"),
        ("RGB", "TIFF"),
        ("1", "PNG"),
    ],
)
def test_any_mode_becomes_a_227_rgb_tensor(mode: str, fmt: str) -> None:
    image = (
        _gradient().convert(mode)
        if mode != "I;16"
        else Image.fromarray((np.arange(300 * 200).reshape(200, 300) % 65535).astype(np.uint16))
    )
    tensor = load_eval_tensor(_encode(image, fmt), PREP)
    assert tensor.shape == (3, 227, 227) and tensor.dtype == torch.uint8


def test_sixteen_bit_is_scaled_not_clipped() -> None:
    image = Image.fromarray(np.full((50, 50), 40000, dtype=np.uint16))
    assert open_image(_encode(image, "PNG")).getpixel((0, 0)) == (155, 155, 155)


def test_transparent_pixels_become_white() -> None:
    image = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    assert open_image(_encode(image, "PNG")).getpixel((5, 5)) == (255, 255, 255)


def test_exif_orientation_is_applied() -> None:
    image = _gradient((300, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    assert open_image(_encode(image, "JPEG", exif=exif)).size == (200, 300)


def test_gif_first_frame() -> None:
    frames = [Image.new("RGB", (40, 40), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    red, _, blue = open_image(buffer.getvalue()).getpixel((20, 20))
    assert red > 200 and blue < 50


def test_bad_bytes_and_truncation() -> None:
    with pytest.raises(ImageError, match="not a recognised image format"):
        open_image(b"definitely not an image")
    data = _encode(_gradient(), "JPEG")
    with pytest.raises(ImageError):
        open_image(data[: len(data) // 3])


def test_pixel_limit_checked_before_decoding() -> None:
    data = _encode(Image.new("L", (4000, 4000)), "PNG")  # tiny file, 16 M pixels
    with pytest.raises(ImageTooLargeError, match="4000x4000"):
        open_image(data, max_pixels=1_000_000)


def test_format_allow_list() -> None:
    with pytest.raises(UnsupportedFormatError, match="PPM"):
        open_image(_encode(_gradient(), "PPM"), formats=frozenset({"JPEG", "PNG"}))


def test_draft_mode_keeps_enough_pixels() -> None:
    big = _encode(_gradient((2400, 1800)), "JPEG")
    image = open_image(big, draft_size=256)
    assert min(image.size) >= 256 and image.size[0] < 2400
    assert eval_tensor(image, PREP).shape == (3, 227, 227)


def test_eval_transform_is_resize_then_center_crop() -> None:
    image = _gradient((400, 300))
    expected = TF.pil_to_tensor(TF.center_crop(TF.resize(image, [256], antialias=True), [227]))
    assert torch.equal(eval_tensor(image, PREP), expected)


def test_train_augment_shape() -> None:
    out = train_augment(PREP)(torch.randint(0, 256, (3, 256, 300), dtype=torch.uint8))
    assert out.shape == (3, 227, 227) and out.dtype == torch.uint8


def test_normalize_matches_torchvision() -> None:
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    expected = TF.normalize(x.float() / 255, list(PREP.mean), list(PREP.std))
    assert torch.allclose(Normalize(PREP.mean, PREP.std)(x), expected, atol=1e-5)
