"""A failed torch.compile never hides: the engine serves the fastest eager precision, says why in
plain words and what it costs, and ``/models`` and ``/metrics`` say so too."""

from __future__ import annotations

import dataclasses
import errno
from pathlib import Path

import httpx
import pytest
import torch
from torch import nn

import app.engine as engine_module
from app.config import Settings
from app.engine import Engine, why_compile_failed
from model import network, quantize
from model.checkpoint import Checkpoint, ModelMeta, save_checkpoint
from model.presets import load_eval_tensor
from tests.conftest import RunningServer, make_image


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight checkpoint with a static int8 calibration (what ``auto`` may pick int8 for)."""
    torch.manual_seed(0)
    model, meta = network.AlexNet(2).eval(), ModelMeta("random-int8", network.CLASSIC, ("cat", "dog"))
    images = torch.stack([load_eval_tensor(make_image(seed), meta.preprocessing) for seed in range(4)])
    found = quantize.calibrate(Checkpoint(model, meta), [images], source="generated")
    path = tmp_path_factory.mktemp("int8") / "m.safetensors"
    return save_checkpoint(path, model, dataclasses.replace(meta, int8=found.info), calibration=found.tensors)


class _DiskFull(nn.Module):
    """What a compiled module does when its cache disk is full: Inductor's write fails on first call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/cache/inductor/xy.cpp")
        except OSError as exc:
            raise RuntimeError("CppCompileError: C++ compile error") from exc


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), "disk_full"),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), "disk_full"),
        (PermissionError(errno.EACCES, "Permission denied"), "not_writable"),
        (OSError(errno.EROFS, "Read-only file system"), "not_writable"),
    ],
)
def test_the_cause_is_read_from_the_exception_chain(tmp_path: Path, error: OSError, reason: str) -> None:
    try:
        raise RuntimeError("CppCompileError") from error
    except RuntimeError as exc:
        assert why_compile_failed(exc, tmp_path)[0] == reason


def test_a_missing_compiler_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module.shutil, "which", lambda name: None)
    reason, words = why_compile_failed(RuntimeError("InvalidCxxCompiler"), tmp_path)
    assert reason == "no_compiler" and "C++ compiler" in words


def test_a_failed_int8_compile_serves_the_fastest_eager_precision(
    calibrated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "compile_int8", lambda module: _DiskFull())
    settings = Settings(
        checkpoint=calibrated, dtype="int8", compile=True, max_batch_size=2, cache_dir=tmp_path / "cache"
    )
    engine = Engine(settings)
    assert engine.dtype == torch.int8 and engine.compiled
    engine.warm_up()
    assert engine.dtype == engine_module.parse_dtype("auto", engine.device, int8_ready=False) != torch.int8
    assert not engine.info.compiled and engine.info.dtype != "int8"
    assert engine.info.degraded is not None and engine.info.degraded.reason == "disk_full"
    assert "images/s" in engine.info.degraded.message and "full" in engine.info.degraded.message


def test_models_and_metrics_say_the_model_is_degraded(random_checkpoint: Path, tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("")  # a cache folder under a file can never be made
    server = RunningServer(
        {
            "ALEXNET_CHECKPOINT": str(random_checkpoint),
            "ALEXNET_COMPILE": "true",
            "ALEXNET_CACHE_DIR": str(blocked / "cache"),
            "ALEXNET_MAX_BATCH_SIZE": "2",
        }
    )
    try:
        (model,) = httpx.get(f"{server.url}/models").json()["models"]
        metrics = httpx.get(f"{server.url}/metrics").text
    finally:
        server.stop()
    assert model["compiled"] is False and model["degraded"]["reason"] == "not_writable"
    assert "images/s" in model["degraded"]["message"]
    assert 'alexnet_model_degraded{model="random-catdog",reason="not_writable"} 1.0' in metrics
    assert f'dtype="{model["dtype"]}"' in metrics and "degraded" in server.output()
