"""The demo page at ``/`` in a real headless Chromium (Debian's, driven by Selenium) against real servers."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    REPO,
    SHIPPED,
    RunningServer,
    free_port,
    headless_chromium,
    make_image,
)

WAIT_S = 90


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    driver = headless_chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield driver
    driver.quit()  # type: ignore[attr-defined]


class Page:
    """The demo page opened in ``browser``: choose files, read the cards."""

    def __init__(self, driver: object, url: str, *, loaded: bool = True) -> None:
        """``loaded``: wait until the page has shown the models (or an error)."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.by = driver, By
        self.wait = WebDriverWait(driver, WAIT_S)
        driver.get(url + "/")  # type: ignore[attr-defined]
        if loaded:
            self.wait.until(lambda d: d.find_element(By.ID, "summary").text.strip() != "" and self._models_loaded())

    def _models_loaded(self) -> bool:
        return bool(self.driver.execute_script("return document.getElementById('model').options.length > 0 || "  # type: ignore[attr-defined]
                                               "document.getElementById('notice').textContent !== ''"))  # fmt: skip

    def find(self, css: str) -> object:
        return self.driver.find_element(self.by.CSS_SELECTOR, css)  # type: ignore[attr-defined]

    def choose(self, *paths: Path) -> list[object]:
        """Choose ``paths`` in the file input; wait until every card has an answer (or an error)."""
        cards = "#results .result"
        before = len(self.driver.find_elements(self.by.CSS_SELECTOR, cards))  # type: ignore[attr-defined]
        self.find("#files").send_keys("\n".join(str(path) for path in paths))  # type: ignore[attr-defined]
        self.wait.until(
            lambda d: (
                len(d.find_elements(self.by.CSS_SELECTOR, cards)) == before + len(paths)
                and not d.find_elements(self.by.CSS_SELECTOR, cards + "[data-state=pending]")
            )
        )
        return self.driver.find_elements(self.by.CSS_SELECTOR, cards)[: len(paths)]  # type: ignore[attr-defined]

    def text(self, card: object, css: str) -> str:
        return card.find_element(self.by.CSS_SELECTOR, css).text  # type: ignore[attr-defined]


def _jpegs(directory: Path, count: int) -> list[Path]:
    paths = []
    for seed in range(count):
        path = directory / f"generated-{seed}.jpg"
        path.write_bytes(make_image(seed))
        paths.append(path)
    return paths


def test_generated_photos_show_labels_bars_latency_and_batch(
    browser: object, fp32_server: RunningServer, tmp_path: Path
) -> None:
    page = Page(browser, fp32_server.url)
    assert "random-catdog" in page.find("#summary").text  # type: ignore[attr-defined]
    assert not page.find("#model-field").is_displayed()  # type: ignore[attr-defined]  # one model: no picker
    assert not page.find("#key-field").is_displayed()  # type: ignore[attr-defined]  # an open server: no key field
    paths = _jpegs(tmp_path, 3)
    cards = page.choose(*paths)
    assert len(cards) == 3
    for card in cards:
        assert card.get_attribute("data-state") == "done"  # type: ignore[attr-defined]
        assert page.text(card, ".label") in ("cat", "dog")
        bars = card.find_elements(page.by.CSS_SELECTOR, ".bars li")  # type: ignore[attr-defined]
        assert len(bars) == 2  # top-k 3, capped by the server at the model's 2 classes
        meta = page.text(card, ".meta")
        assert "server " in meta and " ms" in meta and "batch " in meta and "random-catdog" in meta
    names = {page.text(card, ".name") for card in cards}
    assert names == {path.name for path in paths}


def test_bad_file_shows_the_servers_message(browser: object, fp32_server: RunningServer, tmp_path: Path) -> None:
    bad = tmp_path / "notes.jpg"
    bad.write_bytes(b"this is not an image")
    expected = httpx.post(fp32_server.url + "/predict", files={"file": ("notes.jpg", bad.read_bytes())}).json()
    page = Page(browser, fp32_server.url)
    [card] = page.choose(bad)
    assert card.get_attribute("data-state") == "error"  # type: ignore[attr-defined]
    shown = page.text(card, ".error")
    assert expected["error"]["message"] in shown and expected["error"]["code"] in shown and "422" in shown
    thumbnail = card.find_element(page.by.CSS_SELECTOR, "img")  # type: ignore[attr-defined]
    width = "return arguments[0].getBoundingClientRect().width"  # the browser cannot show it either:
    page.wait.until(lambda d: d.execute_script(width, thumbnail) == 0)  # no empty gap where it would be


def test_model_picker_sends_the_chosen_model(
    browser: object, random_checkpoint: Path, start_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    from selenium.webdriver.support.ui import Select

    server = start_server({"ALEXNET_MODELS": f"first={random_checkpoint},second={random_checkpoint}"})
    page = Page(browser, server.url)
    assert page.find("#model-field").is_displayed()  # type: ignore[attr-defined]
    Select(page.find("#model")).select_by_value("second")
    [card] = page.choose(*_jpegs(tmp_path, 1))
    assert page.text(card, ".meta").endswith("second")


def test_page_is_not_in_the_openapi_schema(fp32_server: RunningServer) -> None:
    assert httpx.get(fp32_server.url + "/").headers["content-type"].startswith("text/html")
    assert "/" not in httpx.get(fp32_server.url + "/openapi.json").json()["paths"]


def test_sample_photos_are_classified(
    browser: object, start_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    photos = [REPO / "examples" / f"{label}.jpg" for label in ("cat", "dog")]
    server = start_server({"ALEXNET_CHECKPOINT": str(SHIPPED)})
    page = Page(browser, server.url)
    cards = page.choose(*photos)
    labels = {page.text(card, ".name"): page.text(card, ".label") for card in cards}
    assert labels == {photo.name: photo.stem for photo in photos}
    # ALEXNET_DEMO_SCREENSHOT=docs/demo.png regenerates the README's picture.
    target = os.environ.get("ALEXNET_DEMO_SCREENSHOT")
    shot = REPO / target if target else tmp_path / "demo.png"
    assert browser.save_screenshot(str(shot))  # type: ignore[attr-defined]


def test_key_field_sends_the_api_key(
    browser: object, random_checkpoint: Path, start_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    from selenium.webdriver.common.keys import Keys

    server = start_server({"ALEXNET_CHECKPOINT": str(random_checkpoint), "ALEXNET_API_KEYS": "k1,k2"})
    page = Page(browser, server.url)
    page.wait.until(lambda d: "unauthorized" in page.find("#notice").text)  # type: ignore[attr-defined]
    assert page.find("#key-field").is_displayed()  # type: ignore[attr-defined]  # learnt without a key
    [refused] = page.choose(*_jpegs(tmp_path, 1))
    assert "needs an API key" in page.text(refused, ".error") and "401" in page.text(refused, ".error")
    page.find("#api-key").send_keys("k2", Keys.TAB)  # type: ignore[attr-defined]
    page.wait.until(lambda d: "random-catdog" in page.find("#summary").text)  # type: ignore[attr-defined]
    assert page.find("#notice").text == ""  # type: ignore[attr-defined]
    cards = page.choose(*_jpegs(tmp_path, 2))
    assert [card.get_attribute("data-state") for card in cards] == ["done", "done"]  # type: ignore[attr-defined]


def test_favicon_is_served(fp32_server: RunningServer) -> None:
    icon = httpx.get(fp32_server.url + "/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/x-icon"
    assert icon.content.startswith(b"\x00\x00\x01\x00")  # an ICO file
    assert '<link rel="icon" href="/favicon.ico">' in httpx.get(fp32_server.url + "/").text


class WarmingServer(RunningServer):
    """A real ``alexnet-serve`` whose warm-up waits until ``gate`` exists (``tests/gated_serve.py``):
    it stays warming up, /readyz and /predict saying 503, for as long as a test needs."""

    def __init__(self, env: dict[str, str], gate: Path) -> None:
        self.gate = gate
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        handle, name = tempfile.mkstemp(prefix=f"alexnet-warming-{self.port}-", suffix=".log")
        os.close(handle)
        self.log, self._final_output = Path(name), None
        full_env = os.environ | env | {"ALEXNET_PORT": str(self.port), "ALEXNET_WARM_UP_GATE": str(gate)}
        with self.log.open("ab") as log:
            command = [sys.executable, str(REPO / "tests" / "gated_serve.py")]
            self.process = subprocess.Popen(command, env=full_env, stdout=log, stderr=subprocess.STDOUT)

    def finish_warming_up(self) -> None:
        self.gate.touch()


def test_page_waits_for_a_warming_server_and_retries_the_upload(
    browser: object, random_checkpoint: Path, tmp_path: Path
) -> None:
    env = {"ALEXNET_CHECKPOINT": str(random_checkpoint), "ALEXNET_COMPILE": "false", "ALEXNET_MAX_BATCH_SIZE": "2"}
    server = WarmingServer(env, tmp_path / "warm-up-may-finish")
    try:
        server.wait("/healthz")  # listening, the checkpoint loaded, warm-up held at the gate
        assert httpx.get(server.url + "/readyz").status_code == 503
        page = Page(browser, server.url, loaded=False)
        summary = page.find("#summary")
        page.wait.until(lambda d: " 2 s so far" in summary.text)  # type: ignore[attr-defined]  # it counts
        assert summary.text.startswith("The server is warming up, 2 s so far")  # type: ignore[attr-defined]
        assert summary.get_attribute("data-state") == "warming-up"  # type: ignore[attr-defined]
        [photo] = _jpegs(tmp_path, 1)
        page.find("#files").send_keys(str(photo))  # type: ignore[attr-defined]
        card = page.driver.find_element(page.by.CSS_SELECTOR, "#results .result")  # type: ignore[attr-defined]
        page.wait.until(lambda d: card.get_attribute("data-retries") is not None)  # a 503 came back
        assert card.get_attribute("data-state") == "pending"  # type: ignore[attr-defined]
        assert "not_ready" in page.text(card, ".meta") and "retrying in 5 s" in page.text(card, ".meta")
        server.finish_warming_up()
        page.wait.until(lambda d: card.get_attribute("data-state") == "done")  # the retry after Retry-After
        assert page.text(card, ".label") in ("cat", "dog")
        page.wait.until(lambda d: "random-catdog" in page.find("#summary").text)  # type: ignore[attr-defined]
    finally:
        server.stop()
