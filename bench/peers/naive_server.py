"""The tutorial baseline: FastAPI, one forward pass per request (batch 1), fp32 eager.

    python -m bench.peers.naive_server --checkpoint model/weights/catdog.safetensors --port 8001

Decoding and the forward pass run in Starlette's thread pool (what a plain ``def`` endpoint
gets), in whichever worker thread took the request: no batching, no queue, no thread limits. Takes a
multipart ``file`` field or a raw ``image/jpeg`` body; answers ``X-Batch-Size: 1``.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from bench.peers import common
from model.presets import ImageError


def create_app(args: argparse.Namespace) -> FastAPI:
    state: dict[str, common.PeerModel] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state["model"] = common.load(args.checkpoint, args.device, dtype=args.dtype, fast_lrn=args.fast_lrn)
        yield

    app = FastAPI(title="naive AlexNet peer", lifespan=lifespan)

    @app.get("/readyz")
    def readyz() -> dict[str, str]:
        if "model" not in state:
            raise HTTPException(503, "loading")
        return {"status": "ready"}

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        data = await _image_bytes(request)
        return await run_in_threadpool(_predict_one, state["model"], data)

    return app


async def _image_bytes(request: Request) -> bytes:
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        async with request.form() as form:
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise HTTPException(400, "no file field")
            return await upload.read()
    return await request.body()


def _predict_one(model: common.PeerModel, data: bytes) -> Response:
    try:
        tensor = model.preprocess(data)
    except ImageError as exc:
        raise HTTPException(422, str(exc)) from exc
    probabilities = model.probabilities(tensor.unsqueeze(0))[0]
    return JSONResponse(model.answer(probabilities, 1), headers={"X-Batch-Size": "1"})


def main(argv: list[str] | None = None) -> None:
    args = common.add_arguments(argparse.ArgumentParser(prog="python -m bench.peers.naive_server")).parse_args(argv)
    import uvicorn

    uvicorn.run(create_app(args), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
