"""Runs the simulator in-process on a free loopback port, for tests and benchmarks."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, AsyncIterator

from aiohttp import web

from adapters.simkit import serve_on_loopback
from adapters.stripe_sim.app import create_app
from adapters.stripe_sim.config import SimConfig
from adapters.stripe_sim.simulator import SIM, Simulator


@dataclass
class RunningSimulator:
    url: str  # e.g. http://127.0.0.1:38127, the base for /v1 and /_sim
    app: web.Application

    @property
    def sim(self) -> Simulator:
        """Direct access to the state, faults and deliverer (same event loop, no HTTP)."""
        return self.app[SIM]

    def state(self) -> dict[str, Any]:
        return self.sim.state()


@contextlib.asynccontextmanager
async def running_simulator(config: SimConfig | None = None, *, host: str = "127.0.0.1",
                            port: int = 0) -> AsyncIterator[RunningSimulator]:
    app = create_app(config)
    async with serve_on_loopback(app, host, port) as url:
        yield RunningSimulator(url=url, app=app)
