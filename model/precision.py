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


def cpu_supports_int8() -> bool:
    """AVX512-VNNI or AMX: oneDNN runs int8 convolutions and matmuls natively."""
    return bool(torch.cpu._is_vnni_supported() or torch.cpu._is_amx_tile_supported())


def auto_dtype(device: torch.device, *, int8_ready: bool = False) -> torch.dtype:
    """Fastest dtype that keeps accuracy: static int8 on VNNI/AMX CPUs when the model is
    ready for it (``int8_ready``: calibrated and compiled), else bf16 on capable CPUs and
    CUDA, else fp32. ``torch.int8`` stands for ``model.quantize``'s int8 graph."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if int8_ready and cpu_supports_int8():
        return torch.int8
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


def parse_dtype(name: str, device: torch.device, *, int8_ready: bool = False) -> torch.dtype:
    """``auto``, ``fp32``/``float32``, ``bf16``/``bfloat16``, ``fp16``/``float16``, ``int8`` (CPU)."""
    aliases = {
        "fp32": torch.float32,
        "float32": torch.float32,
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
        "int8": torch.int8,
    }
    if name == "auto":
        return auto_dtype(device, int8_ready=int8_ready)
    if name not in aliases:
        raise ValueError(f"unknown dtype {name!r}; use auto, fp32, bf16, fp16 or int8")
    if aliases[name] == torch.int8 and device.type != "cpu":
        raise ValueError(f"int8 runs on the CPU only, not on {device}")
    return aliases[name]
