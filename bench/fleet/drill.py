"""The four scenarios, each under the same steady closed-loop load through the balancer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench import client
from bench.fleet.control import Fleet
from bench.fleet.report import recovery_seconds, summarize
from bench.stress import Outcome, Pool, closed_loop

SAMPLE_EVERY_S = 0.25


@dataclass
class Load:
    """Steady load (``concurrency`` requests always outstanding) and the balancer's view, sampled."""

    fleet: Fleet
    target: client.Target
    requests: list[bytes]
    concurrency: int
    settle_s: float
    outcomes: list[Outcome] = field(default_factory=list)
    up: list[tuple[float, int]] = field(default_factory=list)  # (perf_counter, replicas UP in HAProxy)

    async def run(self, disrupt: Callable[[], Awaitable[dict[str, Any]]], full: int) -> dict[str, Any]:
        """Load for ``settle_s``, then ``disrupt()`` (its start time is the recovery's origin), then
        ``settle_s`` more once it returns; the scenario's figures."""
        stopping = False
        pool = Pool(self.target, timeout=60.0)
        loop = asyncio.create_task(closed_loop(pool, self.requests, self.concurrency, lambda: stopping, self.outcomes))
        sampler = asyncio.create_task(self._sample())
        await asyncio.sleep(self.settle_s)
        start = time.perf_counter()
        extra = await disrupt()
        await asyncio.sleep(self.settle_s)
        stopping = True
        await loop
        sampler.cancel()
        pool.close()
        return summarize(self.outcomes) | {"recovery_s": recovery_seconds(self.up, start, full)} | extra

    async def _sample(self) -> None:
        async with httpx.AsyncClient() as http:
            while True:
                try:
                    servers = await self.fleet.servers_async(http)
                    self.up.append((time.perf_counter(), sum(s.status.startswith("UP") for s in servers)))
                except httpx.HTTPError:
                    self.up.append((time.perf_counter(), 0))
                await asyncio.sleep(SAMPLE_EVERY_S)

    async def until_up(self, count: int, timeout_s: float) -> bool:
        """Whether ``count`` replicas were UP in HAProxy within ``timeout_s``."""
        return await self.until(lambda up: up >= count, timeout_s)

    async def until(self, holds: Callable[[int], bool], timeout_s: float) -> bool:
        """Whether ``holds(replicas UP in HAProxy)`` came true within ``timeout_s``."""
        deadline = time.perf_counter() + timeout_s
        while not (self.up and holds(self.up[-1][1])):
            if time.perf_counter() > deadline:
                return False
            await asyncio.sleep(SAMPLE_EVERY_S)
        return True


@dataclass(frozen=True)
class Drill:
    """Scenario runners; ``replicas`` is the fleet's full size."""

    fleet: Fleet
    target: client.Target
    requests: list[bytes]
    concurrency: int = 16
    replicas: int = 3
    settle_s: float = 5.0
    recover_timeout_s: float = 180.0

    def _load(self) -> Load:
        return Load(self.fleet, self.target, self.requests, self.concurrency, self.settle_s)

    async def rolling_restart(self) -> dict[str, Any]:
        """Every replica restarted in turn (SIGTERM, drain, start), the next once the last is back UP."""
        load = self._load()

        async def disrupt() -> dict[str, Any]:
            for container in self.fleet.containers():
                await asyncio.to_thread(self.fleet.restart, container)
                await load.until_up(self.replicas, self.recover_timeout_s)
            return {}

        return await load.run(disrupt, self.replicas)

    async def scale_out_in(self) -> dict[str, Any]:
        """From replicas - 1 to replicas and back (the removed replica is stopped: it drains)."""
        await asyncio.to_thread(self.fleet.up, self.replicas - 1)
        load = self._load()

        async def disrupt() -> dict[str, Any]:
            began = time.perf_counter()
            await asyncio.to_thread(self.fleet.scale, self.replicas)
            scaled_out = await load.until_up(self.replicas, self.recover_timeout_s)
            out_s = round(time.perf_counter() - began, 2) if scaled_out else None
            await asyncio.sleep(self.settle_s)
            await asyncio.to_thread(self.fleet.scale, self.replicas - 1)
            return {"recovery_s": out_s}  # here: until the added replica took traffic

        result = await load.run(disrupt, self.replicas - 1)
        await asyncio.to_thread(self.fleet.up, self.replicas)
        return result

    async def replica_killed(self) -> dict[str, Any]:
        """One replica SIGKILLed; Docker's restart policy starts it again."""
        load = self._load()

        async def disrupt() -> dict[str, Any]:
            victim = self.fleet.containers()[0]
            address = await asyncio.to_thread(self.fleet.address, victim)
            on_victim = [s.sessions for s in await asyncio.to_thread(self.fleet.servers) if s.address == address]
            self.fleet.sigkill(victim)
            await load.until(lambda up: up < self.replicas, timeout_s=10.0)  # HAProxy's checks notice
            await load.until(lambda up: up >= self.replicas, self.recover_timeout_s)
            return {"in_flight_at_kill": sum(on_victim)}

        return await load.run(disrupt, self.replicas)

    async def broken_replica(self, watch_s: float = 30.0) -> dict[str, Any]:
        """A replica whose checkpoint does not load joins the pool's DNS name and restarts in a loop."""
        load = self._load()

        async def disrupt() -> dict[str, Any]:
            broken = await asyncio.to_thread(self.fleet.start_broken)
            await asyncio.sleep(watch_s)
            routed = await asyncio.to_thread(self.fleet.requests_served_by, broken)
            await asyncio.to_thread(self.fleet.remove_broken)
            return {"routed_to_broken": routed}

        return await load.run(disrupt, self.replicas)
