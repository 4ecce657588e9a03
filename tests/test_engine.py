"""The serving fast paths compute what the fp32 eager reference computes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from app.config import Settings
from app.engine import Engine, batch_buckets
from model import quantize
from model.checkpoint import load_checkpoint, save_checkpoint
from model.inference import inference_module
from model.precision import cpu_has_fast_bf16, cpu_supports_int8
from model.presets import load_eval_tensor
from tests.conftest import make_image


def test_buckets() -> None:
    assert batch_buckets(1) == [1]
    assert batch_buckets(32) == [1, 2, 4, 8, 16, 32]
    assert batch_buckets(24) == [1, 2, 4, 8, 16, 24]


def _reference(checkpoint: Path, images: list[torch.Tensor]) -> torch.Tensor:
    # A fresh load: inference_module converts the network it is given in place.
    module = inference_module(load_checkpoint(checkpoint), torch.device("cpu"), torch.float32, channels_last=False)
    with torch.inference_mode():
        return module(torch.stack(images)).softmax(1)


@pytest.mark.parametrize(
    ("dtype", "compile_", "tolerance"),
    [("fp32", False, 1e-5), ("bf16", False, 0.05), ("fp32", True, 1e-4), ("bf16", True, 0.05)],
)
def test_fast_paths_match_fp32_eager(random_checkpoint: Path, dtype: str, compile_: bool, tolerance: float) -> None:
    engine = Engine(Settings(checkpoint=random_checkpoint, dtype=dtype, compile=compile_, max_batch_size=4))
    engine.warm_up()
    images = [engine.preprocess(make_image(seed)) for seed in range(7)]
    expected = _reference(random_checkpoint, images)
    for size in (1, 3, 4):  # sizes inside, between and at the buckets
        served = torch.tensor(engine.run(images[:size]))
        assert (served - expected[:size]).abs().max().item() <= tolerance
        assert torch.equal(served.argmax(1), expected[:size].argmax(1)) or tolerance > 1e-3


@pytest.fixture(scope="module")
def calibrated_checkpoint(random_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The random checkpoint with a static int8 calibration on generated photos."""
    checkpoint = load_checkpoint(random_checkpoint)
    prep = checkpoint.meta.preprocessing
    batches = [torch.stack([load_eval_tensor(make_image(seed), prep) for seed in range(8)])]
    found = quantize.calibrate(checkpoint, batches, source="generated")
    meta = replace(checkpoint.meta, int8=found.info)
    path = tmp_path_factory.mktemp("int8") / "calibrated.safetensors"
    return save_checkpoint(path, checkpoint.network, meta, int8=True, calibration=found.tensors)


@pytest.mark.slow
def test_auto_serves_compiled_int8_for_a_calibrated_checkpoint(calibrated_checkpoint: Path) -> None:
    engine = Engine(Settings(checkpoint=calibrated_checkpoint, dtype="auto", compile=True, max_batch_size=4))
    assert engine.info.dtype == ("int8" if cpu_supports_int8() else "bfloat16" if cpu_has_fast_bf16() else "float32")
    engine.warm_up()
    images = [engine.preprocess(make_image(seed)) for seed in range(20, 24)]
    expected = _reference(calibrated_checkpoint, images)
    for size in (1, 3, 4):
        served = torch.tensor(engine.run(images[:size]))
        assert (served - expected[:size]).abs().max().item() <= 0.05


def test_auto_keeps_bf16_or_fp32_when_int8_is_not_ready(random_checkpoint: Path, calibrated_checkpoint: Path) -> None:
    fallback = "bfloat16" if cpu_has_fast_bf16() else "float32"
    assert Engine(Settings(checkpoint=random_checkpoint, dtype="auto", compile=True)).info.dtype == fallback
    assert Engine(Settings(checkpoint=calibrated_checkpoint, dtype="auto", compile=False)).info.dtype == fallback


def test_int8_refuses_an_uncalibrated_checkpoint(random_checkpoint: Path) -> None:
    with pytest.raises(quantize.CalibrationError, match="no int8 calibration"):
        Engine(Settings(checkpoint=random_checkpoint, dtype="int8", compile=False))
