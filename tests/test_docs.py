"""``/docs`` and ``/redoc`` work offline: every asset they load comes from the server itself."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import RunningServer, headless_chromium

PAGES = ("/docs", "/redoc")


@pytest.fixture(scope="module")
def server(random_checkpoint: Path) -> Iterator[RunningServer]:
    running = RunningServer({"ALEXNET_CHECKPOINT": str(random_checkpoint), "ALEXNET_API_KEYS": "docs-key"})
    yield running
    running.stop()


def _assets(html: str) -> list[str]:
    return re.findall(r'(?:src|href)\s*=\s*["\']([^"\']+)["\']', html)


@pytest.mark.parametrize("page", PAGES)
def test_pages_reference_only_their_own_server(server: RunningServer, page: str) -> None:
    response = httpx.get(server.url + page)  # open, like the schema, even when keys are set
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assets = _assets(response.text)
    assert any(asset.endswith(".js") for asset in assets), assets
    assert all(asset.startswith("/") and not asset.startswith("//") for asset in assets), assets
    assert not re.search(r"https?://(?!www\.w3\.org)", response.text), "an absolute URL in the page"
    for asset in assets:
        served = httpx.get(server.url + asset)
        assert served.status_code == 200, asset
        assert served.headers["content-type"].split(";")[0] in ("text/javascript", "text/css", "image/png"), asset
    assert httpx.get(server.url + "/openapi.json").json()["info"]["title"] == "AlexNet serving"


@pytest.fixture(scope="module")
def offline_browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """Headless Chromium that can reach 127.0.0.1 and nothing else."""
    offline = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"  # every other host: no such name
    driver = headless_chromium(tmp_path_factory.mktemp("chromium-docs"), offline)
    yield driver
    driver.quit()  # type: ignore[attr-defined]


def test_swagger_ui_renders_every_operation_offline(server: RunningServer, offline_browser: object) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = offline_browser
    driver.get(server.url + "/docs")  # type: ignore[attr-defined]
    paths = set(httpx.get(server.url + "/openapi.json").json()["paths"])

    def shown(d: object) -> set[str]:
        return {e.text for e in d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}  # type: ignore[attr-defined]

    WebDriverWait(driver, 60).until(lambda d: len(shown(d)) >= len(paths))
    assert {text.replace("\u200b", "") for text in shown(driver)} >= paths
    assert driver.find_elements(By.CSS_SELECTOR, ".btn.authorize")  # type: ignore[attr-defined]  # the keys' form
    loaded = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")  # type: ignore[attr-defined]
    assert loaded and all(url.startswith(server.url) for url in loaded), loaded
