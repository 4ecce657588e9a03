"""``python -m model.export``: the command that turns a trained checkpoint into the shipped one."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.checkpoint import ModelMeta, load_checkpoint, save_checkpoint
from model.network import AlexNet
from tests.conftest import REPO, make_image


@pytest.mark.slow
def test_export_writes_an_int8_checkpoint_and_its_card(tmp_path: Path) -> None:
    torch.manual_seed(0)
    full = save_checkpoint(tmp_path / "full.safetensors", AlexNet(2), ModelMeta("exported", "alexnet", ("cat", "dog")))
    for label in ("cat", "dog"):
        (tmp_path / "val" / label).mkdir(parents=True)
        for seed in range(3):
            (tmp_path / "val" / label / f"{seed}.jpg").write_bytes(make_image(seed + (10 if label == "dog" else 0)))
    out = tmp_path / "ship" / "model.safetensors"
    result = subprocess.run(
        [sys.executable, "-m", "model.export", "--checkpoint", str(full), "--data", str(tmp_path / "val")]
        + ["--out", str(out), "--command", "python -m model.train --epochs 1"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    shipped = load_checkpoint(out)
    assert shipped.meta.name == "exported" and shipped.meta.labels == ("cat", "dog")
    assert out.stat().st_size < full.stat().st_size / 3, "the weights are stored as int8"
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["file"] == out.name and card["size_bytes"] == out.stat().st_size
    assert card["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert card["command"] == "python -m model.train --epochs 1"
    accuracy = card["val_accuracy_percent"]
    assert accuracy and all(0 <= value <= 100 for value in accuracy.values())
    correct = accuracy["fp32_int8_weights"] * 6 / 100  # percent of the six validation images, rounded
    assert abs(correct - round(correct)) < 0.01, accuracy
    assert shipped.meta.training["val_accuracy_percent"] == accuracy, "the measurements travel in the file too"
