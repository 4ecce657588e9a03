"""Ours against the peers, back to back on the same machine, model and images.

    python -m bench.compare --checkpoint model/weights/catdog.safetensors \\
        --images ../shared/data/catdog/val --concurrency 1,8,32 --duration 15

Starts each server in turn (ours = ``alexnet-serve`` with the ``ALEXNET_*`` environment plus
``--ours-env``; then the naive FastAPI peer; then LitServe), waits for readiness, runs the load
generator, and stops it (SIGTERM to its process group) before the next one starts: servers are
torn down on errors and Ctrl-C too. Prints a markdown table with ratios against LitServe and the
naive server (and the targets, given ``--inprocess`` JSON from ``bench.inprocess``); writes
``bench/out/compare.json`` and ``compare.png``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import common, loadgen, servers
from bench.plots import plot_levels

SERVERS = ("ours", "naive", "litserve")


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    """``["ALEXNET_COMPILE=1"]`` → ``{"ALEXNET_COMPILE": "1"}``."""
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def server_specs(args: argparse.Namespace, checkpoint: Path) -> list[servers.ServerSpec]:
    """The servers named in ``--servers``, with the extra raw-body run of ours when asked."""
    peer_extra = ["--fast-lrn"] if args.peer_fast_lrn else []
    ours_env = {"ALEXNET_DEVICE": args.device} | parse_env(args.ours_env)
    specs = {
        "ours": servers.ours(checkpoint, ours_env),
        "naive": servers.peer("naive", "bench.peers.naive_server", checkpoint, args.device, "/readyz", peer_extra),
        "litserve": servers.peer(
            "litserve", "bench.peers.litserve_server", checkpoint, args.device, "/health", peer_extra
        ),
    }
    return [specs[name] for name in args.servers.split(",")]


def measure(
    spec: servers.ServerSpec, images: Sequence[Path], args: argparse.Namespace, body: str, label: str
) -> dict[str, Any]:
    """Start, load, stop one server; an error is recorded (and the server stopped) instead of raised."""
    print(f"\n== {label} ==", flush=True)
    try:
        with servers.running(spec, ready_timeout=args.ready_timeout) as server:
            print(f"  ready after {server.ready_after_s:.1f} s (log {server.log})", flush=True)
            levels = loadgen.run_levels(
                server.predict_url,
                images,
                common.parse_ints(args.concurrency),
                seconds=args.duration,
                warm_up=args.warm_up,
                body=body,
                client_name=args.client,
                timeout=args.timeout,
            )
            return {
                "label": label,
                "server": spec.name,
                "body": body,
                "ready_after_s": server.ready_after_s,
                "log": str(server.log),
                "levels": [asdict(level) for level in levels],
            }
    except (servers.ServerExited, TimeoutError, OSError, RuntimeError) as exc:
        print(f"  FAILED: {exc}", file=sys.stderr, flush=True)
        return {"label": label, "server": spec.name, "body": body, "error": str(exc), "levels": []}


def level_at(result: dict[str, Any] | None, concurrency: int) -> dict[str, Any] | None:
    if not result:
        return None
    return next((level for level in result["levels"] if level["concurrency"] == concurrency), None)


def ratio(numerator: float | None, denominator: float | None) -> str:
    if not numerator or not denominator or math.isnan(numerator) or math.isnan(denominator):
        return "-"
    return f"{numerator / denominator:.2f}×"


def markdown_table(results: Sequence[dict[str, Any]]) -> str:
    """One row per server and concurrency; img/s ratios against the multipart LitServe and naive runs."""
    by_server = {result["label"]: result for result in results}
    lines = [
        "| server | c | img/s | p50 ms | p99 ms | mean batch | errors | client CPU | vs LitServe | vs naive |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        if "error" in result:
            lines.append(f"| {result['label']} | - | failed: {result['error'].splitlines()[0]} | | | | | | | |")
        for level in result["levels"]:
            c = level["concurrency"]
            peers = [level_at(by_server.get(name), c) for name in ("litserve", "naive")]
            batch = f"{level['mean_batch']:.1f}" if level["mean_batch"] is not None else "-"
            lines.append(
                f"| {result['label']} | {c} | {level['img_s']:.1f} | {level['p50_ms']:.1f} | {level['p99_ms']:.1f} "
                f"| {batch} | {sum(level['errors'].values())} | {100 * level['client_core_share']:.0f}% of a core "
                + "".join(f"| {ratio(level['img_s'], peer and peer['img_s'])} " for peer in peers)
                + "|"
            )
    return "\n".join(lines)


def targets(results: Sequence[dict[str, Any]], inprocess: dict[str, Any] | None) -> list[str]:
    """The issue's targets, checked against this run (lowest and highest concurrency levels)."""
    by_server = {result["label"]: result for result in results}
    ours = by_server.get("ours")
    if not ours or not ours["levels"]:
        return []
    low = min(level["concurrency"] for level in ours["levels"])
    high = max(level["concurrency"] for level in ours["levels"])
    ours_low, ours_high = level_at(ours, low), level_at(ours, high)
    lit_high, naive_low = level_at(by_server.get("litserve"), high), level_at(by_server.get("naive"), low)
    lines = []
    if inprocess and ours_high and "inprocess_limit_img_s" in inprocess:
        limit = inprocess["inprocess_limit_img_s"]
        lines.append(
            f"- c={high}: {ours_high['img_s']:.1f} img/s = {ratio(ours_high['img_s'], limit)} the in-process "
            f"limit ({limit:.1f}, {inprocess['inprocess_limit_path']}); target ≥ 0.90×"
        )
    if inprocess and ours_high and "stage_sum_bound" in inprocess:
        bound = inprocess["stage_sum_bound"]
        lines.append(
            f"- c={high}: {ours_high['img_s']:.1f} img/s = {ratio(ours_high['img_s'], bound['img_s'])} the stage-sum "
            f"bound ({bound['img_s']:.1f}: decode + {bound['variant']} model at batch {bound['batch_size']}); "
            "target ≥ 0.90×"
        )
    if lit_high and ours_high:
        lines.append(
            f"- c={high}: {ratio(ours_high['img_s'], lit_high['img_s'])} LitServe (target ≥ 3.5×); p99 "
            f"{ours_high['p99_ms']:.0f} ms vs LitServe {lit_high['p99_ms']:.0f} ms (target ≤ ¼: "
            f"{lit_high['p99_ms'] / 4:.0f} ms)"
        )
    if inprocess and ours_low and "single_image_p50_ms" in inprocess:
        floor = inprocess["single_image_p50_ms"]
        lines.append(
            f"- c={low}: p50 {ours_low['p50_ms']:.1f} ms vs in-process single image {floor:.1f} ms "
            f"(target ≤ {floor + 3:.1f} ms)"
        )
    if naive_low and ours_low:
        lines.append(f"- c={low}: {ratio(ours_low['img_s'], naive_low['img_s'])} the naive server (target ≥ 1.5×)")
    return lines


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="model file (default: the shipped one, else random weights)")
    parser.add_argument("--images", type=Path, default=common.DEFAULT_IMAGES)
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per level")
    parser.add_argument("--warm-up", type=float, default=2.0, help="unmeasured seconds before each level")
    parser.add_argument("--body", choices=loadgen.BODY_MODES, default="multipart")
    parser.add_argument("--also-raw", action="store_true", help="also run ours with raw image/jpeg bodies")
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request timeout, seconds")
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated subset of ours,naive,litserve")
    parser.add_argument("--device", default=os.environ.get("ALEXNET_DEVICE", "auto"), help="for ours and the peers")
    parser.add_argument("--ours-env", action="append", default=[], metavar="KEY=VALUE", help="extra env for ours")
    parser.add_argument("--peer-fast-lrn", action="store_true", help="peers use our GEMM LRN, not torch's")
    parser.add_argument("--inprocess", type=Path, help="bench.inprocess JSON, to check the targets against")
    parser.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to wait for each server")
    parser.add_argument("--out", type=Path, default=common.OUT_DIR / "compare.json")
    return parser


def run(args: argparse.Namespace, images: Sequence[Path]) -> list[dict[str, Any]]:
    checkpoint = common.checkpoint_or_random(args.checkpoint)
    specs = server_specs(args, checkpoint)
    if any(spec.name == "litserve" for spec in specs) and importlib.util.find_spec("litserve") is None:
        print("note: litserve is not installed (pip install -e '.[bench]'); skipping it", file=sys.stderr)
        specs = [spec for spec in specs if spec.name != "litserve"]
    if args.body == "raw" and any(spec.name == "litserve" for spec in specs):
        print("note: the LitServe peer takes multipart only; skipping it for raw bodies", file=sys.stderr)
        specs = [spec for spec in specs if spec.name != "litserve"]
    results = [measure(spec, images, args, args.body, spec.name) for spec in specs]
    if args.also_raw and args.body != "raw":
        results += [measure(spec, images, args, "raw", "ours (raw)") for spec in specs if spec.name == "ours"]
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = get_args_parser().parse_args(argv)
    inprocess = json.loads(args.inprocess.read_text()) if args.inprocess else None
    with servers.sigterm_as_exit(), tempfile.TemporaryDirectory() as scratch:
        images, described = common.resolve_images(args.images, args.num_images, synthetic_dir=Path(scratch))
        print(f"compare: {described}; {args.body} bodies; concurrency {args.concurrency}", flush=True)
        results = run(args, images)
    table, checks = markdown_table(results), targets(results, inprocess)
    report = {
        "environment": common.environment(),
        "images": described,
        "args": vars(args),
        "results": results,
        "table": table,
        "targets": checks,
        "inprocess": inprocess,
    }
    out = common.write_json(args.out, report)
    series = {result["label"]: result["levels"] for result in results if result["levels"]}
    plot = plot_levels(series, out.with_suffix(".png"), f"/predict, {args.body} uploads, {described}")
    print("\n" + table + ("\n\nTargets:\n" + "\n".join(checks) if checks else ""))
    print(f"\nwrote {out} and {plot}")
    return report


if __name__ == "__main__":
    main()
