"""The shipped model on real photos (skipped where ../shared/data/catdog is absent; a failure under CI)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from tests.conftest import CATDOG, SHIPPED, RunningServer, require_catdog

pytestmark = [pytest.mark.realdata, pytest.mark.slow]
require_catdog()


def _photos(per_class: int) -> list[tuple[str, Path]]:
    return [
        (label, path) for label in ("cat", "dog") for path in sorted((CATDOG / "val" / label).glob("*.jpg"))[:per_class]
    ]


def test_shipped_model_labels_real_photos(start_server) -> None:  # type: ignore[no-untyped-def]
    assert SHIPPED.is_file(), "the shipped checkpoint is part of the repository"
    server: RunningServer = start_server({"ALEXNET_MAX_DELAY_MS": "20"})
    photos = _photos(10)

    async def post_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(
                *(
                    client.post(server.url + "/predict", files={"file": (p.name, p.read_bytes(), "image/jpeg")})
                    for _, p in photos
                )
            )

    responses = asyncio.run(post_all())
    assert all(r.status_code == 200 for r in responses)
    bodies = [r.json() for r in responses]
    assert {b["model"] for b in bodies} == {"alexnet-catdog"}
    correct = sum(body["label"] == label for (label, _), body in zip(photos, bodies, strict=True))
    assert correct >= 17, f"{correct}/20 real photos labelled right"
