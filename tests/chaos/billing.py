"""The billing core's side of a chaos run: it creates payments at the simulators, registers them,
sends refund commands (duplicates and concurrent ones included) and retries each one with the same
Idempotency-Key until it gets a final answer; and it receives the gateway's callbacks."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from aiohttp import web

from adapters.bridgepay_sim.testing import RunningSimulator as BridgePaySim
from adapters.stripe_sim.testing import RunningSimulator as StripeSim

# Answers the billing core retries (same key, same body): the gateway or its database is away, the
# client is being rate limited, or the first copy of this command is still being worked on.
RETRYABLE_CONFLICTS = {"idempotency_key_in_use"}


@dataclass
class Command:
    """One refund command as the billing core sent it, and the answer it got in the end."""

    transaction_id: str
    body: dict[str, Any]
    key: str
    kind: str  # "partial" | "full" | "same_key" | "same_credit_note"
    status: int | None = None  # None: no final answer before the deadline
    refund_id: str | None = None
    code: str | None = None


@dataclass
class Payment:
    processor: str  # "stripe" | "bridgepay"
    psp_reference: str
    invoice_id: str
    amount: int
    currency: str
    settled: bool
    transaction_id: str | None = None


@dataclass
class BillingCore:
    url: str
    api_key: str
    rng: random.Random
    answer_deadline_seconds: float = 240.0
    counts: Counter[str] = field(default_factory=Counter)
    commands: list[Command] = field(default_factory=list)
    payments: list[Payment] = field(default_factory=list)
    server_errors: list[str] = field(default_factory=list)  # 5xx other than 503: never expected
    in_flight: int = 0  # refund commands sent and not answered yet

    async def __aenter__(self) -> "BillingCore":
        self.http = httpx.AsyncClient(base_url=self.url, timeout=15,
                                      headers={"Authorization": f"Bearer {self.api_key}"},
                                      limits=httpx.Limits(max_connections=64))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    async def post(self, path: str, body: dict[str, Any], key: str) -> httpx.Response | None:
        """POST until a final answer (anything but a transport error, 5xx, 429 or a key in use),
        always with the same Idempotency-Key; None if the deadline passes first."""
        deadline = time.monotonic() + self.answer_deadline_seconds
        delay = 0.1
        while True:
            try:
                resp = await self.http.post(path, json=body, headers={"Idempotency-Key": key})
            except httpx.TransportError as e:
                self.counts[f"retried after {type(e).__name__}"] += 1
            else:
                code = resp.json().get("code") if resp.headers.get("content-type", "").startswith(
                    "application/problem+json") else None
                if resp.status_code < 500 and resp.status_code != 429 and code not in RETRYABLE_CONFLICTS:
                    return resp
                self.counts[f"retried after {resp.status_code}{' ' + code if code else ''}"] += 1
                if resp.status_code >= 500 and resp.status_code != 503:
                    self.server_errors.append(f"{resp.status_code} {code} on POST {path} "
                                              f"(X-Request-ID {resp.headers.get('X-Request-ID')})")
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(delay * (0.5 + self.rng.random()))
            delay = min(delay * 2, 2.0)

    # -- payments ----------------------------------------------------------------------------------

    def stripe_payment(self, sim: StripeSim) -> Payment:
        amount, invoice = self.rng.randrange(2_000, 20_000), f"INV-S-{uuid.uuid4().hex[:12]}"
        charge = sim.sim.world.create_charge(amount, "eur", {"invoice_id": invoice}, None)  # a webhook follows
        return Payment("stripe", charge["id"], invoice, amount, "EUR", settled=False)

    def bridgepay_payment(self, sim: BridgePaySim, settled: bool) -> Payment:
        # Sandbox amounts: 1-499 and 7000 up are declined by the bank, so sales stay below 7000.
        amount, invoice = self.rng.randrange(3_000, 6_900), f"INV-B-{uuid.uuid4().hex[:12]}"
        sale = sim.sim.world.create_sale(amount, invoice_num=invoice, transaction_id="", authorization_code="123456",
                                         card_last4="1111", settled=settled)
        return Payment("bridgepay", sale.gateway_trans_id, invoice, amount, "USD", settled)

    async def register(self, payment: Payment) -> bool:
        body = {"processor": payment.processor, "psp_reference": payment.psp_reference,
                "invoice_id": payment.invoice_id, "amount": payment.amount, "currency": payment.currency,
                "settled": payment.settled}
        if payment.processor == "stripe":
            body["metadata"] = {"invoice_id": payment.invoice_id}  # as the charge.succeeded webhook registers it
        resp = await self.post("/v1/transactions", body, f"tx-{payment.psp_reference}")
        if resp is None or resp.status_code not in (200, 201):
            answer = "no final answer" if resp is None else f"{resp.status_code} {resp.text[:300]}"
            self.counts[f"payments not registered: {answer}"] += 1
            return False
        self.counts["payments registered"] += 1
        payment.transaction_id = resp.json()["id"]
        self.payments.append(payment)
        return True

    # -- refund commands ---------------------------------------------------------------------------

    def plan(self, payment: Payment) -> list[Command]:
        """1 to 4 refunds of the payment (partial, sometimes one for everything left, sometimes one
        a BridgePay sandbox declines), plus duplicates: the same key again, or the same credit note
        under a new key."""
        assert payment.transaction_id is not None
        commands = []
        full_at = self.rng.randrange(4) if self.rng.random() < 0.25 else None
        for n in range(self.rng.randint(1, 4)):
            body: dict[str, Any] = {"invoice_id": payment.invoice_id, "transaction_id": payment.transaction_id,
                                    "currency": payment.currency, "credit_note_id": f"CN-{uuid.uuid4().hex[:12]}"}
            kind = "full"
            if n != full_at:
                kind = "partial"
                body["amount"] = (self.rng.randrange(100, 499) if payment.processor == "bridgepay"
                                  and self.rng.random() < 0.1 else self.rng.randrange(500, payment.amount // 2))
            command = Command(payment.transaction_id, body, str(uuid.uuid4()), kind)
            commands.append(command)
            if self.rng.random() < 0.15:
                commands.append(Command(payment.transaction_id, body, command.key, "same_key"))
            if self.rng.random() < 0.1:
                commands.append(Command(payment.transaction_id, body, str(uuid.uuid4()), "same_credit_note"))
        return commands

    async def refund(self, command: Command) -> None:
        self.commands.append(command)
        self.counts[f"commands ({command.kind})"] += 1
        self.in_flight += 1
        try:
            resp = await self.post("/v1/refunds", command.body, command.key)
        finally:
            self.in_flight -= 1
        if resp is None:
            self.counts["commands without a final answer"] += 1
            return
        command.status = resp.status_code
        payload = resp.json()
        if resp.status_code in (200, 201):
            command.refund_id = payload["id"]
        else:
            command.code = payload.get("code")
        self.counts[f"answers {resp.status_code}{' ' + command.code if command.code else ''}"] += 1

    async def refund_all(self, payment: Payment) -> None:
        commands = self.plan(payment)
        if self.rng.random() < 0.5:  # all at once: concurrent commands on one transaction
            await asyncio.gather(*(self.refund(c) for c in commands))
        else:
            for command in commands:
                await self.refund(command)


class CallbackReceiver:
    """The billing core's callback endpoint: records every (refund, version) it is told about,
    checks each signature, and fails a few deliveries on purpose so the gateway has to retry."""

    def __init__(self, secret: str, rng: random.Random, failure_probability: float):
        self.secret, self.rng, self.failure_probability = secret.encode(), rng, failure_probability
        self.received: dict[str, set[int]] = {}
        self.last_status: dict[str, tuple[int, str]] = {}
        self.bad_signatures = 0
        self.failed_on_purpose = 0
        self.app = web.Application()
        self.app.router.add_post("/callbacks", self.handle)

    def _signed(self, header: str, body: bytes) -> bool:
        parts = [p.split("=", 1) for p in header.split(",") if "=" in p]
        t = next((v for k, v in parts if k == "t"), "")
        expected = hmac.new(self.secret, t.encode() + b"." + body, hashlib.sha256).hexdigest()
        return any(k == "v1" and hmac.compare_digest(v, expected) for k, v in parts)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not self._signed(request.headers.get("Gateway-Signature", ""), body):
            self.bad_signatures += 1
            return web.Response(status=400)
        if self.rng.random() < self.failure_probability:
            self.failed_on_purpose += 1
            return web.Response(status=503)
        event = orjson.loads(body)
        refund_id, version = event["refund_id"], event["version"]
        self.received.setdefault(refund_id, set()).add(version)
        if version >= self.last_status.get(refund_id, (0, ""))[0]:
            self.last_status[refund_id] = (version, event["data"]["status"])
        return web.Response(status=204)
