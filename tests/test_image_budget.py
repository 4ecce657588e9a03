"""Every image costs a bounded amount of memory, decided from its header before the work:
thin and tall strips resize only their crop, canvases too costly to decode get 422, the device
path leaves strips to the CPU, and the heap goes back after a burst."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from app.memory import HeapTrimmer
from model.device_decode import jpeg_header
from model.presets import ImageTooLargeError, Preprocessing, load_eval_tensor, open_image, resize_shorter
from tests.conftest import CATDOG, RunningServer, require_catdog

PREP = Preprocessing()
GROWTH_MB = 64  # the most one request may add to the server's peak resident memory


def _encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _strip(width: int, height: int) -> bytes:
    return _encode(Image.new("L", (width, height), 128))


def _animation(fmt: str, side: int) -> bytes:
    frames = [Image.new("RGBA", (side, side), (shade, 0, 0, 255)) for shade in (0, 40)]
    options = {"lossless": True} if fmt == "WEBP" else {}
    return _encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **options)


def _reference(image: Image.Image) -> np.ndarray:
    """Resize the whole image, then crop: the transform as defined."""
    return np.asarray(TF.center_crop(resize_shorter(image, PREP.resize_size), [PREP.input_size]), dtype=np.int16)


def test_a_strip_resizes_only_its_crop_within_one_level() -> None:
    noise = np.random.default_rng(0).integers(0, 256, (40, 3000, 3), dtype=np.uint8)
    image = Image.fromarray(noise, "RGB")  # resized whole: 19,200 x 256, past MAX_RESIZED_PIXELS
    got = load_eval_tensor(_encode(image), PREP).permute(1, 2, 0).numpy().astype(np.int16)
    assert np.abs(got - _reference(image)).max() <= 1


def test_photos_keep_the_exact_pixels_of_resize_then_crop() -> None:
    require_catdog()
    for path in sorted((CATDOG / "val").rglob("*.jpg"))[:40]:
        image = open_image(path, draft_size=PREP.resize_size)
        got = load_eval_tensor(path, PREP).permute(1, 2, 0).numpy().astype(np.int16)
        assert np.array_equal(got, _reference(image)), path


@pytest.mark.parametrize(("fmt", "side"), [("WEBP", 6300), ("WEBP", 16000), ("GIF", 16000), ("PNG", 16000)])
def test_canvases_too_costly_to_decode_are_refused_from_their_header(fmt: str, side: int) -> None:
    with pytest.raises(ImageTooLargeError):
        load_eval_tensor(_animation(fmt, side), PREP, max_pixels=40_000_000)


def test_the_device_path_leaves_strips_to_the_cpu() -> None:
    assert jpeg_header(_encode(Image.new("RGB", (60_000, 8)), "JPEG"), 40_000_000, PREP) is None
    assert jpeg_header(_encode(Image.new("RGB", (320, 240)), "JPEG"), 40_000_000, PREP) is not None


def test_the_heap_is_trimmed_once_a_burst_has_passed() -> None:
    trimmer = HeapTrimmer(quiet_s=0.05)

    async def burst() -> None:
        for _ in range(5):
            trimmer.note(1 << 20)
        await asyncio.sleep(0.5)

    asyncio.run(burst())
    assert trimmer.trims == 1


# --- against a real server: answers and the growth of its resident memory -------------------------


@pytest.fixture(scope="module")
def server(random_checkpoint: Path) -> Iterator[RunningServer]:
    running = RunningServer({"ALEXNET_CHECKPOINT": str(random_checkpoint), "ALEXNET_DTYPE": "fp32"})
    yield running
    running.stop()


def _reset_peak(pid: int) -> None:
    """Start the kernel's peak-RSS record (VmHWM) afresh from the current RSS (proc(5), clear_refs),
    so a case's peak is its own and not warm-up's."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _memory_mb(pid: int) -> dict[str, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {key: int(fields[key].split()[0]) / 1024 for key in ("VmHWM", "VmRSS")}


HOSTILE = {
    "4000x1": (lambda: _strip(4000, 1), 200),
    "65500x1": (lambda: _strip(65_500, 1), 200),
    "1x65500": (lambda: _strip(1, 65_500), 200),
    "30000x2": (lambda: _strip(30_000, 2), 200),
    "webp-canvas-6300": (lambda: _animation("WEBP", 6300), 422),
    "gif-canvas-16000": (lambda: _animation("GIF", 16000), 422),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_images_get_their_answer_within_the_memory_budget(server: RunningServer, case: str) -> None:
    make, status = HOSTILE[case]
    body = make()
    _reset_peak(server.process.pid)
    before = _memory_mb(server.process.pid)
    response = httpx.post(f"{server.url}/predict", content=body, headers={"Content-Type": "image/png"}, timeout=60)
    assert response.status_code == status, response.text
    if status == 422:
        assert response.json()["error"]["code"] == "image_too_large"
    grown = _memory_mb(server.process.pid)["VmHWM"] - before["VmRSS"]
    assert grown <= GROWTH_MB, f"{case}: peak RSS grew {grown:.0f} MB"
