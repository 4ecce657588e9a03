"""Model variants for benchmarks and peers, all built from ``model.inference.inference_module``.

``with_stock_lrn`` swaps our GEMM local response norm back to ``torch.nn.LocalResponseNorm``
(the same function): the network a tutorial would serve, and the reference the fast path is
checked against.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from model.checkpoint import Checkpoint
from model.inference import inference_module
from model.lrn import LocalResponseNorm
from model.quantize import compile_int8

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.int8}


@dataclass(frozen=True)
class Variant:
    """One way to run the model: precision, memory format, compilation, which LRN."""

    dtype: str = "fp32"
    channels_last: bool = True
    compile: bool = False
    stock_lrn: bool = False

    @property
    def name(self) -> str:
        parts = [self.dtype, "compiled" if self.compile else "eager", "CL" if self.channels_last else "NCHW"]
        if self.stock_lrn:
            parts.append("torch-LRN")
        return " ".join(parts)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


def with_stock_lrn(checkpoint: Checkpoint) -> Checkpoint:
    """A copy whose LRN layers are ``torch.nn.LocalResponseNorm`` with the same parameters."""
    network = copy.deepcopy(checkpoint.network)
    for parent in network.modules():
        for name, child in parent.named_children():
            if isinstance(child, LocalResponseNorm):
                setattr(parent, name, nn.LocalResponseNorm(child.size, child.alpha, child.beta, child.k))
    return Checkpoint(network, checkpoint.meta)


def build(checkpoint: Checkpoint, device: torch.device, variant: Variant) -> nn.Module:
    """The module for ``variant``: uint8 NCHW in, logits out (compiled lazily, one graph per batch size)."""
    source = (
        with_stock_lrn(checkpoint)
        if variant.stock_lrn
        else Checkpoint(copy.deepcopy(checkpoint.network), checkpoint.meta, checkpoint.calibration)
    )
    module = inference_module(source, device, variant.torch_dtype, channels_last=variant.channels_last)
    if variant.compile and variant.dtype == "int8":
        return compile_int8(module)
    if variant.compile:
        return torch.compile(module, dynamic=False)  # type: ignore[return-value]
    return module


def to_device(batch: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """Host uint8 batch → device, the way ``app.engine.Engine.run_tensors`` moves it."""
    if device.type == "cuda":
        batch = batch.pin_memory()
    batch = batch.to(device, non_blocking=True)
    return batch.contiguous(memory_format=torch.channels_last) if channels_last else batch.contiguous()


def probabilities(module: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW batch (already on the device) → float32 probabilities on the CPU."""
    with torch.inference_mode():
        return module(batch).float().softmax(dim=1).cpu()
