"""The torch side of the service: load, warm up, preprocess one upload, run one batch.

Routes and the batcher never import torch; they hand opaque tensors to this module.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import shutil
import tempfile
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from app.config import Settings
from app.gate import CPU_TURNS
from model.checkpoint import load_checkpoint
from model.device_decode import DecodedBatch, EncodedJpeg, decode_jpegs, decodes_on_device, jpeg_header, sample_jpegs
from model.inference import inference_module
from model.precision import parse_dtype, resolve_device
from model.presets import ImageError, load_eval_tensor
from model.quantize import compile_int8, is_calibrated

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


def use_compile_cache(directory: Path) -> str | None:
    """Keep torch.compile's caches (Inductor's, Triton's) in ``directory``, so that a restart finds
    them; returns why not when it cannot be written (a read-only root without a volume mounted)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return str(exc)
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"{directory} is not writable"
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(directory / "inductor")
    os.environ["TRITON_CACHE_DIR"] = str(directory / "triton")
    return None


def allow_recompiles(count: int = 64) -> None:
    """Static shapes compile once per batch bucket, and models of the same class share Dynamo's
    count: more than its default limit (8), past which it silently runs a function eager."""
    import torch._dynamo.config as dynamo_config

    dynamo_config.recompile_limit = max(count, dynamo_config.recompile_limit)


@dataclass(frozen=True)
class Degraded:
    """Why a model runs slower than it was asked to, and what that costs, in plain words."""

    reason: str  # disk_full, not_writable, no_compiler or compile_failed
    message: str


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
    degraded: Degraded | None = None


_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_DENIED = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


def why_compile_failed(exc: BaseException, cache_dir: Path) -> tuple[str, str]:
    """(reason, plain words) for a failed torch.compile: an ``OSError`` in the exception's chain,
    else a write test of the folders it writes to (a compiler that failed for want of space reports
    only its own output), else a C++ compiler looked for on the ``PATH``."""
    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    for error in chain:
        if isinstance(error, OSError) and (found := _disk_problem(error, Path(error.filename or cache_dir))):
            return found
    for folder in (cache_dir, Path(tempfile.gettempdir())):
        if found := _write_test(folder):
            return found
    if not any(shutil.which(name) for name in (os.environ.get("CXX", "g++"), "g++", "c++", "clang++")):
        return "no_compiler", "no C++ compiler was found (install g++, or set CXX)"
    summary = next((line for line in str(chain[0]).splitlines() if line.strip()), "")
    return "compile_failed", f"{type(chain[0]).__name__}: {summary}"


def _disk_problem(error: OSError, where: Path) -> tuple[str, str] | None:
    if error.errno in _FULL:
        return "disk_full", f"the disk of {where} is full ({errno.errorcode[error.errno]})"
    if error.errno in _DENIED:
        return "not_writable", f"{where} cannot be written ({errno.errorcode[error.errno]})"
    return None


def _write_test(folder: Path) -> tuple[str, str] | None:
    """Write 1 MiB into ``folder``, about what one compiled kernel takes; the problem if that fails."""
    try:
        with tempfile.TemporaryFile(dir=folder) as probe:
            probe.write(bytes(1 << 20))
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        return _disk_problem(exc, folder)
    return None


class Engine:
    """A loaded model ready to run batches of preprocessed images."""

    def __init__(self, settings: Settings) -> None:
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        started = time.monotonic()
        checkpoint = load_checkpoint(settings.checkpoint, labels=settings.label_list)
        meta = checkpoint.meta
        logger.info(
            "loaded checkpoint %s: %s (%s, %d classes) in %.1f s",
            settings.checkpoint,
            meta.name,
            meta.arch,
            len(meta.labels),
            time.monotonic() - started,
        )
        self.device = resolve_device(settings.device)
        self.settings = settings
        self.prep = checkpoint.meta.preprocessing
        self.max_image_pixels = settings.max_image_pixels
        self.buckets = batch_buckets(settings.max_batch_size)
        self.compiled = settings.compile if settings.compile is not None else self.device.type == "cpu"
        self._degraded: tuple[str, str] | None = None  # (reason, cause) when compiling was asked for and is off
        if self.compiled and (problem := use_compile_cache(settings.cache_dir)):
            self._degraded = ("not_writable", f"its cache folder cannot be written ({problem})")
            self.compiled = False
        # auto picks int8 on VNNI/AMX CPUs for a calibrated checkpoint, compiled (eager int8 only simulates it)
        int8_ready = self.compiled and is_calibrated(checkpoint)
        self.dtype = parse_dtype(settings.dtype, self.device, int8_ready=int8_ready)
        self.takes_turns = settings.cpu_turns and self.device.type == "cpu"
        self.gpu_decode = settings.gpu_decode
        self.decodes_on_device = decodes_on_device(settings.gpu_decode, self.device)
        module = inference_module(checkpoint, self.device, self.dtype)  # takes the network over
        self._eager = module  # what warm-up falls back to when compiling fails
        # CUDA graphs (reduce-overhead) need static shapes, so on CUDA batches are padded
        # up to a bucket. On the CPU one graph with a dynamic batch size serves every
        # size without padding; warm-up compiles it (sizes 1 and 2 are the two compiles).
        self._pad_to_bucket = self.compiled and self.device.type == "cuda"
        if not self.compiled:
            self._module = module
        elif self._pad_to_bucket:
            allow_recompiles()
            self._module = torch.compile(module, mode="reduce-overhead", dynamic=False)
        elif self.dtype == torch.int8:
            self._module = compile_int8(module)
        else:
            self._module = torch.compile(module, dynamic=None)
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
        logger.info(
            "model %s: device %s (asked: %s), dtype %s (asked: %s), %s",
            meta.name,
            self.info.device,
            settings.device,
            self.info.dtype,
            settings.dtype,
            f"torch.compile on, cache {settings.cache_dir}" if self.compiled else "eager",
        )
        self._log_decode_path()

    def _log_decode_path(self) -> None:
        if self.decodes_on_device:
            where = "nvjpeg" if self.device.type == "cuda" else "torchvision"
            path = f"JPEGs in batches on {self.device} ({where}), other formats with PIL on the CPU"
        else:
            path = "every image with PIL on the CPU"
        logger.info("decoding uploads of %s: %s (ALEXNET_GPU_DECODE=%s)", self.info.name, path, self.gpu_decode)

    def preprocess(self, data: bytes) -> torch.Tensor | EncodedJpeg:
        """Upload bytes → an item for ``run``: a uint8 CHW tensor, or with device decode a JPEG
        that only had its header read, to be decoded with its batch; raises
        ``model.presets.ImageError`` subclasses."""
        with self._turn(exclusive=False):
            if self.decodes_on_device and (jpeg := jpeg_header(data, self.max_image_pixels, self.prep)) is not None:
                return jpeg
            return self._decode_on_cpu(data)

    def _decode_on_cpu(self, data: bytes) -> torch.Tensor:
        return load_eval_tensor(data, self.prep, max_pixels=self.max_image_pixels, formats=ACCEPTED_FORMATS)

    def pixels_to_decode(self, images: list[bytes]) -> int:
        """Pixels that decoding ``images`` produces, from their headers alone (a JPEG counts at the
        reduced scale its decode uses); an unreadable header counts 0, its decode reports the error."""
        total = 0
        for data in images:
            try:
                with Image.open(io.BytesIO(data)) as image:
                    if image.format == "JPEG":
                        image.draft("RGB", (self.prep.resize_size, self.prep.resize_size))
                    total += image.width * image.height
            except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError):
                continue
        return total

    def _turn(self, *, exclusive: bool) -> AbstractContextManager[None]:
        if not self.takes_turns:
            return nullcontext()
        return CPU_TURNS.exclusive() if exclusive else CPU_TURNS.shared()

    def warm_up(self) -> float:
        """Run every bucket size once (compiling it when enabled); returns seconds taken.

        When compiling fails (no C++ compiler, a cache on a ``noexec`` mount, ...) the model is
        served eager instead, with a warning; a failure of the model itself raises."""
        started = time.monotonic()
        size = self.prep.input_size
        for number, bucket in enumerate(self.buckets, 1):
            logger.info(
                "warming up %s%s: batch size %d (%d of %d), %.1f s so far",
                self.info.name,
                " (torch.compile)" if self.compiled else "",
                bucket,
                number,
                len(self.buckets),
                time.monotonic() - started,
            )
            batch = torch.zeros(bucket, 3, size, size, dtype=torch.uint8)
            try:
                self.run_tensors(batch)
            except Exception as exc:
                if not self.compiled:
                    raise
                self._give_up_compiling(exc)
                self.run_tensors(batch)
        if self.decodes_on_device:
            self._warm_up_decode()
        if self._degraded is not None:
            self._report_degraded(*self._degraded)
        seconds = time.monotonic() - started
        logger.info("warmed up batch sizes %s in %.1f s", self.buckets, seconds)
        return seconds

    def _report_degraded(self, reason: str, cause: str) -> None:
        """Measure what serving uncompiled gives (one batch of the largest size), log it with the
        cause and the cure, and put it in ``info.degraded`` (``/models``, ``alexnet_model_degraded``)."""
        size = self.buckets[-1]
        batch = torch.zeros(size, 3, self.prep.input_size, self.prep.input_size, dtype=torch.uint8)
        started = time.monotonic()
        self.run_tensors(batch)
        rate = size / (time.monotonic() - started)
        message = (
            f"torch.compile is off because {cause}: serving eager {self.info.dtype} at {rate:.1f} images/s "
            f"in batches of {size}, several times slower than compiled (about 10x for int8 on the CPU); "
            f"make ALEXNET_CACHE_DIR ({self.settings.cache_dir}) a writable folder with free space "
            "and a C++ compiler available, then restart"
        )
        logger.warning("model %s is degraded: %s", self.info.name, message)
        self.info = replace(self.info, degraded=Degraded(reason, message))

    def _warm_up_decode(self) -> None:
        """Decode a colour and a greyscale JPEG on the device (the decoder's first call sets it up)
        and run each through the model. When the device cannot decode them, ``auto`` falls back
        to PIL with a warning and ``on`` raises."""
        samples = sample_jpegs()
        try:
            with torch.inference_mode():
                decoded = decode_jpegs(samples, self.prep, self.device)
                decoded.images.cpu()
        except RuntimeError as exc:
            if self.gpu_decode == "on":
                raise RuntimeError(f"ALEXNET_GPU_DECODE=on, but JPEGs do not decode on {self.device}: {exc}") from exc
            logger.warning("JPEGs do not decode on %s (%s); decoding every image with PIL on the CPU", self.device, exc)
            self.decodes_on_device = False
            return
        for sample in samples:
            self.run([sample])

    def _give_up_compiling(self, exc: Exception) -> None:
        """Serve eager after a failed compile, in the fastest eager precision: int8 runs eager only
        as a simulation (quantise/dequantise around fp32 ops), slower than fp32, so it gives way
        to what ``auto`` picks for an uncompiled model."""
        reason, cause = why_compile_failed(exc, self.settings.cache_dir)
        logger.debug("torch.compile failure in full", exc_info=exc)  # the warning comes with its cost, after warm-up
        self._degraded = (reason, f"compiling failed: {cause}")
        if self.dtype == torch.int8:
            self.dtype = parse_dtype("auto", self.device, int8_ready=False)
            checkpoint = load_checkpoint(self.settings.checkpoint, labels=self.settings.label_list)
            self._eager = inference_module(checkpoint, self.device, self.dtype)
        self._module = self._eager
        self._pad_to_bucket = False
        self.compiled = False
        self.info = replace(self.info, compiled=False, dtype=str(self.dtype).removeprefix("torch."))

    def run(self, items: list[Any]) -> list[list[float] | ImageError]:
        """A batch of items from ``preprocess`` or ``app.arrays`` (CHW tensors on the 0–255 scale:
        uint8 images, float V2 ``tensor`` inputs; JPEGs to decode on the device) → for each item
        its class probabilities, or for a JPEG that does not decode the ``ImageError`` that the
        CPU path raises for it."""
        with self._turn(exclusive=True), torch.inference_mode():
            images, on_device, decoded = self._decode(items)
            good = [index for index, image in enumerate(images) if isinstance(image, torch.Tensor)]
            answers = iter([])
            if good:
                batch = self._to_batch([images[index] for index in good], [index in on_device for index in good])
                answers = iter(self._forward(batch).tolist())
            del decoded  # the copy back to the host above waited for the decoder to read its input
            return [image if isinstance(image, ImageError) else next(answers) for image in images]

    def _decode(self, items: list[Any]) -> tuple[list[Any], set[int], list[DecodedBatch]]:
        """Decode the batch's JPEGs on the device, in one go or, when one of them fails, one by one
        with the failing ones given to the CPU path. Returns the items with each JPEG replaced by
        its tensor or its ``ImageError``, the indices decoded on the device, and the decodes."""
        images = list(items)
        jpegs = [index for index, item in enumerate(items) if isinstance(item, EncodedJpeg)]
        if not jpegs:
            return images, set(), []
        try:
            decoded = [decode_jpegs([items[index] for index in jpegs], self.prep, self.device)]
            for index, image in zip(jpegs, decoded[0].images.unbind(0), strict=True):
                images[index] = image
            return images, set(jpegs), decoded
        except RuntimeError as exc:
            logger.info(
                "%d JPEGs did not decode together on %s (%s); decoding them one by one",
                len(jpegs),
                self.device,
                next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__),
            )
        decoded, on_device = [], set()
        for index in jpegs:
            try:
                decoded.append(decode_jpegs([items[index]], self.prep, self.device))
                images[index] = decoded[-1].images[0]
                on_device.add(index)
            except RuntimeError:
                try:
                    images[index] = self._decode_on_cpu(items[index].data)  # the CPU path's pixels or error
                except ImageError as error:
                    images[index] = error
        return images, on_device, decoded

    def _to_batch(self, images: list[torch.Tensor], on_device: list[bool]) -> torch.Tensor:
        """CHW tensors, decoded on the device or still on the host, in order → one NCHW batch on the device."""
        host = [image for image, there in zip(images, on_device, strict=True) if not there]
        device = [image for image, there in zip(images, on_device, strict=True) if there]
        if not device:
            return self._upload(torch.stack(host))
        if not host:
            return torch.stack(device)
        uploaded, decoded = iter(self._upload(torch.stack(host)).float()), iter(torch.stack(device).float())
        return torch.stack([next(decoded) if there else next(uploaded) for there in on_device])

    def _upload(self, batch: torch.Tensor) -> torch.Tensor:
        """A host batch → the device, through pinned memory with a non-blocking copy on CUDA."""
        if self.device.type == "cuda":
            batch = batch.pin_memory()
        return batch.to(self.device, non_blocking=True)  # uint8 crosses to the device, the cast runs there

    def run_tensors(self, batch: torch.Tensor) -> torch.Tensor:
        """NCHW on the 0–255 scale → float32 probabilities (padded to a bucket for CUDA graphs)."""
        with self._turn(exclusive=True), torch.inference_mode():
            return self._forward(self._upload(batch))

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        """An NCHW batch on the device → float32 probabilities on the host.

        Every batch reaches the model as float32, whatever its items were, so the graphs that
        warm-up compiles from uint8 zeros also serve float inputs: no compile on a live request."""
        count = batch.shape[0]
        bucket = next((b for b in self.buckets if b >= count), count) if self._pad_to_bucket else count
        if bucket > count:
            batch = torch.cat([batch, batch.new_zeros((bucket - count, *batch.shape[1:]))])
        batch = batch.to(torch.float32, memory_format=torch.channels_last)
        logits = self._module(batch)[:count]
        return logits.float().softmax(dim=1).cpu()
