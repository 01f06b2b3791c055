"""A stateful Stripe-like processor simulator: Stripe's REST protocol for charges, payment intents,
refunds and disputes, its idempotency and webhooks, plus fault injection, on a loopback port.

Run it with `python -m adapters.stripe_sim --port 12111 --webhook-url ... --webhook-secret whsec_...`,
or in-process with `async with running_simulator(SimConfig(...)) as sim:` (then `sim.url`). Stripe's
API is under /v1; the control API for tests and chaos runs is under /_sim (see control.py).
"""

from adapters.stripe_sim.app import create_app
from adapters.stripe_sim.config import SimConfig
from adapters.stripe_sim.testing import RunningSimulator, running_simulator
from adapters.stripe_sim.webhooks import sign

__all__ = ["RunningSimulator", "SimConfig", "create_app", "running_simulator", "sign"]
