"""LitServe peer: dynamic batching (max_batch_size 32, batch_timeout 10 ms), same model and preprocessing.

    python -m bench.peers.litserve_server --checkpoint model/weights/catdog.safetensors --port 8002

Written the way LitServe's docs show an image classifier: ``decode_request`` reads the
multipart ``file`` field and preprocesses it (LitServe calls it in the inference worker,
serially, before the batch runs), ``batch`` stacks, ``predict`` runs the batch, and
``encode_response`` answers each image, with ``X-Batch-Size`` so the load generator can see
the batching. Only multipart uploads: LitServe parses any other body as JSON. Readiness is
LitServe's ``/health``. Needs the optional ``litserve`` package (the ``bench`` extra).
"""

# No ``from __future__ import annotations``: LitServe reads the hooks' annotations at run
# time to build its FastAPI route, so they must be real objects.
import argparse

import litserve as ls
import torch
from fastapi import HTTPException
from fastapi.responses import JSONResponse

from bench.peers import common
from model.presets import ImageError


class AlexNetAPI(ls.LitAPI):  # type: ignore[misc]
    def __init__(self, args: argparse.Namespace, max_batch_size: int, batch_timeout: float) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout)
        self.args = args
        self.model: common.PeerModel | None = None

    def setup(self, device: str) -> None:
        # ``device`` is what LitServe picked from ``accelerator`` ("cpu", "cuda:0", ...).
        self.model = common.load(self.args.checkpoint, device, dtype=self.args.dtype, fast_lrn=self.args.fast_lrn)

    def decode_request(self, request):  # type: ignore[no-untyped-def]
        # Unannotated on purpose: LitServe then parses multipart bodies into a form.
        assert self.model is not None
        upload = request["file"]
        data = upload if isinstance(upload, bytes) else upload.file.read()
        try:
            return self.model.preprocess(data)
        except ImageError as exc:
            raise HTTPException(422, str(exc)) from exc

    def batch(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(inputs)

    def predict(self, x: torch.Tensor) -> list[tuple[list[float], int]]:
        assert self.model is not None
        return [(probabilities, x.shape[0]) for probabilities in self.model.probabilities(x)]

    def unbatch(self, output: list[tuple[list[float], int]]) -> list[tuple[list[float], int]]:
        return output

    def encode_response(self, output: tuple[list[float], int]) -> JSONResponse:
        assert self.model is not None
        probabilities, batch_size = output
        return JSONResponse(self.model.answer(probabilities, batch_size), headers={"X-Batch-Size": str(batch_size)})


def get_args_parser() -> argparse.ArgumentParser:
    parser = common.add_arguments(argparse.ArgumentParser(prog="python -m bench.peers.litserve_server"))
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-timeout", type=float, default=0.01, help="seconds")
    parser.add_argument("--workers-per-device", type=int, default=1)
    parser.add_argument("--fast-queue", action="store_true", help="LitServe's ZeroMQ transport instead of its default")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    accelerator = "cuda" if args.device.startswith("cuda") else ("cpu" if args.device == "cpu" else "auto")
    api = AlexNetAPI(args, args.max_batch_size, args.batch_timeout)
    server = ls.LitServer(
        api,
        accelerator=accelerator,
        workers_per_device=args.workers_per_device,
        timeout=30,
        fast_queue=args.fast_queue,
    )
    server.run(host=args.host, port=args.port, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
