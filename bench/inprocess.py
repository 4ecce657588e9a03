"""In-process benchmark: what each stage costs and how fast the pipeline can go without HTTP.

1. Stages, one image at a time on one thread: decode (JPEG → RGB, draft mode as served) and
   preprocess (resize + centre crop → uint8).
2. Model stages per variant (precision, channels-last, torch.compile, which LRN) and batch
   size: host→device, forward, softmax.
3. Single-image latency through ``app.engine.Engine`` (decode + preprocess + run one image):
   the floor for the service's p50 at concurrency 1.
4. The in-process limit: ``Engine`` with the service's own thread split (a pool of
   ``preprocess_threads`` decoding uploads, one model thread batching what is queued, as
   ``app.batcher`` does) for a fixed time.
5. The stage-sum bound on the same cores: decode + preprocess per image (spread over the
   server's decode threads) plus the model's time per image at the served batch size, in
   turns as ``ALEXNET_CPU_TURNS`` runs them. No pipeline on these cores can beat it; the
   server's HTTP work comes on top. With ``--compile`` the compiled variants are also timed
   interleaved (round-robin, one process) at the served batch size and given as ratios.

    python -m bench.inprocess --images ../shared/data/catdog/val --batch-sizes 1,8,32 [--compile]

Settings not given as flags come from ``ALEXNET_*`` like the server's. Writes
``bench/out/inprocess-<device>.json``.
"""

from __future__ import annotations

import os

# OpenMP threads that spin between parallel regions steal the cores decoding needs; the
# server sets this before torch loads (app/cli.py), so the benchmark does too.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import queue
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from app.config import Settings
from app.engine import ACCEPTED_FORMATS, Engine
from bench import common, models
from bench.models import Variant
from model.checkpoint import Checkpoint, load_checkpoint
from model.precision import cpu_has_fast_bf16, cpu_supports_int8, parse_dtype, resolve_device
from model.presets import Preprocessing, eval_tensor, open_image
from model.quantize import is_calibrated

SHORT_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "int8": "int8"}


@dataclass(frozen=True)
class StageRow:
    variant: str
    batch_size: int
    h2d_ms: float
    forward_ms: float
    softmax_ms: float
    model_img_s: float
    forward_img_s: float
    serial_img_s: float


@dataclass(frozen=True)
class PipelineResult:
    name: str
    dtype: str
    compiled: bool
    img_s: float
    images: int
    seconds: float
    mean_batch: float
    decode_threads: int
    torch_threads: int
    warm_up_s: float


def device_sync(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def decode_stages(blobs: Sequence[bytes], prep: Preprocessing, seconds: float) -> dict[str, float]:
    """Per-image decode and preprocess times (ms, one thread), cycling over ``blobs`` for ``seconds``."""
    decode, transform = [], []
    deadline = time.perf_counter() + seconds
    index = 0
    while index < len(blobs) or time.perf_counter() < deadline:
        blob = blobs[index % len(blobs)]
        started = time.perf_counter()
        image = open_image(blob, draft_size=prep.resize_size, formats=ACCEPTED_FORMATS)
        decoded = time.perf_counter()
        eval_tensor(image, prep)
        decode.append(decoded - started)
        transform.append(time.perf_counter() - decoded)
        index += 1
    decode_ms, transform_ms = 1000 * statistics.median(decode), 1000 * statistics.median(transform)
    return {
        "images": index,
        "decode_ms": decode_ms,
        "preprocess_ms": transform_ms,
        "decode_mean_ms": 1000 * statistics.fmean(decode),
        "preprocess_mean_ms": 1000 * statistics.fmean(transform),
        "img_s_per_thread": 1000 / (decode_ms + transform_ms),
    }


def input_batch(tensors: Sequence[torch.Tensor], size: int) -> torch.Tensor:
    """``size`` preprocessed images (cycled) stacked as a uint8 NCHW batch."""
    return torch.stack([tensors[index % len(tensors)] for index in range(size)])


def model_stages(
    module: torch.nn.Module,
    batch: torch.Tensor,
    device: torch.device,
    variant: Variant,
    *,
    seconds: float,
    min_reps: int = 3,
    warm_reps: int = 2,
) -> tuple[float, float, float]:
    """Median (h2d, forward, softmax) seconds for one batch, after ``warm_reps`` unmeasured runs."""
    sync = device_sync(device)
    samples: list[tuple[float, float, float]] = []
    deadline = None
    with torch.inference_mode():
        while len(samples) < min_reps + warm_reps or (deadline is not None and time.perf_counter() < deadline):
            sync()
            started = time.perf_counter()
            on_device = models.to_device(batch, device, variant.channels_last)
            sync()
            moved = time.perf_counter()
            logits = module(on_device)
            sync()
            forwarded = time.perf_counter()
            logits.float().softmax(dim=1).cpu()
            sync()
            samples.append((moved - started, forwarded - moved, time.perf_counter() - forwarded))
            if len(samples) == warm_reps:
                deadline = time.perf_counter() + seconds
    measured = samples[warm_reps:]
    h2d, forward, softmax = (statistics.median(column) for column in zip(*measured, strict=True))
    return h2d, forward, softmax


def stage_rows(
    checkpoint: Checkpoint,
    device: torch.device,
    variants: Sequence[Variant],
    batch_sizes: Sequence[int],
    tensors: Sequence[torch.Tensor],
    per_image_ms: float,
    seconds: float,
) -> list[StageRow]:
    """One row per (variant, batch size); ``serial_img_s`` adds one thread's decode + preprocess."""
    rows = []
    for variant in variants:
        module = models.build(checkpoint, device, variant)
        for size in batch_sizes:
            h2d, forward, softmax = model_stages(module, input_batch(tensors, size), device, variant, seconds=seconds)
            model_s = h2d + forward + softmax
            row = StageRow(
                variant=variant.name,
                batch_size=size,
                h2d_ms=1000 * h2d,
                forward_ms=1000 * forward,
                softmax_ms=1000 * softmax,
                model_img_s=size / model_s,
                forward_img_s=size / forward,
                serial_img_s=size / (model_s + size * per_image_ms / 1000),
            )
            print(
                f"  {row.variant:28} b={size:<3} h2d {row.h2d_ms:7.2f}  fwd {row.forward_ms:8.2f}  "
                f"softmax {row.softmax_ms:6.2f} ms  → {row.model_img_s:7.1f} img/s",
                flush=True,
            )
            rows.append(row)
        del module
    return rows


def service_settings(checkpoint: Path, device: str, dtype: str, compile_model: bool, **overrides: Any) -> Settings:
    """The server's ``Settings`` (``ALEXNET_*`` environment included) with benchmark overrides."""
    return Settings(checkpoint=checkpoint, device=device, dtype=dtype, compile=compile_model, **overrides)  # type: ignore[arg-type]


def single_image_latency(engine: Engine, blobs: Sequence[bytes], seconds: float) -> dict[str, float]:
    """Decode + preprocess + a batch of one, back to back on one thread: p50/p90 in ms."""
    samples = []
    deadline = time.perf_counter() + seconds
    index = 0
    while index < 3 or time.perf_counter() < deadline:
        started = time.perf_counter()
        engine.run([engine.preprocess(blobs[index % len(blobs)])])
        samples.append(time.perf_counter() - started)
        index += 1
    ordered = sorted(samples)
    return {
        "images": len(samples),
        "p50_ms": 1000 * statistics.median(ordered),
        "p90_ms": 1000 * ordered[int(0.9 * (len(ordered) - 1))],
        "mean_ms": 1000 * statistics.fmean(ordered),
    }


class _Pipeline:
    """Decode threads feed a bounded queue; one model thread batches from it like ``app.batcher``."""

    def __init__(self, engine: Engine, blobs: Sequence[bytes], threads: int, max_batch: int, max_delay_s: float):
        self.engine, self.blobs, self.threads = engine, blobs, threads
        self.max_batch, self.max_delay_s = max_batch, max_delay_s
        self.ready: queue.Queue[torch.Tensor] = queue.Queue(maxsize=2 * max_batch)
        self.stop = threading.Event()
        self.done: list[tuple[float, int]] = []  # (finish time, batch size)

    def decode_forever(self, offset: int) -> None:
        index = offset
        while not self.stop.is_set():
            tensor = self.engine.preprocess(self.blobs[index % len(self.blobs)])
            index += self.threads
            while not self.stop.is_set():
                try:
                    self.ready.put(tensor, timeout=0.05)
                    break
                except queue.Full:
                    continue

    def collect(self) -> list[torch.Tensor]:
        """Everything queued (up to the maximum), then what arrives within the window of the first."""
        try:
            batch = [self.ready.get(timeout=0.05)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + self.max_delay_s
        while len(batch) < self.max_batch:
            try:
                batch.append(self.ready.get_nowait())
                continue
            except queue.Empty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(self.ready.get(timeout=remaining))
            except queue.Empty:
                break
        return batch

    def run_model_forever(self) -> None:
        while not self.stop.is_set():
            batch = self.collect()
            if batch:
                self.engine.run(batch)
                self.done.append((time.monotonic(), len(batch)))

    def measure(self, warm_up: float, seconds: float) -> tuple[int, float, float]:
        """Run for ``warm_up + seconds``; returns (images, seconds, mean batch) finished in the measured window."""
        workers = [threading.Thread(target=self.decode_forever, args=(k,), daemon=True) for k in range(self.threads)]
        workers.append(threading.Thread(target=self.run_model_forever, daemon=True))
        started = time.monotonic()
        for worker in workers:
            worker.start()
        time.sleep(warm_up + seconds)
        self.stop.set()
        for worker in workers:
            worker.join()
        window_start, window_end = started + warm_up, started + warm_up + seconds
        sizes = [size for finished, size in self.done if window_start <= finished <= window_end]
        return sum(sizes), seconds, (statistics.fmean(sizes) if sizes else 0.0)


def pipeline(
    engine: Engine, settings: Settings, blobs: Sequence[bytes], seconds: float, warm_up: float, warm_up_s: float = 0.0
) -> PipelineResult:
    """Full pipeline throughput (img/s) with the server's thread split and batching policy.

    ``warm_up`` is the unmeasured start of this run; ``warm_up_s`` is only recorded (the
    engine's compile/warm-up time).
    """
    runner = _Pipeline(
        engine, blobs, settings.preprocess_threads, settings.max_batch_size, settings.max_delay_ms / 1000
    )
    images, measured, mean_batch = runner.measure(warm_up, seconds)
    info = engine.info
    dtype = SHORT_DTYPES.get(info.dtype, info.dtype)
    return PipelineResult(
        name=f"{dtype} {'compiled' if info.compiled else 'eager'} CL",
        dtype=dtype,
        compiled=info.compiled,
        img_s=images / measured,
        images=images,
        seconds=measured,
        mean_batch=mean_batch,
        decode_threads=settings.preprocess_threads,
        torch_threads=torch.get_num_threads(),
        warm_up_s=warm_up_s,
    )


def default_dtypes(device: torch.device, checkpoint: Checkpoint) -> list[str]:
    if device.type == "cuda":
        return ["fp32", "bf16", "fp16"]
    return ["fp32", "bf16"] + (["int8"] if is_calibrated(checkpoint) and cpu_supports_int8() else [])


def stage_variants(dtypes: Sequence[str], compile_model: bool, stock_lrn: bool) -> list[Variant]:
    """fp32 NCHW first (the reference); channels-last on/off per dtype; compiled channels-last when asked."""
    variants = [Variant("fp32", channels_last=False, stock_lrn=True)] if stock_lrn else []
    for dtype in dtypes:
        if dtype != "int8":  # eager int8 only simulates the int8 kernels (quantise/dequantise around fp32)
            variants += [Variant(dtype, channels_last=False), Variant(dtype, channels_last=True)]
    if compile_model:
        variants += [Variant(dtype, channels_last=True, compile=True) for dtype in dtypes]
    return variants


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.inprocess", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="model file (default: the shipped one, else random weights)")
    parser.add_argument("--images", type=Path, default=common.DEFAULT_IMAGES, help="directory of JPEGs")
    parser.add_argument("--num-images", type=int, default=64, help="how many photos to cycle through")
    parser.add_argument("--device", default=os.environ.get("ALEXNET_DEVICE", "auto"), help="auto, cpu, cuda")
    parser.add_argument("--batch-sizes", default="1,8,32", help="model batch sizes for the stage table")
    parser.add_argument("--dtypes", help="comma-separated fp32,bf16,fp16 (default: fp32,bf16; +fp16 on CUDA)")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile variants (slow start)")
    parser.add_argument("--no-stock-lrn", action="store_true", help="skip the torch.nn.LocalResponseNorm baseline")
    parser.add_argument("--decode-seconds", type=float, default=2.0, help="measuring time for decode/preprocess")
    parser.add_argument("--stage-seconds", type=float, default=1.5, help="measuring time per stage-table cell")
    parser.add_argument("--pipeline-seconds", type=float, default=10.0, help="measuring time per pipeline run")
    parser.add_argument("--warm-up-seconds", type=float, default=2.0, help="unmeasured pipeline start")
    parser.add_argument("--interleaved-rounds", type=int, default=8, help="rounds of the interleaved model timing")
    parser.add_argument("--skip-stages", action="store_true", help="only the single-image latency and pipeline")
    parser.add_argument("--skip-pipeline", action="store_true", help="only the stage table")
    parser.add_argument("--out", type=Path, help="JSON path (default bench/out/inprocess-<device>.json)")
    return parser


def run_pipelines(
    checkpoint: Path, args: argparse.Namespace, device: torch.device, dtypes: Sequence[str], blobs: Sequence[bytes]
) -> tuple[list[PipelineResult], dict[str, dict[str, float]]]:
    """One ``Engine`` per (dtype, compile): single-image latency, then the threaded pipeline."""
    results, latencies = [], {}
    for compile_model in [False, True] if args.compile else [False]:
        for dtype in dtypes:
            if dtype == "int8" and not compile_model:
                continue
            settings = service_settings(checkpoint, str(device), dtype, compile_model)
            engine = Engine(settings)
            warm_up_s = engine.warm_up()
            result = pipeline(engine, settings, blobs, args.pipeline_seconds, args.warm_up_seconds, warm_up_s)
            latencies[result.name] = single_image_latency(engine, blobs, min(5.0, args.pipeline_seconds))
            print(
                f"  pipeline {result.name:22} {result.img_s:7.1f} img/s (mean batch {result.mean_batch:.1f}, "
                f"{result.decode_threads} decode threads, {result.torch_threads} torch threads); "
                f"single image p50 {latencies[result.name]['p50_ms']:.1f} ms",
                flush=True,
            )
            results.append(result)
            del engine
    return results, latencies


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = get_args_parser().parse_args(argv)
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as scratch:
        paths, described = common.resolve_images(args.images, args.num_images, synthetic_dir=Path(scratch))
        blobs = [path.read_bytes() for path in paths]
    checkpoint = common.checkpoint_or_random(args.checkpoint)
    loaded = load_checkpoint(checkpoint)
    dtypes = args.dtypes.split(",") if args.dtypes else default_dtypes(device, loaded)
    prep = loaded.meta.preprocessing
    print(f"in-process benchmark: {described}; checkpoint {checkpoint}; device {device}", flush=True)
    decode = decode_stages(blobs, prep, seconds=args.decode_seconds)
    print(f"  decode {decode['decode_ms']:.2f} ms + preprocess {decode['preprocess_ms']:.2f} ms per image", flush=True)
    report: dict[str, Any] = {
        "environment": common.environment() | torch_facts(device),
        "images": described,
        "checkpoint": str(checkpoint),
        "decode": decode,
    }
    if not args.skip_stages:
        tensors = [eval_tensor(open_image(blob, draft_size=prep.resize_size), prep) for blob in blobs]
        variants = stage_variants(dtypes, args.compile, not args.no_stock_lrn)
        per_image_ms = decode["decode_ms"] + decode["preprocess_ms"]
        rows = stage_rows(
            loaded, device, variants, common.parse_ints(args.batch_sizes), tensors, per_image_ms, args.stage_seconds
        )
        report["stages"] = [asdict(row) for row in rows]
        served, settings = served_variant(checkpoint, loaded, device)
        batch = input_batch(tensors, settings.max_batch_size)
        model_ms = next(
            (
                (row.h2d_ms + row.forward_ms + row.softmax_ms) / row.batch_size
                for row in rows
                if row.variant == served.name and row.batch_size == settings.max_batch_size
            ),
            None,
        )
        if args.compile:
            compiled = [variant for variant in variants if variant.compile]
            timed = interleaved(loaded, device, compiled, batch, args.interleaved_rounds)
            report["interleaved"] = {"batch_size": settings.max_batch_size, "variants": timed}
            for name, ms in timed.items():
                print(
                    f"  interleaved b={settings.max_batch_size} {name:28} {ms['wall_ms_per_image']:6.2f} ms/img, "
                    f"{ms['cpu_ms_per_image']:6.2f} CPU ms/img",
                    flush=True,
                )
            if served.name in timed:
                model_ms = timed[served.name]["wall_ms_per_image"]
        if model_ms is not None:
            bound = stage_sum_bound(per_image_ms, model_ms, settings.preprocess_threads)
            report["stage_sum_bound"] = bound | {"variant": served.name, "batch_size": settings.max_batch_size}
            report["stage_sum_bound_img_s"] = bound["img_s"]
    if not args.skip_pipeline:
        results, latencies = run_pipelines(checkpoint, args, device, dtypes, blobs)
        best = max(results, key=lambda result: result.img_s)
        report |= {
            "pipelines": [asdict(result) for result in results],
            "single_image_latency": latencies,
            "inprocess_limit_img_s": best.img_s,
            "inprocess_limit_path": best.name,
            "single_image_p50_ms": min(latency["p50_ms"] for latency in latencies.values()),
        }
    out = common.write_json(args.out or common.OUT_DIR / f"inprocess-{device.type}.json", report)
    print(markdown(report))
    print(f"wrote {out}")
    return report


def served_variant(checkpoint: Path, loaded: Checkpoint, device: torch.device) -> tuple[Variant, Settings]:
    """The variant the server runs with its settings (``ALEXNET_*`` included) on this device."""
    settings = Settings(checkpoint=checkpoint, device=str(device))  # type: ignore[call-arg]
    compiled = settings.compile if settings.compile is not None else device.type == "cpu"
    dtype = parse_dtype(settings.dtype, device, int8_ready=compiled and is_calibrated(loaded))
    name = SHORT_DTYPES[str(dtype).removeprefix("torch.")]
    return Variant(name, channels_last=True, compile=compiled), settings


def interleaved(
    checkpoint: Checkpoint,
    device: torch.device,
    variants: Sequence[Variant],
    batch: torch.Tensor,
    rounds: int,
) -> dict[str, dict[str, float]]:
    """Median wall and CPU (all threads) ms per image of each variant's forward at one batch size,
    round-robin in one process, so that a busy machine slows all of them alike and their ratios
    hold; CPU time is what the work costs, however many other processes want the cores."""
    modules = {variant.name: models.build(checkpoint, device, variant) for variant in variants}
    on_device = {variant.name: models.to_device(batch, device, variant.channels_last) for variant in variants}
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in modules}
    sync = device_sync(device)
    with torch.inference_mode():
        for name, module in modules.items():  # compile and warm up
            module(on_device[name])
            module(on_device[name])
        for _ in range(rounds):
            for name, module in modules.items():
                sync()
                started, cpu = time.perf_counter(), time.process_time()
                module(on_device[name])
                sync()
                samples[name].append((time.perf_counter() - started, time.process_time() - cpu))
    return {
        name: {
            "wall_ms_per_image": 1000 * statistics.median(wall for wall, _ in times) / batch.shape[0],
            "cpu_ms_per_image": 1000 * statistics.median(cpu for _, cpu in times) / batch.shape[0],
        }
        for name, times in samples.items()
    }


def stage_sum_bound(decode_ms: float, model_ms: float, decode_threads: int) -> dict[str, float]:
    """img/s if the cores did nothing but decode (spread over the decode threads) and run the model in turns."""
    parallel = max(1, min(decode_threads, os.cpu_count() or 1))
    per_image = decode_ms / parallel + model_ms
    return {
        "decode_ms_per_image_one_thread": decode_ms,
        "decode_parallelism": parallel,
        "model_ms_per_image": model_ms,
        "img_s": 1000 / per_image,
    }


def torch_facts(device: torch.device) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_fast_bf16": cpu_has_fast_bf16(),
        "device": str(device),
    }
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
    return facts


def markdown(report: dict[str, Any]) -> str:
    """The stage table and the pipeline results as markdown."""
    lines = []
    if "stages" in report:
        lines += [
            "",
            "| variant | batch | h2d ms | forward ms | softmax ms | model img/s | serial img/s (1 thread decode) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r['variant']} | {r['batch_size']} | {r['h2d_ms']:.2f} | {r['forward_ms']:.2f} | {r['softmax_ms']:.2f}"
            f" | {r['model_img_s']:.1f} | {r['serial_img_s']:.1f} |"
            for r in report["stages"]
        ]
    if "pipelines" in report:
        lines += [
            "",
            "| pipeline (Engine, server thread split) | img/s | mean batch | single-image p50 ms |",
            "|---|---:|---:|---:|",
        ]
        latency = report["single_image_latency"]
        lines += [
            f"| {p['name']} | {p['img_s']:.1f} | {p['mean_batch']:.1f} | {latency[p['name']]['p50_ms']:.1f} |"
            for p in report["pipelines"]
        ]
        lines.append(
            f"\nin-process limit: {report['inprocess_limit_img_s']:.1f} img/s ({report['inprocess_limit_path']})"
        )
    if "interleaved" in report:
        timed = report["interleaved"]["variants"]
        slowest = max(row["cpu_ms_per_image"] for row in timed.values())
        lines += [
            "",
            f"| model, interleaved at batch {report['interleaved']['batch_size']} | wall ms/img | CPU ms/img "
            "| CPU speed-up |",
            "|---|---:|---:|---:|",
        ]
        lines += [
            f"| {name} | {row['wall_ms_per_image']:.2f} | {row['cpu_ms_per_image']:.2f} "
            f"| {slowest / row['cpu_ms_per_image']:.2f}× |"
            for name, row in timed.items()
        ]
    if "stage_sum_bound" in report:
        bound = report["stage_sum_bound"]
        lines.append(
            f"\nstage-sum bound ({bound['variant']}, batch {bound['batch_size']}): "
            f"{bound['decode_ms_per_image_one_thread']:.2f} ms decode / {bound['decode_parallelism']} threads "
            f"+ {bound['model_ms_per_image']:.2f} ms model per image → {bound['img_s']:.1f} img/s"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
