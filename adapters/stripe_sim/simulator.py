"""The simulator's parts wired together (account state, idempotency, faults, webhook delivery,
the refund behaviour switch), kept under one app key for the route modules."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import string
from typing import Any

from aiohttp import web

from adapters.stripe_sim.config import SimConfig
from adapters.stripe_sim.faults import Faults
from adapters.stripe_sim.idempotency import IdempotencyStore
from adapters.stripe_sim.webhooks import Deliverer
from adapters.stripe_sim.world import Obj, RefundBehaviour, World

_ID_CHARS = string.ascii_letters + string.digits


class Simulator:
    def __init__(self, config: SimConfig):
        self.config = config
        self.closing = asyncio.Event()  # set at shutdown: releases answers a fault is holding back
        self._timers: dict[str, asyncio.TimerHandle] = {}  # refund id -> its delayed settlement
        self.faults = Faults(random.Random(config.seed))
        self.deliverer = Deliverer(config, self.faults)
        self.reset(config.seed)

    def reset(self, seed: int | None = None) -> None:
        """A fresh account: no objects, keys, faults or deliveries; the configured webhook endpoint."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        # Ids draw from their own generator so that fault decisions do not depend on how many ids were made.
        self._ids = random.Random(None if seed is None else f"ids-{seed}")
        self.faults = Faults(random.Random(seed))
        self.deliverer.reset(self.faults)
        self.idempotency = IdempotencyStore(self.config.idempotency_ttl_seconds)
        self.behaviour = RefundBehaviour()
        self.world = World(self.new_id, self.config.api_version, self.deliverer.enqueue)

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_{''.join(self._ids.choices(_ID_CHARS, k=24))}"

    def create_refund(self, *, requires_action: bool = False, **request: Any) -> Obj:
        """`requires_action`: this refund starts in requires_action whatever the behaviour says (a fault)."""
        behaviour = dataclasses.replace(self.behaviour, status="requires_action") if requires_action \
            else self.behaviour
        refund = self.world.create_refund(**request, behaviour=behaviour)
        after = self.behaviour.settle_after_seconds
        if refund["status"] == "pending" and after is not None:
            self._timers[refund["id"]] = asyncio.get_running_loop().call_later(
                after, self._settle_later, refund["id"], self.behaviour.settle_to, self.behaviour.failure_reason)
        return refund

    def _settle_later(self, refund_id: str, to: str, failure_reason: str) -> None:
        self._timers.pop(refund_id, None)
        with contextlib.suppress(ValueError):  # settled or failed by hand meanwhile
            self.world.settle(refund_id, to, failure_reason)

    def settle(self, to: str, failure_reason: str, refund_ids: list[str] | None = None) -> list[Obj]:
        """Settles the given refunds, or every pending one."""
        if refund_ids is None:
            refund_ids = [r["id"] for r in self.world.refunds.values() if r["status"] == "pending"]
        settled = []
        for refund_id in refund_ids:
            if timer := self._timers.pop(refund_id, None):
                timer.cancel()
            settled.append(self.world.settle(refund_id, to, failure_reason))
        return settled

    async def hold(self, seconds: float) -> None:
        """Holds an answer back; shutdown releases it so that stopping never waits for the fault."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.closing.wait(), seconds)

    async def start(self) -> None:
        self.closing.clear()
        await self.deliverer.start()

    async def stop(self) -> None:
        self.closing.set()
        for timer in self._timers.values():
            timer.cancel()
        await self.deliverer.stop()

    def state(self) -> dict[str, Any]:
        return {**self.world.snapshot(),
                "webhook_deliveries": self.deliverer.describe(),
                "webhook_endpoint": {"url": self.deliverer.url, "secrets": len(self.deliverer.secrets)},
                "refund_behaviour": dataclasses.asdict(self.behaviour),
                "faults": self.faults.describe()}


SIM: web.AppKey[Simulator] = web.AppKey("stripe_sim", Simulator)
