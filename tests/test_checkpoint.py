import json
import os
import pickle
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from model import network
from model.checkpoint import FORMAT_VERSION, CheckpointError, ModelMeta, load_checkpoint, save_checkpoint
from model.presets import IMAGENET_MEAN, IMAGENET_STD, Preprocessing


def _same_weights(a: nn.Module, b: nn.Module, atol: float = 0.0) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.allclose(sa[k], sb[k], atol=atol, rtol=0) for k in sa)


def test_round_trip_keeps_weights_and_metadata(tmp_path: Path) -> None:
    net = network.AlexNet(3)
    meta = ModelMeta(
        "animals", network.CLASSIC, ("cat", "dog", "fox"), Preprocessing(), {"epochs": 2, "val_accuracy": 0.5}
    )
    loaded = load_checkpoint(save_checkpoint(tmp_path / "m.safetensors", net, meta))
    assert loaded.meta == meta
    assert _same_weights(loaded.network, net)
    assert not loaded.network.training


def test_int8_round_trip_is_close_and_small(tmp_path: Path) -> None:
    net = network.AlexNet(2)
    with torch.no_grad():  # channels of very different sizes: one scale for the tensor would crush the small ones
        net.features[0].weight[0] *= 1e-3
        net.classifier[-1].weight[1] *= 50
    meta = ModelMeta("q", network.CLASSIC, ("cat", "dog"))
    full = save_checkpoint(tmp_path / "full.safetensors", net, meta)
    small = save_checkpoint(tmp_path / "q.safetensors", net, meta, int8=True)
    assert os.path.getsize(small) < 60_000_000 < os.path.getsize(full)
    loaded = load_checkpoint(small).network.state_dict()
    for name, weight in net.state_dict().items():
        if weight.dim() < 2:  # biases are stored as they are
            assert torch.equal(loaded[name], weight), name
            continue
        # Per output channel: the error stays within half of that channel's own int8 step.
        rows, got = weight.reshape(weight.shape[0], -1), loaded[name].reshape(weight.shape[0], -1)
        step = rows.abs().amax(dim=1, keepdim=True) / 127
        assert bool(((got - rows).abs() <= step / 2 + 1e-7 * step.clamp(min=1)).all()), name


@pytest.mark.parametrize(("arch", "relu1"), [(network.CLASSIC, True), (network.CLASSIC_NO_RELU1, False)])
def test_tutorial_state_dict_is_detected(tmp_path: Path, arch: str, relu1: bool) -> None:
    net = network.AlexNet(2, relu_after_conv1=relu1)
    torch.save(net.state_dict(), tmp_path / "alexnet.pth")
    loaded = load_checkpoint(tmp_path / "alexnet.pth")
    assert (loaded.meta.arch, loaded.meta.labels) == (arch, ("cat", "dog"))
    assert _same_weights(loaded.network, net)
    x = torch.randn(1, 3, 227, 227)
    assert torch.allclose(loaded.network(x), net.eval()(x))


def test_data_parallel_prefix_and_sidecar_labels(tmp_path: Path) -> None:
    state = {f"module.{k}": v for k, v in network.AlexNet(3).state_dict().items()}
    torch.save(state, tmp_path / "m.pth")
    (tmp_path / "m.pth.labels.txt").write_text("ant\nbee\nwasp\n")
    assert load_checkpoint(tmp_path / "m.pth").meta.labels == ("ant", "bee", "wasp")
    assert load_checkpoint(tmp_path / "m.pth", labels=["a", "b", "c"]).meta.labels == ("a", "b", "c")


def test_many_classes_without_labels_is_a_clear_error(tmp_path: Path) -> None:
    torch.save(network.AlexNet(5).state_dict(), tmp_path / "five.pth")
    with pytest.raises(CheckpointError, match=r"five\.pth.*5 classes but no label names"):
        load_checkpoint(tmp_path / "five.pth")


def test_torchvision_imagenet_file(tmp_path: Path) -> None:
    net = torchvision.models.alexnet(weights=None)
    path = tmp_path / "alexnet-owt-7be5be79.pth"
    torch.save(net.state_dict(), path)
    loaded = load_checkpoint(path)
    assert loaded.meta.arch == network.TORCHVISION
    assert len(loaded.meta.labels) == 1000 and loaded.meta.labels[:2] == ("tench", "goldfish")
    assert loaded.meta.preprocessing == Preprocessing(227, 256, IMAGENET_MEAN, IMAGENET_STD)
    x = torch.randn(1, 3, 227, 227)
    assert torch.allclose(loaded.network(x), net.eval()(x))


class _RunsCode:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ("touch /tmp/pwned-by-checkpoint",))


def test_refuses_a_pickle_that_would_run_code(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"features.0.weight": torch.zeros(1), "payload": _RunsCode()}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pth.*refused to unpickle"):
        load_checkpoint(path)
    raw = tmp_path / "evil-raw.pth"
    raw.write_bytes(pickle.dumps(_RunsCode(), protocol=2))
    with pytest.raises(CheckpointError, match="evil-raw.pth"):
        load_checkpoint(raw)
    assert not Path("/tmp/pwned-by-checkpoint").exists()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "neither a PyTorch state dict nor a safetensors file"),
        (b"hello, I am not a model", "neither a PyTorch state dict nor a safetensors file"),
    ],
)
def test_garbage_files(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "junk.bin"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=problem):
        load_checkpoint(path)


def test_truncated_files(tmp_path: Path) -> None:
    net = network.AlexNet(2)
    torch.save(net.state_dict(), tmp_path / "full.pth")
    save_checkpoint(tmp_path / "full.safetensors", net, ModelMeta("m", network.CLASSIC, ("cat", "dog")))
    for name in ("full.pth", "full.safetensors"):
        data = (tmp_path / name).read_bytes()
        (tmp_path / f"cut-{name}").write_bytes(data[: len(data) // 2])
        with pytest.raises(CheckpointError, match=f"cut-{name}"):
            load_checkpoint(tmp_path / f"cut-{name}")


def test_not_a_state_dict_and_wrong_shapes(tmp_path: Path) -> None:
    torch.save([torch.zeros(3)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_checkpoint(tmp_path / "list.pth")
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(CheckpointError, match="not an AlexNet state dict"):
        load_checkpoint(tmp_path / "resnet.pth")
    state = network.AlexNet(2).state_dict()
    state["classifier.4.weight"] = torch.zeros(10, 10)
    torch.save(state, tmp_path / "bent.pth")
    with pytest.raises(CheckpointError, match="do not fit the alexnet architecture"):
        load_checkpoint(tmp_path / "bent.pth")
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "missing.safetensors")


# --- the other shapes a checkpoint comes in --------------------------------------------


def _meta(**changes: object) -> ModelMeta:
    return replace(ModelMeta("m", network.CLASSIC, ("cat", "dog")), **changes)  # type: ignore[arg-type]


def test_a_state_dict_inside_a_training_checkpoint(tmp_path: Path) -> None:
    net = network.AlexNet(2)
    torch.save({"state_dict": net.state_dict(), "epoch": 7, "best_acc": 0.9}, tmp_path / "ckpt.pth")
    loaded = load_checkpoint(tmp_path / "ckpt.pth")
    assert (loaded.meta.arch, loaded.meta.labels, loaded.meta.name) == (network.CLASSIC, ("cat", "dog"), "ckpt")
    assert _same_weights(loaded.network, net)


def test_safetensors_without_our_metadata_is_read_as_a_state_dict(tmp_path: Path) -> None:
    net = network.AlexNet(3)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "plain.safetensors"))
    (tmp_path / "labels.txt").write_text("ant\nbee\n\nwasp\n")  # blank lines are ignored
    loaded = load_checkpoint(tmp_path / "plain.safetensors")
    assert (loaded.meta.arch, loaded.meta.labels, loaded.meta.name) == (
        network.CLASSIC,
        ("ant", "bee", "wasp"),
        "plain",
    )
    assert loaded.meta.preprocessing == Preprocessing()
    assert _same_weights(loaded.network, net)


def test_labels_come_from_the_sidecar_then_labels_txt(tmp_path: Path) -> None:
    torch.save(network.AlexNet(3).state_dict(), tmp_path / "m.pth")
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    assert load_checkpoint(tmp_path / "m.pth").meta.labels == ("a", "b", "c")
    (tmp_path / "m.pth.labels.txt").write_text("x\ny\nz\n")  # the file's own sidecar wins
    assert load_checkpoint(tmp_path / "m.pth").meta.labels == ("x", "y", "z")


def test_a_label_count_that_does_not_match_is_refused(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.safetensors", network.AlexNet(2), _meta())
    with pytest.raises(CheckpointError, match=r"m\.safetensors.*3 label names for a model with 2 classes"):
        load_checkpoint(path, labels=["a", "b", "c"])
    torch.save(network.AlexNet(3).state_dict(), tmp_path / "three.pth")
    (tmp_path / "three.pth.labels.txt").write_text("only\ntwo\n")
    with pytest.raises(CheckpointError, match=r"three\.pth\.labels\.txt.*2 label names for a model with 3 classes"):
        load_checkpoint(tmp_path / "three.pth")


def test_a_newer_format_version_is_refused(tmp_path: Path) -> None:
    path = save_checkpoint(
        tmp_path / "future.safetensors", network.AlexNet(2), _meta(format_version=FORMAT_VERSION + 1)
    )
    with pytest.raises(CheckpointError, match=rf"future\.safetensors.*format version {FORMAT_VERSION + 1} is newer"):
        load_checkpoint(path)
    same = save_checkpoint(tmp_path / "now.safetensors", network.AlexNet(2), _meta(format_version=FORMAT_VERSION))
    assert load_checkpoint(same).meta.format_version == FORMAT_VERSION


@pytest.mark.parametrize(
    "edit",
    [
        lambda meta: "{not json",
        lambda meta: json.dumps({k: v for k, v in json.loads(meta).items() if k != "preprocessing"}),
        lambda meta: json.dumps(json.loads(meta) | {"preprocessing": {"input_size": "big"}}),
        lambda meta: json.dumps(json.loads(meta) | {"labels": None}),
        lambda meta: "[1, 2]",
    ],
    ids=["not-json", "no-preprocessing", "bad-size", "no-labels", "not-an-object"],
)
def test_malformed_metadata_is_named(tmp_path: Path, edit: Callable[[str], str]) -> None:
    net = network.AlexNet(2)
    tensors = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(tensors, str(tmp_path / "odd.safetensors"), metadata={"alexnet_serving": edit(_meta().to_json())})
    with pytest.raises(CheckpointError, match=r"odd\.safetensors.*malformed metadata"):
        load_checkpoint(tmp_path / "odd.safetensors")


def test_our_file_is_never_taken_for_a_pickle(tmp_path: Path) -> None:
    """A safetensors file starts with its header's length: one whose low byte is 0x80 (one file
    in 32) looks like a pickle's first byte, yet must load as our format, metadata and all."""
    net = network.AlexNet(2)

    def write(padding: int) -> tuple[Path, bytes]:
        meta = _meta(training={"note": "x" * padding}, preprocessing=Preprocessing(resize_size=300))
        path = save_checkpoint(tmp_path / "m.safetensors", net, meta, int8=True)
        with open(path, "rb") as handle:
            return path, handle.read(8)

    _, head = write(0)
    padding = (0x80 - head[0]) % 256  # the header is padded to 8 bytes: so is this
    path, head = write(padding)
    assert head[:1] == b"\x80"
    loaded = load_checkpoint(path)
    assert loaded.meta.training == {"note": "x" * padding} and loaded.meta.preprocessing.resize_size == 300
