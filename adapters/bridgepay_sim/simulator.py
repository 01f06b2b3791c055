"""The simulator's parts wired together (merchant account, faults, id generators, request counts),
kept under one app key for the route modules."""

from __future__ import annotations

import asyncio
import contextlib
import random
import string
from collections import Counter
from typing import Any

from aiohttp import web

from adapters.bridgepay_sim.config import SimConfig
from adapters.bridgepay_sim.faults import Faults
from adapters.bridgepay_sim.world import World


class Simulator:
    def __init__(self, config: SimConfig):
        self.config = config
        self.closing = asyncio.Event()  # set at shutdown: releases answers a fault is holding back
        self.reset(config.seed)

    def reset(self, seed: int | None = None) -> None:
        """A fresh account: no transactions, faults or counts."""
        # Ids draw from their own generator so that fault decisions do not depend on how many ids were made.
        self._ids = random.Random(None if seed is None else f"ids-{seed}")
        self._next_id = self._ids.randint(100_000_000, 799_999_999)
        self.faults = Faults(random.Random(seed))
        self.world = World(self.new_gateway_id)
        self.counts: Counter[str] = Counter()

    def new_gateway_id(self) -> str:
        """A new GatewayTransID: numeric, unique, increasing like the real ones."""
        self._next_id += self._ids.randint(1, 9)
        return str(self._next_id)

    def new_authorization_code(self) -> str:
        return "".join(self._ids.choices(string.ascii_uppercase + string.digits, k=6))

    async def hold(self, seconds: float) -> None:
        """Holds an answer back; shutdown releases it so that stopping never waits for the fault."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.closing.wait(), seconds)

    def state(self) -> dict[str, Any]:
        return {**self.world.snapshot(), "counts": dict(sorted(self.counts.items())),
                "faults": self.faults.describe(), "faults_fired": dict(self.faults.fired_counts),
                "sandbox_amounts": self.config.sandbox_amounts}


SIM: web.AppKey[Simulator] = web.AppKey("bridgepay_sim", Simulator)
