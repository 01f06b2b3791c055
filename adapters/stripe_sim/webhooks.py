"""Webhook delivery as Stripe does it: each event POSTed to the endpoint, signed in
`Stripe-Signature`, retried with exponential backoff while the endpoint fails, and logged."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import orjson

from adapters.stripe_sim.config import SimConfig
from adapters.stripe_sim.faults import Faults


def sign(payload: bytes, secrets: list[str], timestamp: int | None = None) -> str:
    """`t=<unix>,v1=<hex>[,v1=<hex>]`: one v1 per secret, HMAC-SHA256 over `{t}.{raw body}`."""
    t = int(time.time()) if timestamp is None else timestamp
    signed = f"{t}.".encode() + payload
    return ",".join([f"t={t}", *(f"v1={hmac.new(s.encode(), signed, hashlib.sha256).hexdigest()}"
                                for s in secrets)])


@dataclass
class Delivery:
    id: str
    event_id: str
    type: str
    url: str
    duplicate: bool = False  # a second copy sent by the duplicate-delivery fault
    status: str = "queued"  # queued | retrying | delivered | failed | dropped
    attempts: int = 0
    responses: list[int | str] = field(default_factory=list)  # HTTP status, or the connection error's name


class Deliverer:
    """Owns one delivery task per (copy of an) event; `stop` cancels them all and closes the client."""

    def __init__(self, config: SimConfig, faults: Faults):
        self._config = config
        self._client: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._seq = 0
        self.reset(faults)

    def reset(self, faults: Faults) -> None:
        """Forgets the log and in-flight deliveries and goes back to the configured endpoint."""
        for task in self._tasks:
            task.cancel()
        self.faults = faults  # shared with the API: its seeded generator and its webhook switches
        self.url, self.secrets = self._config.webhook_url, list(self._config.webhook_secrets)
        self.log: list[Delivery] = []

    async def start(self) -> None:
        self._client = httpx.AsyncClient(timeout=self._config.delivery_timeout_seconds)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    def enqueue(self, event: dict[str, Any]) -> None:
        if not self.url:
            return
        payload = orjson.dumps(event, option=orjson.OPT_INDENT_2)  # Stripe sends indented JSON
        chaos, rng = self.faults.webhooks, self.faults.rng
        copies = 2 if chaos.duplicate_probability and rng.random() < chaos.duplicate_probability else 1
        dropped = bool(chaos.drop_probability) and rng.random() < chaos.drop_probability
        for copy in range(copies):
            self._seq += 1
            delivery = Delivery(f"whd_{self._seq}", event["id"], event["type"], self.url, duplicate=copy > 0)
            self.log.append(delivery)
            if dropped:
                delivery.status = "dropped"
                continue
            delay = rng.uniform(0, chaos.max_delay_ms) / 1000 if chaos.max_delay_ms else 0.0
            task = asyncio.get_running_loop().create_task(self._deliver(delivery, payload, delay))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(self, delivery: Delivery, payload: bytes, delay: float) -> None:
        assert self._client is not None, "the deliverer is started in the app's cleanup context"
        config = self._config
        await asyncio.sleep(delay)
        for attempt in range(1, config.delivery_max_attempts + 1):
            delivery.attempts = attempt
            headers = {"Content-Type": "application/json; charset=utf-8",
                       "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)"}
            if self.secrets:
                headers["Stripe-Signature"] = sign(payload, self.secrets)  # re-signed per attempt, fresh t
            try:
                response = await self._client.post(delivery.url, content=payload, headers=headers)
                delivery.responses.append(response.status_code)
                if response.is_success:
                    delivery.status = "delivered"
                    return
            except httpx.HTTPError as e:
                delivery.responses.append(type(e).__name__)
            if attempt < config.delivery_max_attempts:
                delivery.status = "retrying"
                await asyncio.sleep(min(config.delivery_initial_backoff_seconds * 2 ** (attempt - 1),
                                        config.delivery_max_backoff_seconds))
        delivery.status = "failed"

    async def flush(self, timeout: float) -> bool:
        """Waits until every queued delivery finished (delivered or out of attempts); False on timeout."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self._tasks:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return False
            await asyncio.wait(set(self._tasks), timeout=remaining)
        return True

    def describe(self) -> list[dict[str, Any]]:
        return [asdict(d) for d in self.log]
