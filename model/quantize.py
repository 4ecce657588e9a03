"""Static int8 for CPUs with VNNI or AMX: PyTorch's PT2E path with torchao's X86InductorQuantizer.

Calibration runs once, offline (``python -m model.export --calibrate DIR``): the network is
exported, observers watch a folder of photos, and their state (activation histograms and
ranges, per-channel weight ranges) goes into the checkpoint. At start-up the same graph is
exported and prepared again and the stored observer state is loaded instead of running data,
so ``convert_pt2e`` produces the same int8 graph without any images. Inductor with freezing
then lowers it to oneDNN int8 convolutions and matmuls (``compile_int8``).

The ``layout`` stored with the state names every observer and the node it watches; a torch or
torchao that lays the graph out differently refuses the calibration instead of misapplying it.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from model.checkpoint import Checkpoint
from model.inference import inference_module

QUANTIZER = "torchao X86InductorQuantizer (static, per-channel int8 weights, uint8 activations)"


class CalibrationError(ValueError):
    """A checkpoint without int8 calibration, or one made for another graph layout."""


@dataclass(frozen=True)
class Calibration:
    """Observer state after calibration: what ``convert_pt2e`` needs, in plain tensors."""

    tensors: dict[str, torch.Tensor]  # "<observer>.<buffer>" → tensor
    info: dict[str, Any]  # quantizer, versions, layout, images used


def is_calibrated(checkpoint: Checkpoint) -> bool:
    return bool(checkpoint.meta.int8) and bool(checkpoint.calibration)


def calibrate(checkpoint: Checkpoint, batches: Iterable[torch.Tensor], *, source: str = "") -> Calibration:
    """Run uint8 NCHW ``batches`` through the prepared graph; returns the observers' state.

    The checkpoint's network is not modified (it is copied)."""
    prepared = _prepared(copy.deepcopy(checkpoint))
    images = 0
    with torch.no_grad():
        for batch in batches:
            prepared(_as_input(batch))
            images += batch.shape[0]
    if images == 0:
        raise CalibrationError("no calibration images")
    tensors = {
        f"{name}.{key}": value.detach().clone()
        for name, observer in _observers(prepared).items()
        for key, value in observer.state_dict().items()
    }
    info = {
        "quantizer": QUANTIZER,
        "torch": torch.__version__,
        "torchao": _torchao_version(),
        "images": images,
        "source": source,
        "layout": _layout(prepared),
    }
    return Calibration(tensors, info)


def quantized_module(checkpoint: Checkpoint) -> nn.Module:
    """The int8 graph (normalise → network) rebuilt from the checkpoint's stored calibration.

    Run eagerly it is the reference (quantise/dequantise around fp32 ops); ``compile_int8``
    makes it fast. Takes ``checkpoint.network`` over, like ``inference_module``."""
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    if not is_calibrated(checkpoint):
        raise CalibrationError(
            f"checkpoint {checkpoint.meta.name!r} has no int8 calibration; "
            "add it with python -m model.export --calibrate IMAGE_DIR"
        )
    prepared = _prepared(checkpoint)
    stored = list(checkpoint.meta.int8.get("layout", []))
    if (layout := _layout(prepared)) != stored:
        raise CalibrationError(
            f"the int8 calibration of {checkpoint.meta.name!r} was made for another graph layout "
            f"(torch {checkpoint.meta.int8.get('torch')}, torchao {checkpoint.meta.int8.get('torchao')}; "
            f"{len(stored)} observers stored, {len(layout)} here); recalibrate with python -m model.export --calibrate"
        )
    for name, observer in _observers(prepared).items():
        state = {key: value for key, value in checkpoint.calibration.items() if key.startswith(name + ".")}
        observer.load_state_dict({key.removeprefix(name + "."): value for key, value in state.items()})
    converted = allow_exported_model_train_eval(convert_pt2e(prepared))  # .eval() stays harmless
    return _FloatInput(converted)


def compile_int8(module: nn.Module) -> nn.Module:
    """torch.compile with freezing: Inductor folds the weights into prepacked oneDNN int8 kernels."""
    return _Freezing(torch.compile(module, dynamic=None))


class _Freezing(nn.Module):
    """Calls a compiled module with Inductor's ``freezing`` on, for this call only.

    ``torch.compile(options={"freezing": True})`` does not reach every step that needs it
    (the int8 prepack then fails to compile), and the global flag would change how every
    other compiled model in the process is built; every call sets it, as a recompile for a
    new batch size can happen on any call."""

    def __init__(self, compiled: nn.Module) -> None:
        super().__init__()
        self.compiled = compiled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch._inductor.config as inductor_config

        # torch's own int8 lowering warns about its own tensor copy at every compile: not ours to fix.
        with inductor_config.patch(freezing=True), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "To copy construct from a tensor", UserWarning)
            return self.compiled(x)


class _FloatInput(nn.Module):
    """The exported graph takes float32 NCHW on the 0–255 scale; uint8 batches are cast first."""

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.graph = graph

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(_as_input(x))


def _as_input(batch: torch.Tensor) -> torch.Tensor:
    return batch.to(torch.float32, memory_format=torch.channels_last)


def _prepared(checkpoint: Checkpoint) -> torch.fx.GraphModule:
    """Export normalise → network (fp32, channels-last, dynamic batch) and insert observers."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    module = inference_module(checkpoint, torch.device("cpu"), torch.float32)
    size = checkpoint.meta.preprocessing.input_size
    example = _as_input(torch.zeros(2, 3, size, size))
    batch = torch.export.Dim("batch", min=1, max=4096)
    graph = torch.export.export(module, (example,), dynamic_shapes=({0: batch},)).module()
    quantizer = X86InductorQuantizer()
    quantizer.set_global(get_default_x86_inductor_quantization_config())
    with warnings.catch_warnings():
        # The max-pools after LRN see float input, so they stay float: expected, not a problem.
        warnings.filterwarnings("ignore", message="The input of maxpool2d is not quantized")
        return prepare_pt2e(graph, quantizer)


def _observers(prepared: torch.fx.GraphModule) -> dict[str, nn.Module]:
    from torchao.quantization.pt2e.observer import ObserverBase

    return {name: child for name, child in prepared.named_children() if isinstance(child, ObserverBase)}


def _layout(prepared: torch.fx.GraphModule) -> list[str]:
    """``observer <- watched node`` for every observer, in graph order."""
    observers = _observers(prepared)
    return [
        f"{node.target} <- {node.args[0]}"
        for node in prepared.graph.nodes
        if node.op == "call_module" and node.target in observers
    ]


def _torchao_version() -> str:
    import torchao

    return str(torchao.__version__)
