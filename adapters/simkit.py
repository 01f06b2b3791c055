"""What the processor simulators share: fault rules that fire by chance and by count, the control
routes every simulator has (state, reset, faults), and serving a simulator in-process on a
loopback port."""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass
from typing import Any, AsyncIterator

from aiohttp import web


@dataclass
class ChanceRule:
    """Fires with `probability` (default 1), at most `count` more times (default unlimited)."""

    probability: float = 1.0
    count: int | None = None

    def __post_init__(self) -> None:
        # Control bodies are JSON from anywhere: a bad value is refused now, not in the middle of a request.
        self.probability = float(self.probability)
        self.count = None if self.count is None else int(self.count)

    def fires(self, rng: random.Random) -> bool:
        if self.count is not None and self.count <= 0:
            return False
        if self.probability < 1.0 and rng.random() >= self.probability:
            return False
        if self.count is not None:
            self.count -= 1
        return True


@contextlib.asynccontextmanager
async def serve_on_loopback(app: web.Application, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve `app` until the block ends; yields its base URL (a free port when `port` is 0)."""
    runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        bound_host, bound_port = runner.addresses[0][:2]
        yield f"http://{bound_host}:{bound_port}"
    finally:
        await runner.cleanup()


async def json_body(request: web.Request) -> dict[str, Any]:
    """A control request's JSON object (empty when there is no body); anything else is a ValueError."""
    body = await request.json() if request.can_read_body else {}
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    return body


def control_routes(sim_key: web.AppKey) -> web.RouteTableDef:
    """GET /_sim/state, POST /_sim/reset and GET|POST|DELETE /_sim/faults for the simulator stored
    under `sim_key` (it has state(), reset(seed), config.seed and faults)."""
    routes = web.RouteTableDef()

    @routes.get("/_sim/state")
    async def state(request: web.Request) -> web.Response:
        return web.json_response(request.app[sim_key].state())

    @routes.post("/_sim/reset")
    async def reset(request: web.Request) -> web.Response:
        """Body (optional): {"seed": 7}; without one the configured seed is used again."""
        sim = request.app[sim_key]
        sim.reset((await json_body(request)).get("seed", sim.config.seed))
        return web.json_response(sim.state())

    @routes.get("/_sim/faults")
    async def get_faults(request: web.Request) -> web.Response:
        return web.json_response(request.app[sim_key].faults.describe())

    @routes.post("/_sim/faults")
    async def set_faults(request: web.Request) -> web.Response:
        """Body: {"<kind>": {rule} | null, ...}; see the simulator's faults.py for the kinds."""
        faults = request.app[sim_key].faults
        faults.configure(await json_body(request))
        return web.json_response(faults.describe())

    @routes.delete("/_sim/faults")
    async def clear_faults(request: web.Request) -> web.Response:
        faults = request.app[sim_key].faults
        faults.clear()
        return web.json_response(faults.describe())

    return routes
