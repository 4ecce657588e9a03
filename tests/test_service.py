"""One model's lifecycle without HTTP: a real ``ModelService`` (engine, thread pools, batcher)
draining — refusing new work at once, yet answering every image it had already taken on."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
import torch

from app.batcher import NotAcceptingError
from app.config import Settings
from app.errors import ApiError
from app.pipeline import require_ready
from app.service import ModelService
from model.checkpoint import load_checkpoint
from tests.conftest import make_image, reference_probabilities


async def _until(condition, what: str, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"never: {what}"
        await asyncio.sleep(0.005)


def test_stop_refuses_new_work_and_answers_everything_queued(random_checkpoint: Path) -> None:
    images = [make_image(seed) for seed in range(5)]

    async def scenario() -> None:
        settings = Settings(checkpoint=random_checkpoint, dtype="fp32", max_batch_size=2, max_delay_ms=0)  # type: ignore[call-arg]
        service = ModelService(settings)
        await service.start()
        assert service.ready
        entered, release = threading.Event(), threading.Event()
        run = service.batcher._run_batch

        def gated(items):  # type: ignore[no-untyped-def]
            entered.set()
            release.wait(30)
            return run(items)

        service.batcher._run_batch = gated  # the model is stuck on its first batch while the rest queue
        items = [(await service.preprocess(data))[0] for data in images]
        first = asyncio.ensure_future(service.predict(items[0], 0.0))
        await _until(entered.is_set, "the first batch started")
        queued = [asyncio.ensure_future(service.predict(item, 0.0)) for item in items[1:]]
        await _until(lambda: service.batcher.queue_depth == len(queued), "the rest were queued")

        stopping = asyncio.ensure_future(service.stop())
        await _until(lambda: service.draining, "draining began")
        assert not service.ready
        with pytest.raises(ApiError) as refused:
            require_ready(service)  # what /readyz and every route answer now
        assert (refused.value.status, refused.value.code) == (503, "not_ready")
        assert "draining" in refused.value.message and refused.value.headers["Retry-After"]
        with pytest.raises(NotAcceptingError):
            await service.predict(items[0], 0.0)
        assert not stopping.done() and not first.done(), "stop() returned with a batch still running"

        release.set()
        await asyncio.wait_for(stopping, 60)
        answers = [task.result() for task in (first, *queued)]  # every image taken on was answered

        expected = reference_probabilities(load_checkpoint(random_checkpoint), torch.stack(items))
        for answer, row in zip(answers, expected, strict=True):
            assert max(abs(a - b) for a, b in zip(answer.probabilities, row.tolist(), strict=True)) < 2e-5
        assert [answer.batch_size for answer in answers] == [1, 2, 2, 2, 2]  # the backlog in batches of two

    asyncio.run(scenario())
