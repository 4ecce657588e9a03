"""The demo page at ``/``: one self-contained HTML file that calls ``/models`` and ``/predict`` from
the browser, its icon, and what the page must know before it has a key (``/ui/config``)."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

router = APIRouter(include_in_schema=False)


@cache
def _static(name: str) -> bytes:
    return files("app").joinpath("static", name).read_bytes()


@router.get("/", response_class=HTMLResponse)
async def index() -> HTMLResponse:
    """Choose or drop photos, see each one's top-k, latency and batch size."""
    return HTMLResponse(_static("index.html"))


@router.get("/favicon.ico")
async def favicon() -> Response:
    return Response(_static("favicon.ico"), media_type="image/x-icon", headers={"Cache-Control": "max-age=86400"})


@router.get("/ui/config")
async def ui_config(request: Request) -> dict[str, bool]:
    """Open, like the page: whether the API needs a key, so the page shows the key field only then.
    It says no more than a 401 from ``/models`` would."""
    return {"api_key_required": request.app.state.api_keys.required}
