"""Step 1 of ``bench/gpu.sh``: the device, its driver, and the torch/CUDA/cuDNN versions."""

from __future__ import annotations

import platform
import shutil
import subprocess
from typing import Any

import torch
import torchvision


def nvidia_smi() -> dict[str, str] | None:
    """Name, memory, driver and clocks as ``nvidia-smi`` reports them; None without it."""
    if shutil.which("nvidia-smi") is None:
        return None
    fields = ("name", "memory.total", "driver_version", "clocks.max.sm", "power.limit")
    try:
        result = subprocess.run(
            ["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    values = [part.strip() for part in result.stdout.splitlines()[0].split(",")] if result.stdout.strip() else []
    return dict(zip(fields, values, strict=False))


def versions(device: torch.device) -> dict[str, Any]:
    """What makes a GPU number comparable; on the CPU (rehearsal) the GPU fields are None."""
    facts: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python": platform.python_version(),
        "gpu": None,
        "capability": None,
        "gpu_memory_gib": None,
        "driver": None,
        "nvidia_smi": None,
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        smi = nvidia_smi()
        facts |= {
            "gpu": properties.name,
            "capability": f"{properties.major}.{properties.minor}",
            "gpu_memory_gib": round(properties.total_memory / 2**30, 1),
            "multiprocessors": properties.multi_processor_count,
            "bf16_supported": torch.cuda.is_bf16_supported(),
            "driver": smi.get("driver_version") if smi else None,
            "nvidia_smi": smi,
        }
    return facts


def describe(facts: dict[str, Any]) -> str:
    """One line for the log."""
    if facts["gpu"]:
        where = f"{facts['gpu']} (sm {facts['capability']}, {facts['gpu_memory_gib']} GiB), driver {facts['driver']}"
    else:
        where = f"CPU ({platform.processor() or platform.machine()}), no GPU"
    return (
        f"{where}; torch {facts['torch']}, torchvision {facts['torchvision']}, CUDA {facts['cuda_runtime']}, "
        f"cuDNN {facts['cudnn']}, Python {facts['python']}"
    )
