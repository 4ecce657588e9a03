"""The demo page at ``/``: one self-contained HTML file that calls ``/models`` and ``/predict`` from the browser."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(include_in_schema=False)


@cache
def page() -> str:
    return files("app").joinpath("static", "index.html").read_text(encoding="utf-8")


@router.get("/", response_class=HTMLResponse)
async def index() -> HTMLResponse:
    """Choose or drop photos, see each one's top-k, latency and batch size."""
    return HTMLResponse(page())
