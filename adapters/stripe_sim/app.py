"""The application factory: the simulator's state under one app key, its background work
(webhook delivery, delayed settlements) started and stopped in a cleanup context."""

from __future__ import annotations

from typing import AsyncIterator

from aiohttp import web

from adapters.simkit import control_routes
from adapters.stripe_sim import api, control
from adapters.stripe_sim.config import SimConfig
from adapters.stripe_sim.simulator import SIM, Simulator


async def _background(app: web.Application) -> AsyncIterator[None]:
    sim = app[SIM]
    await sim.start()
    yield
    await sim.stop()


async def _release_held_answers(app: web.Application) -> None:
    # on_shutdown runs before the server waits for open handlers: a held answer must not delay stopping.
    app[SIM].closing.set()


def create_app(config: SimConfig | None = None) -> web.Application:
    app = web.Application(middlewares=[api.stripe_protocol, control.control_errors])
    app[SIM] = Simulator(config or SimConfig())
    app.cleanup_ctx.append(_background)
    app.on_shutdown.append(_release_held_answers)
    app.add_routes(api.routes)
    app.add_routes(control.routes)
    app.add_routes(control_routes(SIM))
    return app
