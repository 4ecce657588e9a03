"""Device and precision choices, decided once from what the hardware supports."""

from __future__ import annotations

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` means CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


def cpu_has_fast_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls/convs run natively instead of being emulated."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def auto_dtype(device: torch.device) -> torch.dtype:
    """Fastest dtype that keeps accuracy: bf16 on capable CPUs and CUDA, else fp32."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


def parse_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``, ``fp32``/``float32``, ``bf16``/``bfloat16``, ``fp16``/``float16``."""
    aliases = {
        "fp32": torch.float32,
        "float32": torch.float32,
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
    }
    if name == "auto":
        return auto_dtype(device)
    if name not in aliases:
        raise ValueError(f"unknown dtype {name!r}; use auto, fp32, bf16 or fp16")
    return aliases[name]
