"""Start a server as a subprocess, wait until it is ready, and always tear it down.

Each server runs in its own session (process group) so that stopping it also stops the
workers it spawned (LitServe forks inference and API processes): SIGTERM to the group,
then SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench import common


@dataclass(frozen=True)
class ServerSpec:
    """How to start one server: its command (``{port}`` is filled in), extra env, readiness path,
    and a line its log must hold too before it counts as ready (``ready_log``)."""

    name: str
    command: Sequence[str]
    ready_path: str = "/readyz"
    predict_path: str = "/predict"
    env: Mapping[str, str] = field(default_factory=dict)
    ready_log: str | None = None


@dataclass(frozen=True)
class Running:
    name: str
    base_url: str
    predict_url: str
    pid: int
    ready_after_s: float
    log: Path


class ServerExited(RuntimeError):
    """The server process ended before it became ready."""


def ours(checkpoint: Path, env: Mapping[str, str] | None = None) -> ServerSpec:
    """``alexnet-serve`` (as ``python -m app``); settings beyond the port come from ``ALEXNET_*``."""
    command = [sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", "{port}", "--checkpoint", str(checkpoint)]
    env = dict(env or {})
    # With several workers /readyz is 200 once the first is warm; measure only once all are.
    workers = int((os.environ | env).get("ALEXNET_WORKERS", "1"))
    return ServerSpec("ours", command, env=env, ready_log=f"all {workers} workers ready" if workers > 1 else None)


def peer(
    name: str, module: str, checkpoint: Path, device: str, ready_path: str, extra: Sequence[str] = ()
) -> ServerSpec:
    command = [sys.executable, "-m", module, "--checkpoint", str(checkpoint), "--port", "{port}", "--device", device]
    return ServerSpec(name, [*command, *extra], ready_path=ready_path)


def wait_ready(
    process: subprocess.Popen[bytes], url: str, timeout: float, log: Path, ready_log: str | None = None
) -> None:
    """Poll ``url`` until it answers 200 (and ``log`` holds ``ready_log``); fail fast if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerExited(f"server exited with code {process.returncode}; log tail:\n{tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200 and (ready_log is None or ready_log in log.read_text(errors="replace")):
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout:.0f} s; log tail:\n{tail(log)}")


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop(process: subprocess.Popen[bytes], grace: float = 30.0) -> int:
    """SIGTERM the server's process group, SIGKILL it after ``grace`` seconds; returns the exit code."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    # Workers the server forked may outlive it; the group is ours alone, so clear it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    return process.returncode


@contextlib.contextmanager
def running(spec: ServerSpec, *, ready_timeout: float = 300.0, log_dir: Path | None = None) -> Iterator[Running]:
    """Start ``spec`` on a free port, wait for readiness, yield, then stop it whatever happened."""
    port = common.free_port()
    log = (log_dir or common.OUT_DIR / "logs") / f"{spec.name}-{port}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [part.replace("{port}", str(port)) for part in spec.command]
    base_url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    with open(log, "wb") as output:
        process = subprocess.Popen(
            command,
            cwd=common.REPO_ROOT,
            env=os.environ | dict(spec.env),
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        wait_ready(process, base_url + spec.ready_path, ready_timeout, log, spec.ready_log)
        yield Running(spec.name, base_url, base_url + spec.predict_path, process.pid, time.monotonic() - started, log)
    finally:
        stop(process)


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into ``SystemExit`` so ``finally`` blocks (server teardown) run."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
