"""Shared fixtures: random-weight checkpoints, generated images, in-process and real servers."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from PIL import Image

from model.checkpoint import Checkpoint, ModelMeta, save_checkpoint
from model.network import AlexNet

# The server compiles the model by default on the CPU (~20 s cold, ~2 s cached per start);
# most tests start many servers, so they run eager unless a test asks for compile.
os.environ.setdefault("ALEXNET_COMPILE", "false")

REPO = Path(__file__).resolve().parents[1]
CATDOG = REPO.parent / "shared" / "data" / "catdog"
SHIPPED = REPO / "model" / "weights" / "catdog.safetensors"


def require(available: bool, what: str, install: str) -> None:
    """Skip the calling test (or module) when ``what`` is missing, saying exactly how to get it;
    under ``CI=true`` fail instead, so a missing prerequisite never hides coverage in CI."""
    if available:
        return
    message = f"{what} is missing: {install}"
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message, allow_module_level=True)


def require_catdog() -> None:
    """The real photos at ``../shared/data/catdog`` (with ``train`` and ``val``)."""
    require(
        (CATDOG / "val").is_dir(),
        f"real photos at {CATDOG}",
        "put the cat/dog photos there (val/cat, val/dog, train/...; the project's shared data folder)",
    )


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cat/dog AlexNet with random weights in our format (int8, ~58 MB)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "random-catdog.safetensors"
    return save_checkpoint(path, AlexNet(2), ModelMeta("random-catdog", "alexnet", ("cat", "dog")), int8=True)


@pytest.fixture(scope="session")
def imagenet_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """torchvision's ImageNet AlexNet layout with random weights, as its ``.pth`` state dict (~244 MB)."""
    from torchvision.models import alexnet

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("imagenet") / "alexnet-imagenet.pth"
    torch.save(alexnet(weights=None).state_dict(), path)
    return path


@torch.inference_mode()
def reference_probabilities(checkpoint: Checkpoint, pixels: torch.Tensor) -> torch.Tensor:
    """fp32 probabilities for a uint8 NCHW batch, normalised here by hand with the checkpoint's own
    mean and std and run through its bare network: independent of the serving path's modules."""
    prep = checkpoint.meta.preprocessing
    mean = torch.tensor(prep.mean).view(1, 3, 1, 1)
    std = torch.tensor(prep.std).view(1, 3, 1, 1)
    network = checkpoint.network.float().eval()
    return network((pixels.float() / 255 - mean) / std).softmax(dim=1)


def make_image(seed: int = 0, size: tuple[int, int] = (320, 240), fmt: str = "JPEG", mode: str = "RGB") -> bytes:
    """A distinct noisy picture per seed, encoded in ``fmt``."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1] // 8, size[0] // 8, 3), generator=generator, dtype=torch.uint8)
    image = Image.fromarray(pixels.numpy(), "RGB").resize(size, Image.Resampling.BILINEAR).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def image_bytes() -> Callable[..., bytes]:
    return make_image


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of a server's output parsed as JSON (a line that is not JSON fails the test, naming it)."""
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}\n--- whole output:\n{text}")
    return records


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RunningServer:
    """A real ``python -m app ARGS`` process on 127.0.0.1, its output appended to a temporary file."""

    def __init__(self, env: dict[str, str], *args: str, wait_ready: bool = True) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = os.environ | {"ALEXNET_HOST": "127.0.0.1", "ALEXNET_PORT": str(self.port)} | env
        handle, name = tempfile.mkstemp(prefix=f"alexnet-serve-{self.port}-", suffix=".log")
        os.close(handle)
        self.log = Path(name)
        self._final_output: str | None = None
        with self.log.open("ab") as log:  # O_APPEND: reading the file never moves where the child writes
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app", *args], env=full_env, stdout=log, stderr=subprocess.STDOUT
            )
        if wait_ready:
            self.wait("/readyz")

    def wait(self, path: str, timeout: float = 120.0) -> None:
        """Until ``path`` answers 200; fails when the process ends first or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{path} not 200 after {timeout} s:\n{self.output()}")

    def wait_for(self, text: str, timeout: float = 300) -> None:
        """Until ``text`` is in the output; fails when the process ends first or time runs out."""
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if self.process.poll() is not None:
                pytest.fail(f"exited with {self.process.returncode} before {text!r}:\n{self.output()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {text!r} after {timeout} s:\n{self.output()}")
            time.sleep(0.1)

    def output(self) -> str:
        if self._final_output is not None:
            return self._final_output
        return self.log.read_bytes().decode(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._final_output is None:
            self._final_output = self.output()
            self.log.unlink(missing_ok=True)
        return self.process.returncode


@pytest.fixture
def start_server() -> Iterator[Callable[..., RunningServer]]:
    servers: list[RunningServer] = []

    def start(env: dict[str, str], *args: str, wait_ready: bool = True) -> RunningServer:
        server = RunningServer(env, *args, wait_ready=wait_ready)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def fp32_server(random_checkpoint: Path) -> Iterator[RunningServer]:
    """A real server in fp32 with a wide batching window, shared by a test module."""
    server = RunningServer(
        {
            "ALEXNET_CHECKPOINT": str(random_checkpoint),
            "ALEXNET_DTYPE": "fp32",
            "ALEXNET_MAX_DELAY_MS": "50",
            "ALEXNET_MAX_QUEUE": "128",  # its tests send bursts of 40 to be batched, not refused
        }
    )
    yield server
    server.stop()


CHROME_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1200,800",
)  # fmt: skip


def headless_chromium(profile: Path, *extra_flags: str) -> object:
    """Debian's Chromium driven by Selenium, with a fresh profile in ``profile``. Both paths are
    given, so Selenium Manager never runs (nothing can be downloaded here)."""
    require(importlib.util.find_spec("selenium") is not None, "selenium", "pip install -e '.[dev]'")
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    require(bool(chromium and chromedriver), "a browser", "apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROME_FLAGS, *extra_flags, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))


def ready_in_process(client: Any, timeout_s: float = 120) -> Any:
    """An in-process ``TestClient`` once its ``/readyz`` says 200 (models warmed up)."""
    deadline = time.monotonic() + timeout_s
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "never became ready"
        time.sleep(0.02)
    return client
