"""Turn a loaded checkpoint into the module that runs: normalise → network, in the
chosen device, dtype and memory format. Evaluation, serving and benchmarks share it."""

from __future__ import annotations

import torch
from torch import nn

from model.checkpoint import Checkpoint
from model.presets import Normalize


def inference_module(
    checkpoint: Checkpoint,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    *,
    channels_last: bool = True,
) -> nn.Module:
    """uint8 NCHW batch in, logits (in ``dtype``) out; weights converted once, not per call.

    ``torch.int8`` gives ``model.quantize``'s static int8 graph (CPU only, from the
    checkpoint's stored calibration; run it through ``model.quantize.compile_int8``).
    Takes ``checkpoint.network`` over: it is converted in place (no second copy of the
    weights), so deep-copy the checkpoint first to keep using the original.
    """
    if dtype == torch.int8:
        from model.quantize import quantized_module  # model.quantize builds on this module

        return quantized_module(checkpoint)
    prep = checkpoint.meta.preprocessing
    module = nn.Sequential(Normalize(prep.mean, prep.std), checkpoint.network)
    module = module.to(device=device, dtype=dtype).eval()
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module
