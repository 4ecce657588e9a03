"""The fleet's controls: Docker Compose for the replicas, HAProxy's stats page for what it routes to."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.common import REPO_ROOT

COMPOSE_FILE = REPO_ROOT / "deploy" / "fleet" / "compose.yml"
SERVICE, BROKEN, BACKEND = "alexnet", "broken", "alexnet"
# A replica's drain (ALEXNET_DRAIN_TIMEOUT_S) plus margin: the compose file's stop_grace_period.
STOP_GRACE_S = 45


class FleetError(RuntimeError):
    """The fleet could not be driven (no engine, no image, a command failed): the drill cannot run."""


@dataclass(frozen=True)
class Server:
    """One HAProxy server slot: its name, address, state (UP, DOWN, MAINT, ...) and current sessions."""

    name: str
    address: str
    status: str
    sessions: int


def parse_stats_csv(text: str, backend: str = BACKEND) -> list[Server]:
    """The servers of ``backend`` in HAProxy's ``/stats;csv`` page (address "" when none is resolved)."""
    reader = csv.DictReader(io.StringIO(text.removeprefix("# ")))
    return [
        Server(row["svname"], (row.get("addr") or "").rsplit(":", 1)[0], row["status"], int(row["scur"] or 0))
        for row in reader
        if row["pxname"] == backend and row["svname"] not in ("FRONTEND", "BACKEND")
    ]


class Fleet:
    """The compose project of deploy/fleet/compose.yml and its balancer's stats page."""

    def __init__(self, stats_url: str, compose_file: Path = COMPOSE_FILE) -> None:
        self.stats_url = stats_url
        self.compose = ["docker", "compose", "-f", str(compose_file), "--profile", "drill"]

    def _run(self, *args: str, timeout: float = 600) -> str:
        try:
            done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise FleetError(f"{' '.join(args)}: {exc}") from exc
        if done.returncode != 0:
            raise FleetError(f"{' '.join(args)} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
        return done.stdout

    def up(self, replicas: int) -> None:
        """Start (or rescale to) ``replicas`` replicas and the balancer; return once all are healthy."""
        self._run(*self.compose, "up", "--detach", "--wait", "--scale", f"{SERVICE}={replicas}", SERVICE, "balancer")

    def scale(self, replicas: int) -> None:
        """Add or remove replicas (a removed one is stopped with SIGTERM: it drains)."""
        self._run(*self.compose, "up", "--detach", "--no-recreate", "--scale", f"{SERVICE}={replicas}", SERVICE)

    def down(self) -> None:
        self._run(*self.compose, "down", "--volumes", "--remove-orphans")

    def containers(self, service: str = SERVICE) -> list[str]:
        """The service's container ids, in compose's numbering order."""
        ids = self._run(*self.compose, "ps", "--quiet", service).split()
        return sorted(ids, key=lambda cid: self._inspect(cid, "{{.Name}}"))

    def _inspect(self, container: str, template: str) -> str:
        return self._run("docker", "inspect", "--format", template, container).strip()

    def address(self, container: str) -> str:
        return self._inspect(container, "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}").split()[0]

    def restart(self, container: str) -> None:
        """``docker restart``: SIGTERM (the replica drains), then start again: one step of a rolling restart."""
        self._run("docker", "restart", "--time", str(STOP_GRACE_S), container)

    def sigkill(self, container: str) -> None:
        """SIGKILL the replica's server process from the host, as the kernel's OOM killer would. Not
        ``docker kill``: Docker counts that as a manual stop and would not restart the container."""
        pid = int(self._inspect(container, "{{.State.Pid}}"))
        try:
            os.kill(pid, signal.SIGKILL)
        except PermissionError as exc:
            raise FleetError(f"cannot signal pid {pid} (run the drill as root on the engine's host): {exc}") from exc

    def start_broken(self) -> str:
        self._run(*self.compose, "up", "--detach", "--no-deps", BROKEN)
        (container,) = self.containers(BROKEN)
        return container

    def remove_broken(self) -> None:
        self._run(*self.compose, "rm", "--stop", "--force", BROKEN)

    def requests_served_by(self, container: str) -> int:
        """/predict requests the container's server logged (its JSON access log, every restart)."""
        done = subprocess.run(["docker", "logs", container], capture_output=True, text=True, check=False)
        return sum(1 for line in (done.stdout + done.stderr).splitlines() if _is_predict_log(line))

    def servers(self) -> list[Server]:
        response = httpx.get(self.stats_url, timeout=5)
        response.raise_for_status()
        return parse_stats_csv(response.text)

    async def servers_async(self, client: httpx.AsyncClient) -> list[Server]:
        response = await client.get(self.stats_url, timeout=5)
        response.raise_for_status()
        return parse_stats_csv(response.text)


def _is_predict_log(line: str) -> bool:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return False
    return isinstance(record, dict) and str(record.get("path", "")).startswith(("/predict", "/v2/models"))
