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

    Takes ``checkpoint.network`` over: it is converted in place (no second copy of the
    weights), so deep-copy the checkpoint first to keep using the original.
    """
    prep = checkpoint.meta.preprocessing
    module = nn.Sequential(Normalize(prep.mean, prep.std), checkpoint.network)
    module = module.to(device=device, dtype=dtype).eval()
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module
