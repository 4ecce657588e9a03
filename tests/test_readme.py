"""The README is part of the product: its commands and tables must match the code.

Every fenced code block of README.md and deploy/README.md is either run here, its output
checked against what the README shows (``RUN_HERE``), or named in ``CANNOT_RUN_HERE`` with the
reason; ``test_every_block_is_run_or_says_why`` keeps the two lists complete. The commands run
as pasted in a folder holding a copy of ``examples/`` (what they need from a clone), against a
server started with the README's own command; only the port differs (a free one instead of
8000, which another server may hold) and torch.compile is off (the same labels, a start in
seconds instead of a minute).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.config import Settings
from tests.conftest import CATDOG, RunningServer, free_port, require_catdog

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DEPLOY = (ROOT / "deploy" / "README.md").read_text()
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", flags=re.M | re.S)
# Probabilities may move this much between the README's run and this one (int8 or compiled there,
# eager fp32 here; a retrained model re-pasted); the labels and everything else must match.
PROBABILITY_TOLERANCE = 0.05

# A phrase of each block → the test below that runs it.
RUN_HERE = {
    "pip install -e . && alexnet-serve": "the server every test below uses (its last command)",
    "$ curl -F file=@examples/cat.jpg localhost:8000/predict": "test_quick_start_curl",
    "$ alexnet-predict examples/cat.jpg examples/dog.jpg": "test_cli_examples",
    "from alexnet_client import ApiError, Client": "test_python_client_example",
    "cat 0.": "test_python_client_example (its output)",
    '{"model": "alexnet-catdog", "label": "cat"': "test_predict_answer_shape",
    "ALEXNET_API_KEYS=s3cret alexnet-serve": "test_access_control_example",
    "ruff check . && ruff format --check .": "test_lint_commands (the pip and pytest lines: see CANNOT_RUN_HERE)",
    "python -m model.evaluate": "test_evaluate_command (its model.train line: see CANNOT_RUN_HERE)",
}
CANNOT_RUN_HERE = {
    "--index-url https://download.pytorch.org/whl/cpu": "installs torch from download.pytorch.org: "
    "a network download of a second torch into a new venv (minutes, and unreachable where only PyPI is)",
    "pip install -e '.[dev]' && pytest": "the whole test suite from a new venv: CI runs it verbatim "
    "(.ci/run, checked by test_ci_runs_the_readme_commands); a test cannot run the suite it is part of",
    "python -m model.train": "(Training and evaluation, with model.evaluate) trains for hours on the "
    "cores the tests share; tests/test_train.py trains a tiny run instead",
    "catdog-extra.sh GIT_DIR": "(Training and evaluation) extracts 14,946 photos from a repository the "
    "fetch tool brings, then trains for hours; tests/test_train.py covers --extra on generated folders",
    "docker compose": "deploy/README: needs a running Docker engine and builds a multi-GB image (minutes "
    "on two cores, downloading torch); deploy/smoke.sh runs it where an engine is up",
    "docker build": "deploy/README: builds and pushes an image (a Docker engine, a registry)",
    "kubectl": "deploy/README: needs a Kubernetes cluster (and KServe)",
}


def blocks() -> list[tuple[str, str]]:
    """(language, text) of every fenced block in README.md and deploy/README.md."""
    return [(match[1], match[2]) for text in (README, DEPLOY) for match in FENCE.finditer(text)]


def test_every_block_is_run_or_says_why() -> None:
    phrases = [*RUN_HERE, *CANNOT_RUN_HERE]
    for language, text in blocks():
        matched = [phrase for phrase in phrases if phrase in text]
        assert matched, f"a {language} block neither run nor listed in CANNOT_RUN_HERE:\n{text}"


def test_settings_table_lists_every_setting() -> None:
    documented = set(re.findall(r"^\| `ALEXNET_([A-Z_]+)`", README, flags=re.M))
    assert documented == {name.upper() for name in Settings.model_fields}


def test_ci_runs_the_readme_commands() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    bash = [text for language, text in blocks() if language == "bash"]
    install_and_test = next(block for block in bash if "[dev]" in block and "pytest" in block)
    assert install_and_test.strip() in ci
    assert any("pip install -e . && alexnet-serve" in block for block in bash)


def test_error_codes_in_readme_exist_in_the_code() -> None:
    source = "\n".join(path.read_text() for path in (ROOT / "app").glob("*.py"))
    for code in re.findall(r"`([a-z_]+)`", README.split("## Errors")[1].split("## Other")[0]):
        if code.startswith(("alexnet", "max")) or code == "top_k":
            continue
        assert f'"{code}"' in source or code in ("not_found", "method_not_allowed"), code


def test_exit_status_table_matches_the_code() -> None:
    from app.cli import EXIT_BAD_SETTING
    from app.startup import EXIT_NEVER_READY
    from app.workers import EXIT_WORKER_DIED

    table = dict(re.findall(r"^\| (\d) \| (.*) \|$", README.split("Exit status of `alexnet-serve`")[1], flags=re.M))
    assert set(table) == {"0", "1", str(EXIT_BAD_SETTING), str(EXIT_NEVER_READY)}
    assert str(EXIT_WORKER_DIED) == "1" and "workers" in table["1"]
    assert "port already in use" in table[str(EXIT_BAD_SETTING)] and "does not exist" in table["2"]
    assert "does not load" in table[str(EXIT_NEVER_READY)] and "--device cuda" in table["3"]


def test_sample_photos_are_small_and_the_only_photos() -> None:
    photos = {path.name: path.stat().st_size for path in (ROOT / "examples").glob("*.jpg")}
    assert set(photos) == {"cat.jpg", "dog.jpg"} and max(photos.values()) < 40_000
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    others = [name for name in tracked.split() if name.lower().endswith((".jpg", ".jpeg")) and "examples/" not in name]
    assert not others, others


def test_the_cpu_note_comes_before_the_first_command() -> None:
    quick_start = README.split("## Quick start")[1]
    assert quick_start.index("without an NVIDIA GPU, read this first") < quick_start.index("pip install -e . &&")
    assert "reaches only PyPI" in quick_start and "download.pytorch.org` cannot be reached" in quick_start


def test_test_command_says_how_long_and_offers_the_quick_subset() -> None:
    before = README.split("pip install -e '.[dev]' && pytest")[0].rsplit("```bash", 1)[0][-400:]
    assert re.search(r"takes \d+ to \d+ minutes", before) and 'pytest -m "not slow"' in before


# --- the blocks run here -------------------------------------------------------------------


def console(block_phrase: str) -> list[tuple[str, list[str]]]:
    """A ``console`` block as (command, the lines it printed) pairs."""
    text = next(text for language, text in blocks() if language == "console" and block_phrase in text)
    pairs: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("$ "):
            pairs.append((line[2:], []))
        else:
            pairs[-1][1].append(line)
    return pairs


NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e-?\d+)?")


def assert_same_output(shown: list[str], printed: list[str]) -> None:
    """The same lines but for numbers: probabilities (4+ decimals, at most 1) within the tolerance,
    times, rates and batch sizes free."""
    assert [NUMBER.sub("#", line) for line in printed] == [NUMBER.sub("#", line) for line in shown], printed
    for want, got in zip(shown, printed, strict=True):
        for a, b in zip(NUMBER.findall(want), NUMBER.findall(got), strict=True):
            if re.fullmatch(r"-?\d+\.\d{4,}(e-?\d+)?", a) and float(a) <= 1:
                assert abs(float(a) - float(b)) <= PROBABILITY_TOLERANCE, (want, got)


def run_shell(command: str, cwd: Path, env: dict[str, str], *, stderr: bool = True) -> list[str]:
    """``command`` in bash from ``cwd``; stdout's lines, then stderr's (as the README shows them)
    unless ``stderr`` is false (curl's progress meter, which a terminal never shows)."""
    done = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{command}:\n{done.stdout}\n{done.stderr}"
    return done.stdout.splitlines() + (done.stderr.splitlines() if stderr else [])


class ReadmeServer(RunningServer):
    """The README's own command to start the server (``bash -c``), on a free port."""

    def __init__(self, command: str, cwd: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log, self._final_output = cwd / f"server-{self.port}.log", None
        env = os.environ | {"ALEXNET_PORT": str(self.port), "ALEXNET_COMPILE": "false", "PATH": _venv_path()}
        with self.log.open("ab") as log:
            # bash runs a lone command in its own process (exec): stopping it stops the server
            self.process = subprocess.Popen(["bash", "-c", command], cwd=cwd, env=env, stdout=log, stderr=log)
        self.wait("/readyz")


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the README's commands need of a clone: the sample photos."""
    folder = tmp_path_factory.mktemp("clone")
    shutil.copytree(ROOT / "examples", folder / "examples")
    return folder


@pytest.fixture(scope="module")
def server(clone: Path) -> Iterator[RunningServer]:
    quick_start = next(text for language, text in blocks() if "pip install -e . && alexnet-serve" in text)
    running = ReadmeServer(quick_start.strip().rsplit("&& ", 1)[1], clone)  # the venv is this one
    yield running
    running.stop()


def env_for(server: RunningServer) -> dict[str, str]:
    return os.environ | {"PATH": _venv_path(), "ALEXNET_URL": server.url}


def on_port(command: str, server: RunningServer) -> str:
    return command.replace("localhost:8000", f"localhost:{server.port}")


@pytest.mark.slow
def test_quick_start_curl(server: RunningServer, clone: Path) -> None:
    [(command, shown)] = console("$ curl -F file=@examples/cat.jpg")
    assert_same_output(shown, run_shell(on_port(command, server), clone, env_for(server), stderr=False))


@pytest.mark.slow
def test_cli_examples(server: RunningServer, clone: Path) -> None:
    for command, shown in console("$ alexnet-predict examples/cat.jpg examples/dog.jpg"):
        assert_same_output(shown, run_shell(command, clone, env_for(server)))


@pytest.mark.slow
def test_python_client_example(server: RunningServer, clone: Path) -> None:
    code = next(text for language, text in blocks() if language == "python" and "alexnet_client" in text)
    shown = next(text for language, text in blocks() if language == "console" and text.startswith("cat 0."))
    code = code.replace("http://127.0.0.1:8000", server.url)
    done = subprocess.run([sys.executable, "-c", code], cwd=clone, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert_same_output(shown.splitlines(), done.stdout.splitlines())


@pytest.mark.slow
def test_predict_answer_shape(server: RunningServer) -> None:
    section = README.split("## `POST /predict`")[1]
    shown = json.loads(next(text for language, text in blocks() if language == "json" and text in section))
    with (ROOT / "examples" / "cat.jpg").open("rb") as photo:
        answer = httpx.post(server.url + "/predict", files={"file": photo}, timeout=60).json()
    assert answer.keys() == shown.keys() and answer["label"] == shown["label"]
    assert [p.keys() for p in answer["predictions"]] == [p.keys() for p in shown["predictions"]]


@pytest.mark.slow
def test_access_control_example(clone: Path) -> None:
    block = next(text for language, text in blocks() if "ALEXNET_API_KEYS=s3cret alexnet-serve" in text)
    start, curl = block.strip().splitlines()
    keyed = ReadmeServer(start, clone)
    try:
        answer = json.loads("\n".join(run_shell(on_port(curl, keyed), clone, env_for(keyed), stderr=False)))
        assert answer["label"] == "cat"
        no_key = on_port(curl.replace("-H 'Authorization: Bearer s3cret' ", ""), keyed)
        without_key = run_shell(no_key, clone, env_for(keyed), stderr=False)
        assert json.loads(without_key[0])["error"]["code"] == "unauthorized"  # "else 401", as the README says
    finally:
        keyed.stop()


def test_lint_commands() -> None:
    block = next(text for language, text in blocks() if "ruff check . && ruff format --check ." in text)
    command = next(line for line in block.splitlines() if line.startswith("ruff"))
    done = subprocess.run(["bash", "-c", command], cwd=ROOT, env=os.environ | {"PATH": _venv_path()}, text=True,
                          capture_output=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
@pytest.mark.realdata
def test_evaluate_command() -> None:
    require_catdog()
    block = next(text for language, text in blocks() if "python -m model.evaluate" in text)
    command = next(line for line in block.splitlines() if "model.evaluate" in line)
    assert "../shared/data/catdog/val" in command and (ROOT / "../shared/data/catdog").resolve() == CATDOG.resolve()
    done = subprocess.run(["bash", "-c", command], cwd=ROOT, env=os.environ | {"PATH": _venv_path()}, text=True,
                          capture_output=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr
    printed = done.stdout.lower()
    for said in ("accuracy", "precision", "recall", "confusion"):  # "prints accuracy, per-class precision/recall
        assert said in printed, said  # and the confusion matrix"


def _venv_path() -> str:
    """PATH with this interpreter's folder first, where ``alexnet-serve`` and ``alexnet-predict`` are."""
    return f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
