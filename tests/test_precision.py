"""Device and dtype choices: what ``auto`` picks on this hardware, and refusals of what is not there."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from app.config import Settings
from app.engine import Engine
from model.precision import auto_dtype, cpu_has_fast_bf16, parse_dtype, resolve_device

CPU = torch.device("cpu")
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")


def test_auto_device_is_cuda_when_present_else_cpu() -> None:
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device() == resolve_device("auto")
    assert resolve_device("cpu") == CPU


@NO_CUDA
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_cuda_is_refused_by_name(name: str) -> None:
    with pytest.raises(ValueError, match=rf"device '{name}' requested but CUDA is not available"):
        resolve_device(name)


@pytest.mark.parametrize("name", ["banana", "gpu", "cuda:x", ""])
def test_a_device_torch_does_not_know_is_refused(name: str) -> None:
    with pytest.raises((ValueError, RuntimeError)):
        resolve_device(name)


def test_auto_dtype_follows_the_hardware() -> None:
    assert auto_dtype(CPU) == (torch.bfloat16 if cpu_has_fast_bf16() else torch.float32)
    if torch.cuda.is_available():
        cuda = torch.device("cuda")
        assert auto_dtype(cuda) == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)


@pytest.mark.parametrize(
    ("name", "dtype"),
    [("fp32", torch.float32), ("float32", torch.float32), ("bf16", torch.bfloat16), ("bfloat16", torch.bfloat16)]
    + [("fp16", torch.float16), ("float16", torch.float16)],
)
def test_dtype_names(name: str, dtype: torch.dtype) -> None:
    assert parse_dtype(name, CPU) == dtype


@pytest.mark.parametrize("name", ["fp64", "FP32", "half", "int4", ""])
def test_an_unknown_dtype_is_refused_by_name(name: str) -> None:
    with pytest.raises(ValueError, match=rf"unknown dtype '{name}'"):
        parse_dtype(name, CPU)


def test_the_engine_serves_what_auto_chose(random_checkpoint: Path) -> None:
    engine = Engine(Settings(checkpoint=random_checkpoint, device="auto", dtype="auto", compile=False))  # type: ignore[call-arg]
    expected_device = "cuda" if torch.cuda.is_available() else "cpu"
    expected_dtype = auto_dtype(torch.device(expected_device))
    assert (engine.info.device, engine.info.dtype) == (expected_device, str(expected_dtype).removeprefix("torch."))
    assert next(engine._module.parameters()).dtype == expected_dtype
    explicit = Engine(Settings(checkpoint=random_checkpoint, device="cpu", dtype="fp32", compile=False))  # type: ignore[call-arg]
    assert (explicit.info.device, explicit.info.dtype) == ("cpu", "float32")
