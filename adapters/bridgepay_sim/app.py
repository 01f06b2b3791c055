"""The application factory: the simulator's state under one app key, held answers released at shutdown."""

from __future__ import annotations

from aiohttp import web

from adapters.bridgepay_sim import api, control
from adapters.bridgepay_sim.config import SimConfig
from adapters.bridgepay_sim.simulator import SIM, Simulator
from adapters.simkit import control_routes


async def _release_held_answers(app: web.Application) -> None:
    # on_shutdown runs before the server waits for open handlers: a held answer must not delay stopping.
    app[SIM].closing.set()


def create_app(config: SimConfig | None = None) -> web.Application:
    app = web.Application(middlewares=[control.control_errors])
    app[SIM] = Simulator(config or SimConfig())
    app.on_shutdown.append(_release_held_answers)
    app.add_routes(api.routes)
    app.add_routes(control.routes)
    app.add_routes(control_routes(SIM))
    return app
