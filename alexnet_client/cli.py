"""``alexnet-predict``: classify image files, folders or stdin with a running server.

One line per image on stdout (a table, JSON Lines or CSV, in the order given), a progress bar and
a summary on stderr; exit status 1 when any image failed.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

import httpx
from tqdm import tqdm

from alexnet_client.client import DEFAULT_URL, Client, Outcome
from alexnet_client.errors import AlexNetError, ApiError, ConnectionFailed
from alexnet_client.protocol import ImageInput

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
PROGRESS_ABOVE = 3  # images; fewer get no progress bar


class StdinImage:
    """The bytes read from ``-``, named ``-`` in the output."""

    name = "-"

    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self) -> bytes:
        return self.data


def expand(paths: Sequence[str], stdin: IO[bytes]) -> tuple[list[ImageInput], list[str]]:
    """Files as given, folders walked recursively for image files (sorted), ``-`` as stdin; plus the
    paths that do not exist."""
    images: list[ImageInput] = []
    missing = []
    for text in paths:
        path = Path(text)
        if text == "-":
            images.append(StdinImage(stdin.read()))
        elif path.is_dir():
            images += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif path.is_file():
            images.append(path)
        else:
            missing.append(text)
    return images, missing


def name_of(image: ImageInput) -> str:
    return image.name if isinstance(image, StdinImage) else os.fspath(image)


def error_text(error: AlexNetError) -> str:
    return f"{error.code}: {error.message}" if isinstance(error, ApiError) else str(error)


class Writer:
    """Writes one image's outcome as a table line, a JSON line or a CSV row."""

    def __init__(self, fmt: str, top_k: int, out: IO[str]) -> None:
        self.fmt, self.top_k, self.out = fmt, top_k, out
        self.csv = csv.writer(out, lineterminator="\n") if fmt == "csv" else None

    def header(self) -> None:
        if self.csv:
            ranks = [column for k in range(2, self.top_k + 1) for column in (f"label_{k}", f"probability_{k}")]
            self.csv.writerow(["path", "model", "label", "probability", *ranks, "batch_size", "error"])

    def write(self, name: str, outcome: Outcome) -> None:
        if self.csv:
            self.csv.writerow(self._row(name, outcome))
        elif self.fmt == "json":
            self.out.write(json.dumps(self._record(name, outcome)) + "\n")
        else:
            self.out.write(self._line(name, outcome) + "\n")
        self.out.flush()

    def _row(self, name: str, outcome: Outcome) -> list[object]:
        if isinstance(outcome, AlexNetError):
            return [name, "", "", "", *[""] * (2 * self.top_k - 2), "", error_text(outcome)]
        ranks = [""] * (2 * self.top_k - 2)
        for k, prediction in enumerate(outcome.predictions[1 : self.top_k]):
            ranks[2 * k : 2 * k + 2] = [prediction.label, f"{prediction.probability:.6f}"]
        batch = "" if outcome.batch_size is None else outcome.batch_size
        return [name, outcome.model, outcome.label, f"{outcome.probability:.6f}", *ranks, batch, ""]

    def _record(self, name: str, outcome: Outcome) -> dict[str, object]:
        if isinstance(outcome, AlexNetError):
            return {"path": name, "error": error_text(outcome)}
        return {
            "path": name,
            "model": outcome.model,
            "label": outcome.label,
            "probability": outcome.probability,
            "predictions": [vars(p) for p in outcome.predictions[: self.top_k]],
            "batch_size": outcome.batch_size,
        }

    def _line(self, name: str, outcome: Outcome) -> str:
        if isinstance(outcome, AlexNetError):
            return f"{name}\tERROR\t{error_text(outcome)}"
        others = "  ".join(f"{p.label} {p.probability:.4f}" for p in outcome.predictions[1 : self.top_k])
        return f"{name}\t{outcome.label}\t{outcome.probability:.4f}" + (f"\t{others}" if others else "")


def in_order(outcomes: Iterator[tuple[int, Outcome]]) -> Iterator[tuple[int, Outcome]]:
    """Re-order ``(index, outcome)`` pairs arriving in completion order into input order, as soon as possible."""
    waiting: dict[int, Outcome] = {}
    next_index = 0
    for index, outcome in outcomes:
        waiting[index] = outcome
        while next_index in waiting:
            yield next_index, waiting.pop(next_index)
            next_index += 1


def get_args_parser() -> argparse.ArgumentParser:
    # Defaults are written into each help text: argparse's ArgumentDefaultsHelpFormatter would
    # print "(default: None)" after our own words, and the API key read from the environment.
    parser = argparse.ArgumentParser(
        prog="alexnet-predict", description="Classify images with a running alexnet-serving server."
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders (recursive) or - for stdin")
    parser.add_argument(
        "--url",
        default=os.environ.get("ALEXNET_URL", DEFAULT_URL),
        help=f"server (default: $ALEXNET_URL, else {DEFAULT_URL})",
    )
    parser.add_argument("--model", help="served model name (default: the server's first)")
    parser.add_argument("--top-k", type=int, default=1, help="classes per image (default: 1)")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight (default: 4)")
    parser.add_argument("--files-per-request", type=int, default=8, help="images per request (default: 8)")
    parser.add_argument(
        "--format", choices=("table", "json", "csv"), default="table", help="stdout format (default: table)"
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("ALEXNET_API_KEY"),
        help="key for servers that set ALEXNET_API_KEYS (default: $ALEXNET_API_KEY)",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default: 60)")
    return parser


def hint(error: AlexNetError, args: argparse.Namespace) -> str | None:
    """One line saying what to do about a failure that is not the image's fault, or None."""
    if isinstance(error, ConnectionFailed) and isinstance(error.__cause__, httpx.ConnectError):
        return f"no server answers at {args.url}: is the server running? start it with alexnet-serve (or set --url)"
    if not isinstance(error, ApiError):
        return None
    if error.status == 401:
        if args.api_key:
            return "the server refused the API key: check --api-key or ALEXNET_API_KEY"
        return "the server needs an API key: pass --api-key KEY or set ALEXNET_API_KEY"
    if error.status == 429:
        return "the server stayed overloaded after retries: lower --concurrency or --files-per-request, or retry later"
    if error.status == 503:
        return "the server is not ready (still warming up, or shutting down): wait for its 'ready in' line and retry"
    return None


def summary(total: int, failures: int, images: int, seconds: float) -> str:
    """``N of M images classified, F failed``, and the time and rate when any was classified."""
    line = f"{total - failures} of {total} images classified, {failures} failed"
    if total == failures:
        return line
    rate = images / seconds if seconds > 0 else 0.0
    return f"{line}; {seconds:.1f} s, {rate:.1f} img/s"


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.top_k < 1 or args.concurrency < 1 or args.files_per_request < 1:
        get_args_parser().error("--top-k, --concurrency and --files-per-request must be at least 1")
    images, missing = expand(args.paths, sys.stdin.buffer)
    for path in missing:
        print(f"alexnet-predict: {path}: no such file or folder", file=sys.stderr)
    writer = Writer(args.format, args.top_k, sys.stdout)
    writer.header()
    failures = len(missing)
    hints: dict[str, None] = {}  # each once, in the order met
    started = time.perf_counter()
    with (
        Client(args.url, args.api_key, timeout=args.timeout) as client,
        tqdm(total=len(images), unit="img", file=sys.stderr, disable=len(images) <= PROGRESS_ABOVE) as bar,
    ):
        outcomes = client.iter_predict_many(
            images,
            top_k=args.top_k,
            model=args.model,
            files_per_request=args.files_per_request,
            concurrency=args.concurrency,
        )
        # On a terminal the bar is lifted while a line is written; redirected output needs no care.
        shared_screen = sys.stdout.isatty() and not bar.disable
        for index, outcome in in_order(outcomes):
            if isinstance(outcome, AlexNetError):
                failures += 1
                hints.update({line: None for line in [hint(outcome, args)] if line})
            with tqdm.external_write_mode(file=sys.stdout) if shared_screen else contextlib.nullcontext():
                writer.write(name_of(images[index]), outcome)
            bar.update()
    for line in hints:
        print(f"alexnet-predict: {line}", file=sys.stderr)
    seconds = time.perf_counter() - started
    print(summary(len(images) + len(missing), failures, len(images), seconds), file=sys.stderr)
    return 1 if failures else 0


def run() -> None:
    """Console-script entry point."""
    raise SystemExit(main())
