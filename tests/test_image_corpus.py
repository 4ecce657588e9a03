"""A corpus of bad and odd images, made here, through every door: the exact status and code for
each, and for the odd-but-valid ones the pixels the model sees (same probabilities as the image
a careful client would have sent instead: upright, RGB, first frame, transparency on white)."""

from __future__ import annotations

import base64
import io
import json
import random
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings
from app.main import create_app
from tests.conftest import make_image


@pytest.fixture(scope="module")
def client(random_checkpoint: Path) -> Iterator[TestClient]:
    settings = Settings(models=f"catdog={random_checkpoint}", dtype="fp32", max_batch_size=4)
    with TestClient(create_app(settings)) as test_client:
        deadline = time.monotonic() + 60
        while test_client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "never became ready"
            time.sleep(0.02)
        yield test_client


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _png(image: Image.Image) -> bytes:
    return _encode(image, "PNG")


def _picture(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A distinct, asymmetric RGB picture: noise plus a bright bar along the top-left."""
    image = Image.open(io.BytesIO(make_image(seed, size=size, fmt="PNG"))).convert("RGB")
    pixels = np.asarray(image).copy()
    pixels[: size[1] // 6, : size[0] // 2] = (250, 240, 30)
    return Image.fromarray(pixels)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` × ``height`` RGB pixels and holds almost none (a bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


SVG = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect/></svg>'
HEIC = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)
JPEG = make_image(30)
PNG = make_image(31, fmt="PNG")

# name → (bytes, status, code): the same through multipart, a raw body and V2 `images`
REFUSED = {
    "svg": (SVG, 415, "unsupported_image_format"),
    "heic": (HEIC, 415, "unsupported_image_format"),
    "ppm": (make_image(32, fmt="PPM"), 415, "unsupported_image_format"),
    "random-bytes": (random.Random(0).randbytes(4096), 422, "invalid_image"),
    "text": (b"hello, I am not an image", 422, "invalid_image"),
    "truncated-jpeg": (JPEG[: len(JPEG) // 2], 422, "invalid_image"),
    "truncated-png": (PNG[: len(PNG) // 2], 422, "invalid_image"),
    "jpeg-header-only": (JPEG[:200], 422, "invalid_image"),
    "bomb-over-our-limit": (_png_header_only(7000, 7000), 422, "image_too_large"),
    "bomb-over-pillows-limit": (_png_header_only(100_000, 100_000), 422, "image_too_large"),
    "empty": (b"", 400, "no_image"),
}


def _multipart(client: TestClient, data: bytes, name: str = "x.bin") -> object:
    return client.post("/predict?top_k=2", files={"file": (name, data, "application/octet-stream")})


def _raw(client: TestClient, data: bytes, content_type: str = "image/png") -> object:
    return client.post("/predict?top_k=2", content=data, headers={"Content-Type": content_type})


def _v2(client: TestClient, data: bytes) -> object:
    body = {
        "inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(data).decode()]}]
    }
    return client.post(
        "/v2/models/catdog/infer", content=json.dumps(body), headers={"Content-Type": "application/json"}
    )


@pytest.mark.parametrize("name", REFUSED)
@pytest.mark.parametrize("door", [_multipart, _raw], ids=["multipart", "raw"])
def test_predict_refuses_with_the_exact_code(client: TestClient, door: Callable[..., object], name: str) -> None:
    data, status, code = REFUSED[name]
    response = door(client, data)
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    assert response.json()["error"]["code"] == code  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", REFUSED)
def test_v2_refuses_with_the_same_status(client: TestClient, name: str) -> None:
    data, status, _ = REFUSED[name]
    response = _v2(client, data)
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    assert isinstance(response.json()["error"], str)  # type: ignore[attr-defined]


def test_an_svg_declared_as_svg_is_refused_by_its_type(client: TestClient) -> None:
    response = _raw(client, SVG, "image/svg+xml")
    assert response.status_code == 415 and response.json()["error"]["code"] == "unsupported_media_type"  # type: ignore[attr-defined]


def _probabilities(client: TestClient, data: bytes) -> np.ndarray:
    response = _raw(client, data)
    assert response.status_code == 200, response.text  # type: ignore[attr-defined]
    by_index = {p["index"]: p["probability"] for p in response.json()["predictions"]}  # type: ignore[attr-defined]
    return np.array([by_index[0], by_index[1]])


def _same(client: TestClient, data: bytes, reference: bytes) -> np.ndarray:
    """The probabilities for ``data``, asserted equal to those for ``reference`` and to V2's."""
    got = _probabilities(client, data)
    np.testing.assert_allclose(got, _probabilities(client, reference), rtol=0, atol=1e-6)
    v2 = _v2(client, data)
    assert v2.status_code == 200  # type: ignore[attr-defined]
    np.testing.assert_allclose(v2.json()["outputs"][0]["data"], got, rtol=0, atol=1e-6)  # type: ignore[attr-defined]
    return got


@pytest.mark.parametrize(
    ("orientation", "stored"),
    [(6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270), (3, Image.Transpose.ROTATE_180)],
)
def test_exif_rotated_jpeg_is_seen_upright(client: TestClient, orientation: int, stored: Image.Transpose) -> None:
    sideways = _picture(40).transpose(stored)  # how a camera stores it; the tag says how to turn it back
    exif = Image.Exif()
    exif[0x0112] = orientation
    tagged = _encode(sideways, "JPEG", quality=95, exif=exif.tobytes())
    untagged = _encode(sideways, "JPEG", quality=95)
    # the same decoded pixels, turned upright by the client: EXIF 6 = turn 90° clockwise, 8 = anticlockwise
    upright = {6: Image.Transpose.ROTATE_270, 8: Image.Transpose.ROTATE_90, 3: Image.Transpose.ROTATE_180}
    reference = _png(Image.open(io.BytesIO(untagged)).convert("RGB").transpose(upright[orientation]))
    seen = _same(client, tagged, reference)
    assert not np.allclose(seen, _probabilities(client, untagged), rtol=0, atol=1e-7), "the rotation made no difference"


def test_16_bit_png_is_scaled_to_8_bits(client: TestClient) -> None:
    grey = np.asarray(_picture(41).convert("L"), dtype=np.uint16)
    sixteen = Image.fromarray(grey * 257)  # 0..255 → 0..65535
    assert sixteen.mode == "I;16"
    _same(client, _png(sixteen), _png(Image.fromarray(grey.astype(np.uint8), "L").convert("RGB")))


def test_cmyk_jpeg_is_converted_to_rgb(client: TestClient) -> None:
    cmyk = _encode(_picture(42).convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(cmyk)).mode == "CMYK"
    _same(client, cmyk, _png(Image.open(io.BytesIO(cmyk)).convert("RGB")))


def test_palette_png_with_transparency_lies_on_white(client: TestClient) -> None:
    indices = np.asarray(_picture(43).convert("L"), dtype=np.uint8) // 32  # 8 palette entries
    palette = [(0, 0, 0), (200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (90, 90, 90),
               (10, 250, 120)]  # fmt: skip
    image = Image.fromarray(indices, "P")
    image.putpalette([channel for colour in palette for channel in colour])
    data = _encode(image, "PNG", transparency=0)  # index 0 is fully transparent
    expected = np.array(palette, dtype=np.uint8)[indices]
    expected[indices == 0] = 255
    _same(client, data, _png(Image.fromarray(expected, "RGB")))


def test_animated_gif_uses_its_first_frame(client: TestClient) -> None:
    frames = [_picture(44), _picture(45).transpose(Image.Transpose.FLIP_TOP_BOTTOM)]
    gif = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    opened = Image.open(io.BytesIO(gif))
    assert opened.n_frames == 2
    first = opened.convert("RGB")
    opened.seek(1)
    second = opened.convert("RGB")
    seen = _same(client, gif, _png(first))
    assert not np.allclose(seen, _probabilities(client, _png(second)), rtol=0, atol=1e-7)


def test_multi_page_tiff_uses_its_first_page(client: TestClient) -> None:
    pages = [_picture(46), _picture(47)]
    tiff = _encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    assert Image.open(io.BytesIO(tiff)).n_frames == 2
    seen = _same(client, tiff, _png(pages[0]))
    assert not np.allclose(seen, _probabilities(client, _png(pages[1])), rtol=0, atol=1e-7)
