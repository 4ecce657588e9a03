"""The serving fast paths compute what the fp32 eager reference computes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from app.config import Settings
from app.engine import Engine, batch_buckets
from model.checkpoint import load_checkpoint
from model.inference import inference_module
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
