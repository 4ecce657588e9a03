"""Checkpoint formats: the only module that reads or writes model files.

Our own format is one ``.safetensors`` file whose header metadata carries the JSON
``ModelMeta``; weights may be int8 with per-output-channel scales (dequantised at load).
An int8-calibrated checkpoint also carries the observer state ``model.quantize`` stored
(tensors named ``__calibration__.*``, facts in the metadata's ``int8``).
Plain tutorial ``state_dict`` files and torchvision's ImageNet AlexNet file load too,
always through ``torch.load(weights_only=True)``, so no pickle can run code.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from model import network
from model.presets import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

FORMAT_VERSION = 1
_META_KEY = "alexnet_serving"
_SCALE_SUFFIX = ".__scale__"
_CALIBRATION_PREFIX = "__calibration__."
_CLASSIC_CONVS = (96, 256, 384, 384, 256)
_TORCHVISION_CONVS = (64, 192, 384, 256, 256)


class CheckpointError(ValueError):
    """A model file that cannot be loaded; the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"cannot load checkpoint {str(path)!r}: {problem}")
        self.path = str(path)
        self.problem = problem


@dataclass(frozen=True)
class ModelMeta:
    """Everything needed to rebuild, feed and label a network, in plain types."""

    name: str
    arch: str
    labels: tuple[str, ...]
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    training: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    int8: dict[str, Any] = field(default_factory=dict)  # static int8 calibration facts; empty: not calibrated

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def to_json(self) -> str:
        return json.dumps(asdict(self) | {"num_classes": self.num_classes})

    @classmethod
    def from_json(cls, text: str) -> ModelMeta:
        raw = json.loads(text)
        prep = raw["preprocessing"]
        return cls(
            name=raw["name"],
            arch=raw["arch"],
            labels=tuple(raw["labels"]),
            preprocessing=Preprocessing(
                input_size=int(prep["input_size"]),
                resize_size=int(prep["resize_size"]),
                mean=tuple(prep["mean"]),
                std=tuple(prep["std"]),
            ),
            training=dict(raw.get("training", {})),
            format_version=int(raw["format_version"]),
            int8=dict(raw.get("int8", {})),
        )


@dataclass(frozen=True)
class Checkpoint:
    """A loaded network (fp32, CPU, eval mode) and its metadata."""

    network: nn.Module
    meta: ModelMeta
    calibration: dict[str, torch.Tensor] = field(default_factory=dict)  # int8 observer state, see model.quantize


def save_checkpoint(
    path: str | Path,
    net: nn.Module,
    meta: ModelMeta,
    *,
    int8: bool = False,
    calibration: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write our safetensors format; ``int8`` stores every weight matrix/kernel as int8;
    ``calibration`` is the int8 observer state (``meta.int8`` describes it)."""
    tensors: dict[str, torch.Tensor] = {
        _CALIBRATION_PREFIX + name: tensor.detach().to("cpu").contiguous()
        for name, tensor in (calibration or {}).items()
    }
    for name, tensor in net.state_dict().items():
        tensor = tensor.detach().to("cpu", torch.float32).contiguous()
        if int8 and name.endswith("weight") and tensor.dim() >= 2:
            q, scale = quantize_int8(tensor)
            tensors[name] = q
            tensors[name + _SCALE_SUFFIX] = scale
        else:
            tensors[name] = tensor
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={_META_KEY: meta.to_json()})
    return path


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: ``weight ≈ q * scale[:, None, ...]``."""
    flat = weight.reshape(weight.shape[0], -1)
    scale = flat.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    q = torch.round(flat / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q.reshape(weight.shape), scale


def load_checkpoint(path: str | Path, *, labels: list[str] | None = None) -> Checkpoint:
    """Load any supported model file; raise ``CheckpointError`` for anything else.

    ``labels`` overrides the label names (else: our metadata, a sidecar
    ``<file>.labels.txt`` or ``labels.txt``, torchvision's ImageNet names, or cat/dog).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "no such file")
    with open(path, "rb") as handle:
        magic = handle.read(9)
    # safetensors: an 8-byte little-endian header length, then the JSON header. Checked first: a
    # length whose low byte is 0x80 would otherwise pass for a pickle's protocol marker.
    safetensors = magic[8:9] == b"{" and 8 + int.from_bytes(magic[:8], "little") <= path.stat().st_size
    if not safetensors and (magic[:2] == b"PK" or magic[:1] == b"\x80"):
        return _load_state_dict_file(path, labels)
    return _load_safetensors(path, labels)


def _load_safetensors(path: Path, labels: list[str] | None) -> Checkpoint:
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
        raw = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(path, f"neither a PyTorch state dict nor a safetensors file ({exc})") from exc
    if _META_KEY not in header:
        return _from_state_dict(path, _dequantize(raw), labels)
    try:
        meta = ModelMeta.from_json(header[_META_KEY])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(path, f"malformed metadata ({exc})") from exc
    if meta.format_version > FORMAT_VERSION:
        raise CheckpointError(path, f"format version {meta.format_version} is newer than this code ({FORMAT_VERSION})")
    if labels is not None:
        meta = replace(meta, labels=_checked_labels(path, labels, meta.num_classes))
    calibration = {
        name.removeprefix(_CALIBRATION_PREFIX): raw.pop(name)
        for name in list(raw)
        if name.startswith(_CALIBRATION_PREFIX)
    }
    return Checkpoint(_build_loaded(path, meta.arch, meta.num_classes, _dequantize(raw)), meta, calibration)


def _dequantize(raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = {}
    for name, tensor in raw.items():
        if name.endswith(_SCALE_SUFFIX):
            continue
        scale = raw.get(name + _SCALE_SUFFIX)
        if scale is not None:
            shape = (-1,) + (1,) * (tensor.dim() - 1)
            tensor = tensor.to(torch.float32) * scale.view(shape)
        state[name] = tensor
    return state


def _unpickling_reason(exc: Exception) -> str:
    """What torch refused to unpickle ("unsupported GLOBAL posix.system ..."), without its advice
    to retry with ``weights_only=False``: that would run the file's code."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reasons = [line for line in lines if "weights_only" not in line and not line.startswith("Weights only load failed")]
    return reasons[0] if reasons else type(exc).__name__


def _load_state_dict_file(path: Path, labels: list[str] | None) -> Checkpoint:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = _unpickling_reason(exc)
        raise CheckpointError(path, f"refused to unpickle objects other than tensors ({reason})") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(path, f"truncated or corrupt file ({exc})") from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(path, "not a state dict (expected a mapping of parameter names to tensors)")
    state = {key.removeprefix("module."): value for key, value in obj.items()}
    return _from_state_dict(path, state, labels)


def _from_state_dict(path: Path, state: dict[str, torch.Tensor], labels: list[str] | None) -> Checkpoint:
    arch, num_classes = _detect(path, state)
    if arch == network.TORCHVISION:
        prep = Preprocessing(input_size=227, resize_size=256, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    else:
        prep = Preprocessing()
    meta = ModelMeta(
        name=path.stem,
        arch=arch,
        labels=_resolve_labels(path, labels, num_classes, arch),
        preprocessing=prep,
        training={"source": f"imported from {path.name}"},
    )
    return Checkpoint(_build_loaded(path, arch, num_classes, state), meta)


def _detect(path: Path, state: dict[str, torch.Tensor]) -> tuple[str, int]:
    convs = _ordered(state, "features.", 4)
    linears = _ordered(state, "classifier.", 2)
    if len(convs) != 5 or len(linears) != 3:
        raise CheckpointError(
            path,
            f"not an AlexNet state dict: found {len(convs)} conv and {len(linears)} linear weights, expected 5 and 3",
        )
    channels = tuple(int(state[key].shape[0]) for _, key in convs)
    num_classes = int(state[linears[-1][1]].shape[0])
    if channels == _TORCHVISION_CONVS:
        return network.TORCHVISION, num_classes
    if channels == _CLASSIC_CONVS:
        indices = [index for index, _ in convs]
        return (network.CLASSIC if indices[1] - indices[0] == 4 else network.CLASSIC_NO_RELU1), num_classes
    raise CheckpointError(
        path, f"conv channels {channels} match no known AlexNet ({_CLASSIC_CONVS} or {_TORCHVISION_CONVS})"
    )


def _ordered(state: dict[str, torch.Tensor], prefix: str, dims: int) -> list[tuple[int, str]]:
    found = []
    for key, value in state.items():
        parts = key.split(".")
        if (
            key.startswith(prefix)
            and len(parts) == 3
            and parts[2] == "weight"
            and parts[1].isdigit()
            and value.dim() == dims
        ):
            found.append((int(parts[1]), key))
    return sorted(found)


def _build_loaded(path: Path, arch: str, num_classes: int, state: dict[str, torch.Tensor]) -> nn.Module:
    try:
        net = network.build(arch, num_classes)
    except ValueError as exc:
        raise CheckpointError(path, str(exc)) from exc
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:500]
        raise CheckpointError(path, f"weights do not fit the {arch} architecture: {detail}") from exc
    return net.eval()


def _resolve_labels(path: Path, labels: list[str] | None, num_classes: int, arch: str) -> tuple[str, ...]:
    if labels is not None:
        return _checked_labels(path, labels, num_classes)
    for sidecar in (path.with_name(path.name + ".labels.txt"), path.with_name("labels.txt")):
        if sidecar.is_file():
            lines = [line.strip() for line in sidecar.read_text().splitlines() if line.strip()]
            return _checked_labels(sidecar, lines, num_classes)
    if arch == network.TORCHVISION and num_classes == 1000:
        from torchvision.models import AlexNet_Weights

        return tuple(AlexNet_Weights.IMAGENET1K_V1.meta["categories"])
    if num_classes == 2:
        return ("cat", "dog")
    raise CheckpointError(
        path,
        f"{num_classes} classes but no label names: pass labels or put one name per line in {path.name}.labels.txt",
    )


def _checked_labels(path: Path, labels: list[str] | tuple[str, ...], num_classes: int) -> tuple[str, ...]:
    if len(labels) != num_classes:
        raise CheckpointError(path, f"{len(labels)} label names for a model with {num_classes} classes")
    return tuple(labels)


def save_training_state(path: str | Path, state: dict[str, Any]) -> None:
    """Write a resumable training state (tensors and plain types only), atomically."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Read a state written by ``save_training_state`` (never unpickles objects)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(path, f"unreadable training state ({_unpickling_reason(exc)})") from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(path, f"unreadable training state ({exc})") from exc
    if not isinstance(state, dict):
        raise CheckpointError(path, "training state is not a mapping")
    return state
