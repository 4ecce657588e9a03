"""``python -m bench.fleet --out FILE.json``: the whole drill with its defaults (deploy/fleet/README.md).

Exit 0 when every target holds, 1 when one does not (the JSON's ``failed`` says which), 2 when
the drill could not run (no engine, no photos, a replica that never came up).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from bench import client, common
from bench.fleet.control import Fleet, FleetError
from bench.fleet.drill import Drill
from bench.fleet.report import SCENARIOS, check_targets, format_table

# HAProxy replays a request on another replica only when it fits in its buffer (tune.bufsize,
# 256 KiB in deploy/fleet/haproxy.cfg): the drill's photos stay well under it.
MAX_PHOTO_BYTES = 200_000


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON report path")
    parser.add_argument("--images", type=Path, default=common.DEFAULT_IMAGES, help="folder of real photos")
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--port", type=int, default=8080, help="the balancer's host port (FLEET_PORT)")
    parser.add_argument("--stats-port", type=int, default=8404, help="HAProxy's stats port (FLEET_STATS_PORT)")
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    parser.add_argument("--keep", action="store_true", help="leave the fleet running afterwards")
    return parser


def load_requests(images: Path, count: int, target: client.Target) -> list[bytes]:
    """Raw-body /predict requests for up to ``count`` real photos small enough to be replayed."""
    paths = [p for p in common.find_images(images, count * 2) if p.stat().st_size <= MAX_PHOTO_BYTES][:count]
    if not paths:
        raise FileNotFoundError(f"no photo under {MAX_PHOTO_BYTES} bytes in {images}")
    return [client.raw_request(target, path.read_bytes()) for path in paths]


async def run_scenarios(drill: Drill, wanted: list[str]) -> dict[str, Any]:
    scenarios: dict[str, Any] = {}
    for name in wanted:
        print(f"fleet: {name} ...", flush=True)
        scenarios[name] = await getattr(drill, name)()
        print(format_table({name: scenarios[name]}).splitlines()[-1], flush=True)
    return scenarios


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    wanted = [name for name in args.only.split(",") if name]
    if unknown := set(wanted) - set(SCENARIOS):
        print(f"fleet: unknown scenarios {sorted(unknown)}", file=sys.stderr)
        return 2
    target = client.Target("127.0.0.1", args.port, "/predict")
    fleet = Fleet(f"http://127.0.0.1:{args.stats_port}/stats;csv")
    try:
        requests = load_requests(args.images, args.num_images, target)
        print(f"fleet: {len(requests)} photos from {args.images}; starting {args.replicas} replicas", flush=True)
        fleet.up(args.replicas)
        scenarios = asyncio.run(run_scenarios(Drill(fleet, target, requests, args.concurrency, args.replicas), wanted))
    except (FleetError, OSError) as exc:
        print(f"fleet: could not run: {exc}", file=sys.stderr)
        return 2
    finally:
        if not args.keep:
            try:
                fleet.down()
            except FleetError as exc:
                print(f"fleet: could not tear down: {exc}", file=sys.stderr)
    failed = check_targets(scenarios)
    common.write_json(args.out, {"environment": common.environment(), "scenarios": scenarios, "failed": failed})
    print("\n" + format_table(scenarios))
    for name, problems in failed.items():
        print(f"fleet: {name}: {'; '.join(problems)}")
    print(f"wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
