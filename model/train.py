"""Train the classic AlexNet on an image folder, resumably, and write a checkpoint,
a JSON summary and a plot of the curves.

    python -m model.train --data ../shared/data/catdog --out runs/catdog

``DATA/train`` is trained on, with any ``--extra`` folders (each epoch draws ``--extra-fraction`` of
each, afresh); ``DATA/val`` alone selects the best epoch. ``OUT`` holds two model files:
``model.safetensors``, the best epoch so far (the one to serve; its metadata carries the training
summary once the run ends), and ``state.pt``, the last epoch with its optimiser state, from which
re-running the same command resumes. Beside them: ``summary.json``, ``curves.png`` and ``cache/``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader
from tqdm import tqdm

from model import network
from model.checkpoint import ModelMeta, load_training_state, save_checkpoint, save_training_state
from model.data import CachedImages, MixSampler
from model.evaluate import Report, confusion_matrix
from model.precision import cpu_has_fast_bf16, resolve_device
from model.presets import Normalize, Preprocessing, train_augment

MODEL_FILE = "model.safetensors"  # the best epoch: what to serve
STATE_FILE = "state.pt"  # the last epoch and its optimiser: what a re-run resumes from


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each option's default, except where there is none (required or unset options)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.required or action.default is None or action.default is argparse.SUPPRESS or "%(default)" in text:
            return text
        return super()._get_help_string(action) or ""


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m model.train",
        description="Train AlexNet on DATA/train, select on DATA/val; re-run the same command to resume.",
        formatter_class=DefaultsHelpFormatter,
        add_help=add_help,
    )
    parser.add_argument("--data", required=True, help="folder with train/ and val/ image folders")
    parser.add_argument(
        "--out", required=True, help="run folder: model.safetensors (best, to serve), state.pt (to resume), summary"
    )
    parser.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="DIR",
        help="more training photos in class folders (repeatable); never used for selection",
    )
    parser.add_argument(
        "--extra-fraction",
        type=float,
        default=1.0,
        help="share of each --extra folder drawn afresh every epoch (1: all of it, 0.5: a random half)",
    )
    parser.add_argument("--name", default="alexnet-catdog", help="model name stored in the checkpoint")
    parser.add_argument("--epochs", type=int, default=40, help="total epochs, counting those already run")
    parser.add_argument("--batch-size", type=int, default=64, help="training images per step")
    parser.add_argument("--lr", type=float, default=0.01, help="peak SGD learning rate")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD (Nesterov) momentum")
    parser.add_argument("--weight-decay", type=float, default=5e-4, help="on weights, not on biases")
    parser.add_argument("--label-smoothing", type=float, default=0.1, help="cross-entropy label smoothing")
    parser.add_argument("--warmup-epochs", type=float, default=1.0, help="linear learning-rate warm-up")
    parser.add_argument("--seed", type=int, default=0, help="initialisation and shuffling")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    parser.add_argument(
        "--amp", choices=["auto", "bf16", "fp16", "off"], default="auto", help="autocast; auto: bf16 where fast"
    )
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True, help="torch.compile")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="augmentation processes (unset: 1 on the CPU; on CUDA enough to keep the GPU fed, up to 8)",
    )
    parser.add_argument("--cache-dir", default=None, help="decoded-image cache (unset: OUT/cache)")
    parser.add_argument("--limit", type=int, default=None, help="use at most this many images per split")
    parser.add_argument(
        "--init",
        default=None,
        help="start from this model file's weights (fresh optimiser and schedule), e.g. to continue a finished run",
    )
    parser.add_argument(
        "--crop-scale", type=float, default=0.3, help="smallest area fraction kept by the random resized crop"
    )
    return parser


def amp_dtype(choice: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: bf16 on CPUs with native bf16 (AVX512-BF16/AMX), bf16/fp16 on CUDA."""
    if choice == "off":
        return None
    if choice == "bf16":
        return torch.bfloat16
    if choice == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else None


def needs_grad_scaler(dtype: torch.dtype | None, device: torch.device) -> bool:
    """fp16 autocast on CUDA loses small gradients without loss scaling; bf16 and fp32 do not."""
    return dtype == torch.float16 and device.type == "cuda"


@dataclass(frozen=True)
class LoaderPlan:
    """How the training data reaches the device."""

    workers: int
    pin_memory: bool
    prefetch_factor: int | None


def loader_plan(device: torch.device, workers: int | None, cpu_count: int | None) -> LoaderPlan:
    """On CUDA: augmentation in up to 8 processes (leaving a core for the training loop), pinned
    batches and a deeper prefetch, so the GPU is not left waiting; on the CPU the recipe as it was
    (one process unless ``workers`` says otherwise, nothing pinned)."""
    if device.type != "cuda":
        count = 1 if workers is None else workers
        return LoaderPlan(count, pin_memory=False, prefetch_factor=None)
    count = max(1, min(8, (cpu_count or 2) - 1)) if workers is None else workers
    return LoaderPlan(count, pin_memory=True, prefetch_factor=4 if count > 0 else None)


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    *,
    device: torch.device,
    autocast: Any,
    schedule: Any,
    first_step: int,
    desc: str,
    scaler: torch.amp.GradScaler | None = None,
) -> float:
    """One pass over ``loader``; returns the mean training loss. ``scaler`` scales the loss for
    fp16 autocast on CUDA; without one every step is as it always was."""
    model.train()
    total, count = 0.0, 0
    bar = tqdm(loader, desc=desc, mininterval=1 if sys.stderr.isatty() else 30, leave=False)
    for i, (images, targets) in enumerate(bar):
        for group in optimizer.param_groups:
            group["lr"] = schedule(first_step + i)
        images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        targets = targets.to(device, non_blocking=True)
        with autocast():
            loss = criterion(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)  # clip the true gradients
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
        total += loss.item() * len(targets)
        count += len(targets)
        bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
    return total / max(1, count)


def plot_history(history: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], label="train loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [100 * h["val_accuracy"] for h in history], label="val accuracy", color="tab:green")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def training_data(
    args: argparse.Namespace, prep: Preprocessing, cache: str | Path
) -> tuple[ConcatDataset, list[CachedImages]]:
    """``DATA/train`` then each ``--extra`` folder, augmented alike; all must have the same classes."""
    augment = train_augment(prep, min_scale=args.crop_scale)
    roots = [Path(args.data) / "train", *map(Path, args.extra)]
    sources = [
        CachedImages(root, prep, split="train", cache_dir=cache, limit=args.limit, transform=augment) for root in roots
    ]
    for root, source in zip(roots[1:], sources[1:], strict=True):
        if source.classes != sources[0].classes:
            raise SystemExit(f"--extra {root}: classes {source.classes}, but {roots[0]} has {sources[0].classes}")
    return ConcatDataset(sources), sources


def initial_network(init: str | None, labels: tuple[str, ...]) -> network.AlexNet:
    """A freshly initialised classic AlexNet, or the one stored in ``init`` (which must match ``labels``)."""
    if init is None:
        return network.AlexNet(len(labels))
    from model.checkpoint import load_checkpoint

    start = load_checkpoint(init)
    if start.meta.arch != network.CLASSIC or tuple(start.meta.labels) != labels:
        raise SystemExit(
            f"--init {init}: need a {network.CLASSIC} model with labels {list(labels)}, "
            f"got {start.meta.arch} with {list(start.meta.labels)}"
        )
    print(f"starting from the weights in {init}", flush=True)
    return start.network.float()


def main(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick its fastest kernels
    prep = Preprocessing()
    cache = args.cache_dir or out / "cache"
    train_set, sources = training_data(args, prep, cache)
    val_set = CachedImages(Path(args.data) / "val", prep, split="eval", cache_dir=cache, limit=args.limit)
    labels = tuple(sources[0].classes)

    net = initial_network(args.init, labels)
    model = nn.Sequential(Normalize(prep.mean, prep.std), net).to(device).to(memory_format=torch.channels_last)
    decay = [p for n, p in model.named_parameters() if p.dim() > 1]
    no_decay = [p for n, p in model.named_parameters() if p.dim() <= 1]
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        momentum=args.momentum,
        nesterov=True,
    )
    state_path = out / STATE_FILE
    start_epoch, history, best = 0, [], {"val_accuracy": -1.0, "epoch": 0}
    state = None
    if state_path.is_file():
        state = load_training_state(state_path)
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history, best = int(state["epoch"]), list(state["history"]), dict(state["best"])
        torch.set_rng_state(state["rng"])
        print(f"resumed from {state_path} after epoch {start_epoch}", flush=True)

    generator = torch.Generator()
    feed = loader_plan(device, args.workers, os.cpu_count())
    args.workers = feed.workers  # the summary's hyperparameters record what ran
    loader = DataLoader(
        train_set,
        batch_size=args.batch_size,
        sampler=MixSampler([len(x) for x in sources], [1.0] + [args.extra_fraction] * len(args.extra), generator),
        drop_last=True,
        num_workers=feed.workers,
        persistent_workers=feed.workers > 0,
        pin_memory=feed.pin_memory,
        prefetch_factor=feed.prefetch_factor,
        generator=generator,
    )
    val_loader = DataLoader(val_set, batch_size=100, pin_memory=feed.pin_memory)
    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * args.epochs
    warmup = int(args.warmup_epochs * steps_per_epoch)
    dtype = amp_dtype(args.amp, device)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else nullcontext
    scaler = torch.amp.GradScaler(device.type) if needs_grad_scaler(dtype, device) else None
    if scaler is not None and state is not None and "scaler" in state:
        scaler.load_state_dict(state["scaler"])
    runner = torch.compile(model) if args.compile else model
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    print(
        f"device={device} amp={dtype} loss_scaling={scaler is not None} compile={args.compile} "
        f"workers={feed.workers} pin_memory={feed.pin_memory} train={'+'.join(str(len(x)) for x in sources)} "
        f"(per epoch {len(loader) * args.batch_size}) val={len(val_set)} "
        f"steps/epoch={steps_per_epoch} epochs={args.epochs}",
        flush=True,
    )

    started = time.time()
    for epoch in range(start_epoch, args.epochs):
        generator.manual_seed(args.seed * 1000 + epoch)
        epoch_start = time.time()
        train_loss = train_one_epoch(
            runner,
            loader,
            optimizer,
            criterion,
            device=device,
            autocast=autocast,
            schedule=lambda step: lr_at(step, total_steps, warmup, args.lr),
            first_step=epoch * steps_per_epoch,
            desc=f"epoch {epoch + 1}/{args.epochs}",
            scaler=scaler,
        )
        runner.eval()
        with autocast(), torch.no_grad():
            report = Report(labels, confusion_matrix(runner, val_loader, len(labels), device))
        seconds = time.time() - epoch_start
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "val_accuracy": report.accuracy,
                "seconds": seconds,
                "images_per_second": len(loader) * args.batch_size / seconds,
            }
        )
        if report.accuracy > best["val_accuracy"]:
            best = {"val_accuracy": report.accuracy, "epoch": epoch + 1}
            save_checkpoint(out / MODEL_FILE, net, ModelMeta(args.name, network.CLASSIC, labels, prep, dict(best)))
        save_training_state(
            state_path,
            {
                "model": net.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch + 1,
                "history": history,
                "best": best,
                "rng": torch.get_rng_state(),
            }
            | ({"scaler": scaler.state_dict()} if scaler is not None else {}),
        )
        print(
            f"epoch {epoch + 1}/{args.epochs} loss {train_loss:.4f} val_acc {100 * report.accuracy:.2f}% "
            f"best {100 * best['val_accuracy']:.2f}% (epoch {best['epoch']}) {seconds:.0f}s",
            flush=True,
        )
        plot_history(history, out / "curves.png")
    roots = [Path(args.data) / "train", *args.extra]
    counts = {str(root): len(source) for root, source in zip(roots, sources, strict=True)}
    return finish(args, out, labels, prep, history, best, device, dtype, time.time() - started, counts)


def finish(
    args: argparse.Namespace,
    out: Path,
    labels: tuple[str, ...],
    prep: Preprocessing,
    history: list[dict[str, float]],
    best: dict[str, Any],
    device: torch.device,
    dtype: torch.dtype | None,
    seconds: float,
    train_images: dict[str, int],
) -> dict[str, Any]:
    """Rewrite the served checkpoint (the best epoch on val) with the run's training summary."""
    from model.checkpoint import load_checkpoint

    summary = {
        "data": str(Path(args.data).resolve()),
        "train_images": train_images,
        "labels": list(labels),
        "best_epoch": best["epoch"],
        "best_val_accuracy": best["val_accuracy"],
        "epochs": args.epochs,
        "seed": args.seed,
        "hyperparameters": {k: v for k, v in vars(args).items() if k not in ("data", "out")},
        "device": str(device),
        "amp": str(dtype),
        "cpu": platform.processor() or platform.machine(),
        "seconds_this_run": round(seconds, 1),
        "seconds_total": round(sum(h["seconds"] for h in history), 1),
        "history": history,
    }
    best_net = load_checkpoint(out / MODEL_FILE).network
    meta = ModelMeta(args.name, network.CLASSIC, labels, prep, {k: v for k, v in summary.items() if k != "history"})
    save_checkpoint(out / MODEL_FILE, best_net, meta)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if history:
        plot_history(history, out / "curves.png")
    print(
        f"done: best val accuracy {100 * best['val_accuracy']:.2f}% at epoch {best['epoch']}, in {out / MODEL_FILE}\n"
        f"serve it: alexnet-serve --checkpoint {out / MODEL_FILE}\n"
        f"resume or extend (more --epochs): re-run this command; {out / STATE_FILE} holds the last epoch",
        flush=True,
    )
    return summary


if __name__ == "__main__":
    main(get_args_parser().parse_args())
