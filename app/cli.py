"""``alexnet-serve``: run the service with uvicorn."""

from __future__ import annotations

import argparse
import os
import sys


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alexnet-serve", description="Serve an AlexNet checkpoint over HTTP. Every setting is also ALEXNET_<NAME>."
    )
    parser.add_argument("--host", help="interface to listen on (ALEXNET_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="TCP port (ALEXNET_PORT, default 8000)")
    parser.add_argument("--checkpoint", help="model file (ALEXNET_CHECKPOINT, default: the shipped cat/dog model)")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (ALEXNET_DEVICE, default auto)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    # OpenMP threads that spin between parallel regions steal the cores decoding and the
    # event loop need; this must be set before torch is imported.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from pydantic import ValidationError

    from app.config import Settings

    overrides = {key: value for key, value in vars(args).items() if value is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        for error in exc.errors():
            print(f"alexnet-serve: {'.'.join(map(str, error['loc']))}: {error['msg']}", file=sys.stderr)  # noqa: T201
        raise SystemExit(2) from exc

    import uvicorn

    from app.logs import configure_logging
    from app.main import create_app
    from model.checkpoint import CheckpointError

    configure_logging(settings.log_level, settings.log_format)
    try:
        uvicorn.run(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            log_config=None,  # uvicorn's loggers go through ours (JSON or text)
            access_log=False,  # app.access writes one line per request instead
            timeout_graceful_shutdown=int(settings.request_timeout_s) + 5,
        )
    except CheckpointError as exc:
        print(f"alexnet-serve: {exc}", file=sys.stderr)  # noqa: T201
        raise SystemExit(1) from exc
