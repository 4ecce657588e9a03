"""Start-up as an operator sees it: phase logs, the exit status and the one message of a server
that can never become ready, settings errors as sentences, torch.compile's fallback and cache.

Every test runs the real ``python -m app`` (``alexnet-serve``) as a process."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from model.checkpoint import ModelMeta, save_checkpoint
from model.network import AlexNet
from model.presets import Preprocessing
from tests.conftest import REPO, RunningServer, free_port, json_lines, make_image

EXIT_BAD_SETTING = 2
EXIT_NEVER_READY = 3


def run_app(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """``python -m app`` to its end (on a free port, JSON logs unless ``env`` says otherwise)."""
    full_env = os.environ | {"ALEXNET_PORT": str(free_port()), "ALEXNET_LOG_FORMAT": "json"} | env
    return subprocess.run(
        [sys.executable, "-m", "app", *args], env=full_env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture
def start_app(start_server: Callable[..., RunningServer]) -> Callable[..., RunningServer]:
    """``python -m app ARGS`` with JSON logs unless ``env`` says otherwise, once it logs "ready in"."""

    def start(env: dict[str, str], *args: str) -> RunningServer:
        server = start_server({"ALEXNET_LOG_FORMAT": "json"} | env, *args, wait_ready=False)
        server.wait_for("ready in ")
        return server

    return start


def errors(records: list[dict[str, Any]]) -> list[str]:
    return [record["message"] for record in records if record["level"] in ("ERROR", "CRITICAL")]


def test_bad_checkpoint_exits_3_with_one_message_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"PK\x03\x04 this is not a real zip")
    result = run_app({"ALEXNET_CHECKPOINT": str(bad)})
    assert result.returncode == EXIT_NEVER_READY, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    records = json_lines(result.stderr)
    naming = [record for record in records if "broken.pth" in record["message"]]
    assert len(naming) == 1, "the file is named once"
    assert naming[0]["level"] == "ERROR" and naming[0]["logger"] == "app.startup"
    assert naming[0]["message"].startswith(f"cannot load checkpoint '{bad}': truncated or corrupt file")
    assert errors(records) == [naming[0]["message"], "Application startup failed. Exiting."]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_machine_without_it_exits_3_before_loading_anything() -> None:
    result = run_app({"ALEXNET_COMPILE": "false"}, "--device", "cuda", timeout=60)
    assert result.returncode == EXIT_NEVER_READY, result.stderr
    assert "Traceback" not in result.stderr
    [record] = json_lines(result.stderr)  # one line: no checkpoint loaded, no server started
    assert record["level"] == "ERROR" and record["logger"] == "app.startup"
    assert record["message"].startswith("device 'cuda' requested but CUDA is not available (")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_port_in_use_exits_2_at_once_naming_the_address(workers: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_app({"ALEXNET_PORT": str(port), "ALEXNET_WORKERS": workers}, timeout=60)
    assert result.returncode == EXIT_BAD_SETTING, result.stderr
    [record] = json_lines(result.stderr)  # one line: nothing loaded, nothing else said
    assert record["level"] == "ERROR"
    assert record["message"].startswith(f"cannot listen on 127.0.0.1:{port}: the address is already in use")
    assert record["message"].endswith("choose another port with --port or ALEXNET_PORT")


def test_foreign_warnings_are_dropped_at_their_logger() -> None:
    """The two torch warnings of every start, raised by their real sources (torchao's import,
    torch.compile's C++ toolchain lookup on a machine with a CUDA toolkit and no GPU)."""
    code = (
        "import sys\n"
        "from app.logs import configure_logging\n"
        "from app.startup import quiet_foreign_logs\n"
        "configure_logging('info', 'json')\n"
        "if sys.argv[1] == 'quiet': quiet_foreign_logs()\n"
        "import torch.utils.cpp_extension, torchao.quantization.pt2e.quantize_pt2e\n"
        "from app.logs import adopt_library_loggers; adopt_library_loggers()\n"
        "import logging; logging.getLogger('torch.utils._pytree').warning('kept: other warnings still print')\n"
    )
    cuda_home = os.environ | {"CUDA_HOME": str(REPO)}  # a toolkit folder: the message names it
    loud, quiet = (
        subprocess.run([sys.executable, "-c", code, how], env=cuda_home, capture_output=True, text=True, timeout=120)
        for how in ("loud", "quiet")
    )
    foreign = ("No CUDA runtime is found", "KernelPreference")
    if torch.cuda.is_available() or not all(text in loud.stderr for text in foreign):
        pytest.skip(f"this machine does not raise both warnings:\n{loud.stderr}")
    assert quiet.returncode == 0, quiet.stderr
    assert [record["message"] for record in json_lines(quiet.stderr)] == ["kept: other warnings still print"]


@pytest.fixture(scope="module")
def tiny_input_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Loads fine, but its 16-pixel input is too small for AlexNet: the first forward pass fails."""
    path = tmp_path_factory.mktemp("tiny") / "tiny-input.safetensors"
    meta = ModelMeta(
        "tiny-input", "alexnet", ("cat", "dog"), preprocessing=Preprocessing(input_size=16, resize_size=16)
    )
    return save_checkpoint(path, AlexNet(2), meta, int8=True)


def test_warm_up_failure_exits_3_with_one_message(tiny_input_checkpoint: Path) -> None:
    result = run_app({"ALEXNET_CHECKPOINT": str(tiny_input_checkpoint), "ALEXNET_COMPILE": "false"})
    assert result.returncode == EXIT_NEVER_READY, result.stderr
    assert "Traceback" not in result.stderr
    records = json_lines(result.stderr)
    (message,) = errors(records)
    assert message.startswith("warm-up of model 'tiny-input' failed: RuntimeError: ")
    assert "Output size is too small" in message
    messages = [record["message"] for record in records]
    assert messages.index("Shutting down") > messages.index(message), "the server stopped after saying why"


def test_phase_logs_tell_what_start_up_is_doing(start_app: Any, random_checkpoint: Path) -> None:
    server = start_app({"ALEXNET_CHECKPOINT": str(random_checkpoint), "ALEXNET_MAX_BATCH_SIZE": "4"})
    records = json_lines(server.output())
    messages = [record["message"] for record in records]

    def index(prefix: str) -> int:
        found = [i for i, message in enumerate(messages) if message.startswith(prefix)]
        assert len(found) == 1, f"one line starting {prefix!r} in {messages}"
        return found[0]

    assert index(f"starting on 127.0.0.1:{server.port} (pid ") == 0, "ours is the first line"
    premature = ("Uvicorn running on", "Waiting for application startup.", "Application startup complete.")
    assert not [message for message in messages if message.startswith(premature)], "said before it was true"
    phases = [
        index(f"loaded checkpoint {random_checkpoint}: random-catdog (alexnet, 2 classes) in "),
        index("model random-catdog: device cpu (asked: auto), dtype "),
        index("warming up random-catdog: batch size 1 (1 of 3), "),
        index("warming up random-catdog: batch size 2 (2 of 3), "),
        index("warming up random-catdog: batch size 4 (3 of 3), "),
        index("ready in "),
    ]
    assert phases == sorted(phases)
    ready = records[phases[-1]]
    assert ready["message"].endswith(f" s: {server.url}") and ready["startup_s"] > 0


def test_settings_errors_read_as_sentences(tmp_path: Path) -> None:
    missing = tmp_path / "nope.safetensors"
    result = run_app({"ALEXNET_LOG_LEVEL": "loud"}, "--port", "70000", "--checkpoint", str(missing))
    assert result.returncode == EXIT_BAD_SETTING
    assert result.stderr.splitlines() == [
        "alexnet-serve: ALEXNET_PORT (--port): input should be less than or equal to 65535 (got 70000)",
        f"alexnet-serve: ALEXNET_CHECKPOINT (--checkpoint): checkpoint file '{missing}' does not exist",
        "alexnet-serve: ALEXNET_LOG_LEVEL: input should be 'debug', 'info', 'warning' or 'error' (got 'loud')",
    ]


def test_help_lists_the_flags() -> None:
    result = run_app({}, "--help")
    assert result.returncode == 0
    for flag in ("--host", "--port", "--checkpoint", "--device", "--models", "--compile", "--no-compile"):
        assert flag in result.stdout
    assert "--log-format {auto,json,text}" in result.stdout


def test_flags_reach_the_settings(start_app: Any, random_checkpoint: Path) -> None:
    """--models, --no-compile and --log-format text: a real start with them, seen from outside."""
    server = start_app(
        {"ALEXNET_COMPILE": "true", "ALEXNET_LOG_FORMAT": "json"},  # the flags win over the variables
        *("--models", f"first={random_checkpoint}", "--no-compile", "--log-format", "text"),
    )
    models = httpx.get(server.url + "/models", timeout=10).json()["models"]
    assert [(model["name"], model["compiled"]) for model in models] == [("first", False)]
    lines = server.output().splitlines()
    assert lines and not [line for line in lines if line.startswith("{")], "text, not JSON"
    assert any(" INFO app.main: ready in " in line for line in lines)


def test_compile_failure_falls_back_to_eager(start_app: Any, random_checkpoint: Path, tmp_path: Path) -> None:
    """No working C++ compiler (CXX=/bin/false): torch.compile fails, the model is served eager."""
    server = start_app(
        {
            "ALEXNET_CHECKPOINT": str(random_checkpoint),
            "ALEXNET_COMPILE": "true",
            "ALEXNET_CACHE_DIR": str(tmp_path / "cache"),
            "ALEXNET_LOG_FORMAT": "json",
            "ALEXNET_MAX_BATCH_SIZE": "2",
            "CXX": "/bin/false",
        }
    )
    (model,) = httpx.get(server.url + "/models").json()["models"]
    assert model["compiled"] is False
    answer = httpx.post(server.url + "/predict", files={"file": ("x.jpg", make_image(1), "image/jpeg")})
    assert answer.status_code == 200
    records = json_lines(server.output())
    warnings = [r["message"] for r in records if r["level"] == "WARNING" and r["logger"] == "app.engine"]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("model random-catdog is degraded: torch.compile is off because compiling failed: ")
    assert "images/s" in warnings[0] and warnings[0].endswith("then restart")
    assert not errors(records)


def test_unwritable_cache_dir_serves_eager_with_a_warning(
    start_app: Any, random_checkpoint: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    server = start_app(
        {
            "ALEXNET_CHECKPOINT": str(random_checkpoint),
            "ALEXNET_COMPILE": "true",
            "ALEXNET_CACHE_DIR": str(blocker / "cache"),  # under a file: cannot be created
        }
    )
    (model,) = httpx.get(server.url + "/models").json()["models"]
    records = json_lines(server.output())
    assert model["compiled"] is False
    (warning,) = [r["message"] for r in records if r["level"] == "WARNING"]
    assert warning.startswith(
        "model random-catdog is degraded: torch.compile is off because its cache folder cannot be written ("
    )
    assert str(blocker) in warning and warning.endswith("then restart")


@pytest.mark.slow
def test_compile_cache_lives_in_the_cache_dir(start_app: Any, random_checkpoint: Path, tmp_path: Path) -> None:
    """A real torch.compile keeps its cache under ALEXNET_CACHE_DIR, and a restart reuses it."""
    cache = tmp_path / "cache"
    env = {
        "ALEXNET_CHECKPOINT": str(random_checkpoint),
        "ALEXNET_COMPILE": "true",
        "ALEXNET_CACHE_DIR": str(cache),
        "ALEXNET_MAX_BATCH_SIZE": "2",
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "not-here"),  # ALEXNET_CACHE_DIR wins
    }
    kernels = {}
    for start in ("cold", "warm"):
        server = start_app(env)
        (model,) = httpx.get(server.url + "/models").json()["models"]
        records = json_lines(server.output())
        server.stop()
        assert model["compiled"] is True, start
        assert not [r for r in records if r["logger"].startswith("app") and r["level"] != "INFO"], start
        kernels[start] = sorted(path.relative_to(cache) for path in cache.rglob("*.so"))
        assert kernels[start], f"{start} start: Inductor's compiled kernels are under ALEXNET_CACHE_DIR"
    assert kernels["warm"] == kernels["cold"], "the warm start compiled nothing new"
    assert not [path for path in (tmp_path / "not-here").rglob("*") if path.is_file()], "nothing cached elsewhere"


def test_protocol_doc_several_models_example_runs_as_pasted(imagenet_checkpoint: Path, tmp_path: Path) -> None:
    """docs/protocol.md's ALEXNET_MODELS commands, verbatim; torch's hub cache already holds the
    torchvision file (random weights here: nothing can be downloaded in the tests)."""
    doc = (REPO / "docs" / "protocol.md").read_text()
    block = re.findall(r"```bash\n(.*?)```", doc.split("## Several models", 1)[1], flags=re.S)[0]
    assert "alexnet-serve" in block.splitlines()[-1]
    hub = tmp_path / "torch-home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "alexnet-owt-7be5be79.pth").symlink_to(imagenet_checkpoint)
    port = free_port()
    log = tmp_path / "server.log"
    env = os.environ | {"TORCH_HOME": str(tmp_path / "torch-home"), "ALEXNET_PORT": str(port), "PATH": _venv_path()}
    with log.open("ab") as out:
        shell = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", block], cwd=REPO, env=env, stdout=out, stderr=out, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 300
        while "ready in " not in log.read_text(errors="replace"):
            assert shell.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.2)
        models = httpx.get(f"http://127.0.0.1:{port}/models", timeout=10).json()["models"]
    finally:
        os.killpg(shell.pid, signal.SIGTERM)
        shell.wait(timeout=60)
    assert [(m["name"], m["num_classes"]) for m in models] == [("catdog", 2), ("imagenet", 1000)]


def _venv_path() -> str:
    """PATH with this interpreter's folder first, where `alexnet-serve` and `python` are."""
    return f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
