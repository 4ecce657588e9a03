"""Warm-up compiles every graph a live request can need: each input path (decoded images, V2
``pixels`` and ``tensor``, a batch mixing them) at each batch size up to the maximum."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from app.arrays import pixel_items, tensor_items
from app.config import Settings
from app.engine import Engine
from tests.conftest import make_image


@pytest.mark.slow
def test_no_input_path_compiles_after_warm_up(random_checkpoint: Path) -> None:
    engine = Engine(Settings(checkpoint=random_checkpoint, dtype="fp32", compile=True, max_batch_size=4))
    engine.warm_up()
    assert engine.compiled, "compiling failed here, so this test cannot tell anything"
    size, count = engine.info.input_size, 4
    generator = np.random.default_rng(0)
    paths = {
        "images": [engine.preprocess(make_image(seed)) for seed in range(count)],
        "pixels": pixel_items(
            generator.integers(0, 256, (count, size, size, 3), dtype=np.uint8).tobytes(), count, size
        ),
        "tensor": tensor_items(
            generator.standard_normal((count, 3, size, size), dtype=np.float32).tobytes(), count, engine.prep
        ),
    }
    paths["mixed"] = [paths["images"][0], paths["tensor"][1], paths["pixels"][2], paths["tensor"][3]]
    with torch.compiler.set_stance("fail_on_recompile"):  # a compile now would be one on a live request
        for name, items in paths.items():
            for batch in range(1, count + 1):
                probabilities = engine.run(items[:batch])
                assert len(probabilities) == batch and all(abs(sum(p) - 1) < 1e-4 for p in probabilities), name
