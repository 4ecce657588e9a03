"""A tiny real training run on generated images, resumed, then evaluated."""

from __future__ import annotations

import json
import math
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model import evaluate, train
from model.checkpoint import ModelMeta, load_checkpoint, load_training_state, save_checkpoint
from model.network import CLASSIC, AlexNet


def _make_folder(root: Path, per_class: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for label, channel in (("blue", 2), ("red", 0)):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 90, (120, 160, 3), dtype=np.uint8)
            pixels[..., channel] = rng.integers(170, 256, (120, 160), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.jpg")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("colours")
    _make_folder(root / "train", 24, seed=1)
    _make_folder(root / "val", 8, seed=2)
    return root


def _args(data: Path, out: Path, epochs: int) -> list[str]:
    return [
        "--data",
        str(data),
        "--out",
        str(out),
        "--epochs",
        str(epochs),
        "--batch-size",
        "16",
        "--lr",
        "0.005",
        "--warmup-epochs",
        "0",
        "--no-compile",
        "--amp",
        "off",
        "--workers",
        "0",
        "--name",
        "colours",
    ]


def test_loss_falls_resumes_and_evaluates(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    train.main(train.get_args_parser().parse_args(_args(data, out, 2)))
    summary = train.main(train.get_args_parser().parse_args(_args(data, out, 5)))  # resumes after epoch 2
    printed_by_training = capsys.readouterr().out
    assert "resumed from" in printed_by_training
    assert f"serve it: alexnet-serve --checkpoint {out / 'model.safetensors'}" in printed_by_training
    # one model to serve (the best epoch) and one state to resume from, nothing redundant
    assert sorted(path.name for path in out.iterdir() if path.suffix in (".safetensors", ".pt")) == [
        "model.safetensors",
        "state.pt",
    ]
    losses = [h["train_loss"] for h in summary["history"]]
    assert len(losses) == 5 and losses[-1] < losses[0]
    assert (out / "curves.png").stat().st_size > 0
    assert json.loads((out / "summary.json").read_text())["best_epoch"] == summary["best_epoch"]

    checkpoint = load_checkpoint(out / "model.safetensors")
    assert checkpoint.meta.labels == ("blue", "red") and checkpoint.meta.name == "colours"
    assert checkpoint.meta.training["best_val_accuracy"] == summary["best_val_accuracy"]

    report = evaluate.main(
        evaluate.get_args_parser().parse_args(
            [
                "--checkpoint",
                str(out / "model.safetensors"),
                "--data",
                str(data / "val"),
                "--json",
                "--confusion-png",
                str(tmp_path / "confusion.png"),
            ]
        )
    )
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert "inference" in captured.err  # progress over the model's batches, not only over decoding
    assert (tmp_path / "confusion.png").read_bytes().startswith(b"\x89PNG")
    assert printed["images"] == 16 and printed["accuracy"] == report.accuracy
    assert report.accuracy == pytest.approx(summary["best_val_accuracy"])
    assert set(printed["per_class"]) == {"blue", "red"}


def test_report_table() -> None:
    report = evaluate.Report(("cat", "dog"), [[8, 2], [1, 9]])
    assert report.accuracy == 0.85
    assert report.precision(0) == 8 / 9 and report.recall(1) == 0.9
    table = report.table()
    assert "accuracy: 85.00%" in table and "confusion matrix" in table


def test_init_continues_from_a_model_file(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(3)
    start = save_checkpoint(tmp_path / "start.safetensors", AlexNet(2), ModelMeta("colours", CLASSIC, ("blue", "red")))
    args = _args(data, tmp_path / "more", 1)
    args[args.index("--lr") + 1] = "0"  # no step moves a weight: the result must be the start
    train.main(train.get_args_parser().parse_args([*args, "--init", str(start), "--crop-scale", "0.6"]))
    assert "starting from the weights in" in capsys.readouterr().out
    before, after = (
        load_checkpoint(start).network.state_dict(),
        load_checkpoint(tmp_path / "more" / "model.safetensors"),
    )
    for name, tensor in after.network.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_init_refuses_a_model_for_other_labels(data: Path, tmp_path: Path) -> None:
    start = save_checkpoint(tmp_path / "catdog.safetensors", AlexNet(2), ModelMeta("catdog", CLASSIC, ("cat", "dog")))
    args = [*_args(data, tmp_path / "x", 1), "--init", str(start)]
    with pytest.raises(SystemExit, match="labels"):
        train.main(train.get_args_parser().parse_args(args))


def test_help_shows_the_command_and_defaults() -> None:
    text = train.get_args_parser().format_help()
    assert text.startswith("usage: python -m model.train")
    assert "(default: 40)" in text and "(default: 0.01)" in text and "(default: None)" not in text


# --- device choices (checked on the CPU; the CUDA run itself skips without CUDA) -----------

CUDA = torch.device("cuda")  # a device object needs no GPU; nothing here touches one


def test_loader_plan_keeps_the_cpu_recipe_and_feeds_a_gpu() -> None:
    cpu = torch.device("cpu")
    assert train.loader_plan(cpu, None, 16) == train.LoaderPlan(1, pin_memory=False, prefetch_factor=None)
    assert train.loader_plan(cpu, 0, 16).workers == 0
    assert train.loader_plan(CUDA, None, 16) == train.LoaderPlan(8, pin_memory=True, prefetch_factor=4)
    assert train.loader_plan(CUDA, None, 4).workers == 3  # a core left for the training loop
    assert train.loader_plan(CUDA, None, None).workers == 1
    assert train.loader_plan(CUDA, 0, 16) == train.LoaderPlan(0, pin_memory=True, prefetch_factor=None)


def test_amp_choice_and_loss_scaling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert train.amp_dtype("auto", CUDA) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert train.amp_dtype("auto", CUDA) == torch.float16  # pre-Ampere GPUs
    assert train.amp_dtype("off", CUDA) is None and train.amp_dtype("fp16", torch.device("cpu")) == torch.float16
    monkeypatch.setattr(train, "cpu_has_fast_bf16", lambda: False)
    assert train.amp_dtype("auto", torch.device("cpu")) is None
    assert train.needs_grad_scaler(torch.float16, CUDA)
    assert not train.needs_grad_scaler(torch.bfloat16, CUDA)
    assert not train.needs_grad_scaler(None, CUDA)
    assert not train.needs_grad_scaler(torch.float16, torch.device("cpu"))


def _epoch(scaler: torch.amp.GradScaler | None) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))
    images = torch.randn(32, 3, 4, 4) * 50  # large inputs: gradients well over the clipping norm
    loader = torch.utils.data.DataLoader(list(zip(images, torch.randint(0, 2, (32,)), strict=True)), batch_size=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train.train_one_epoch(
        model, loader, optimizer, torch.nn.CrossEntropyLoss(), device=torch.device("cpu"),
        autocast=nullcontext, schedule=lambda step: 0.1, first_step=0, desc="test", scaler=scaler,
    )  # fmt: skip
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def test_loss_scaling_clips_the_true_gradients() -> None:
    """A power-of-two loss scale, unscaled before clipping, gives exactly the unscaled steps."""
    plain = _epoch(None)
    scaled = _epoch(torch.amp.GradScaler("cpu", init_scale=2.0**10))
    for name, tensor in plain.items():
        assert torch.equal(scaled[name], tensor), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: trains on the GPU with fp16 and loss scaling")
def test_trains_on_the_gpu_with_fp16_loss_scaling(data: Path, tmp_path: Path) -> None:
    args = _args(data, tmp_path / "gpu", 2)
    args[args.index("--amp") + 1] = "fp16"
    summary = train.main(train.get_args_parser().parse_args([*args, "--device", "cuda"]))
    assert summary["device"].startswith("cuda") and summary["amp"] == "torch.float16"
    assert all(math.isfinite(h["train_loss"]) for h in summary["history"])
    assert "scaler" in load_training_state(tmp_path / "gpu" / "state.pt")


def test_mix_sampler_draws_a_fresh_share_of_each_source_per_epoch() -> None:
    from model.data import MixSampler

    generator = torch.Generator()
    sampler = MixSampler([6, 10], [1.0, 0.5], generator)
    assert len(sampler) == 11

    def epoch(seed: int) -> list[int]:
        generator.manual_seed(seed)
        return list(sampler)

    first = epoch(0)
    assert len(first) == len(set(first)) == 11
    assert set(range(6)) <= set(first)  # all of the main folder
    assert len([i for i in first if i >= 6]) == 5 and max(first) < 16  # half of the extra one
    assert epoch(0) == first  # a seeded epoch repeats exactly (what a resume relies on)
    assert {i for i in epoch(1) if i >= 6} != {i for i in first if i >= 6}
    with pytest.raises(ValueError):
        MixSampler([4], [1.5], generator)


def test_extra_folder_trains_and_a_resume_repeats_the_curve(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = tmp_path / "extra"
    _make_folder(extra, 16, seed=3)

    def run(out: str) -> dict:
        args = [*_args(data, tmp_path / out, 2), "--extra", str(extra), "--extra-fraction", "0.5"]
        return train.main(train.get_args_parser().parse_args(args))

    straight = run("straight")
    assert straight["train_images"] == {str(data / "train"): 48, str(extra): 32}

    save_state = train.save_training_state

    def killed_after_first_epoch(*args: object) -> None:
        save_state(*args)
        raise KeyboardInterrupt  # the run dies right after epoch 1's state is written

    monkeypatch.setattr(train, "save_training_state", killed_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        run("resumed")
    monkeypatch.setattr(train, "save_training_state", save_state)
    resumed = run("resumed")  # the same command again
    assert len(resumed["history"]) == 2
    for a, b in zip(straight["history"], resumed["history"], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert b["val_accuracy"] == a["val_accuracy"]


def test_extra_folder_with_other_classes_is_refused(data: Path, tmp_path: Path) -> None:
    extra = tmp_path / "extra"
    (extra / "green").mkdir(parents=True)
    Image.new("RGB", (64, 64), "green").save(extra / "green" / "0.jpg")
    with pytest.raises(SystemExit, match="classes"):
        train.main(train.get_args_parser().parse_args([*_args(data, tmp_path / "x", 1), "--extra", str(extra)]))
