"""End to end over loopback: the gateway's HTTP server, the Stripe-like adapter and the
Stripe-like simulator, whose signed webhooks reach the gateway's webhook endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator

import httpx
import orjson
import pytest

from adapters.simkit import serve_on_loopback
from adapters.stripe.transformers import signature_header
from adapters.stripe_sim import SimConfig
from adapters.stripe_sim.testing import RunningSimulator, running_simulator
from gateway import callbacks, keys
from tests.conftest import Api, eventually, make_settings, start_api
from tests.e2e.test_callbacks import SECRET as CALLBACK_SECRET
from tests.e2e.test_callbacks import BillingCore, valid_signature

SIM_KEY = "sk_test_sim_e2e_0123"
WHSEC = "whsec_e2e_0123456789"


@dataclass
class StripeWorld:
    api: Api
    sim: RunningSimulator
    control: httpx.AsyncClient  # the simulator's /v1 (as a processor client) and /_sim

    async def charge(self, amount: int, invoice_id: str | None = None, currency: str = "eur") -> dict:
        form = {"amount": str(amount), "currency": currency}
        if invoice_id:
            form["metadata[invoice_id]"] = invoice_id
        resp = await self.control.post("/v1/charges", data=form)
        assert resp.status_code == 200, resp.text
        return resp.json()

    async def faults(self, body: dict[str, Any]) -> None:
        resp = await self.control.post("/_sim/faults", json=body)
        assert resp.status_code == 200, resp.text

    async def flush(self) -> None:
        resp = await self.control.post("/_sim/webhooks/flush", json={"timeout_seconds": 20})
        assert resp.json()["done"], resp.text

    async def state(self) -> dict:
        return (await self.control.get("/_sim/state")).json()

    async def transaction_for(self, invoice_id: str) -> dict:
        async def registered():
            body = await (await self.api.get("/v1/transactions", params={"invoice_id": invoice_id})).json()
            return body["data"][0] if body["data"] else None
        return await eventually(registered)

    async def refund_state(self, refund_id: str) -> dict:
        return await (await self.api.get(f"/v1/refunds/{refund_id}")).json()

    async def settled(self) -> None:
        """Wait until every delivered webhook has been applied by the gateway."""
        await self.flush()
        async def inbox_empty():
            async with self.api.app[keys.POOL].acquire() as conn:
                left = await conn.fetchval("SELECT count(*) FROM webhook_events WHERE status IN ('received', 'failed')")
            return left == 0 or None
        await eventually(inbox_empty)


@contextlib.asynccontextmanager
async def stripe_world(database_url: str, **overrides) -> AsyncIterator[StripeWorld]:
    config = SimConfig(api_key=SIM_KEY, webhook_secrets=[WHSEC], seed=7, delivery_initial_backoff_seconds=0.05,
                       delivery_max_backoff_seconds=0.2)
    async with running_simulator(config) as sim:
        settings = make_settings(database_url, processors=[
            {"id": "stripe", "kind": "stripe", "base_url": sim.url, "api_key": SIM_KEY, "webhook_secrets": [WHSEC],
             "timeout_seconds": 0.5}],
            **{"webhook_poll_seconds": 0.1, "retry_max_attempts": 6, "retry_max_seconds": 8.0, **overrides})
        client = await start_api(settings)
        control = httpx.AsyncClient(base_url=sim.url, headers={"Authorization": f"Bearer {SIM_KEY}"}, timeout=30)
        try:
            resp = await control.post("/_sim/webhooks/endpoint", json={
                "url": str(client.server.make_url("/v1/webhooks/stripe")), "secrets": [WHSEC]})
            assert resp.status_code == 200, resp.text
            yield StripeWorld(Api(client), sim, control)
        finally:
            await control.aclose()
            await client.close()


@pytest.fixture
async def stripe(database_url):
    async with stripe_world(database_url) as world:
        yield world


@pytest.fixture
async def stripe_webhooks_only(database_url):
    """The gateway never polls a refund pending at Stripe (a first check an hour away): only
    Stripe's webhooks can move it."""
    async with stripe_world(database_url, pending_poll_seconds=3600) as world:
        yield world


async def _refund(world: StripeWorld, tx: dict, amount: int | None = None, **extra) -> dict:
    body = {"invoice_id": tx["invoice_id"], "transaction_id": tx["id"], "currency": tx["currency"], **extra}
    if amount is not None:
        body["amount"] = amount
    resp = await world.api.post("/v1/refunds", body)
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def test_charge_webhook_registers_the_payment_and_two_partial_refunds_are_confirmed(stripe):
    charge = await stripe.charge(10_000, invoice_id="INV-S1")
    tx = await stripe.transaction_for("INV-S1")
    assert (tx["psp_reference"], tx["amount"], tx["currency"], tx["processor"]) == (charge["id"], 10_000, "EUR",
                                                                                   "stripe")
    first = await _refund(stripe, tx, 3_000, credit_note_id="CN-1", reason="requested_by_customer")
    second = await _refund(stripe, tx, 2_000, credit_note_id="CN-2", reason="product_unsatisfactory")
    assert first["status"] == second["status"] == "succeeded"
    assert first["psp_refund_id"].startswith("re_")
    await stripe.settled()
    state = await stripe.state()
    [sim_charge] = [c for c in state["charges"] if c["id"] == charge["id"]]
    assert sim_charge["amount_refunded"] == 5_000 and sim_charge["refund_executions"] == 2
    refunds = {r["metadata"]["refund_id"]: r for r in sim_charge["refunds"]["data"]}
    assert refunds[first["id"]]["metadata"]["credit_note_id"] == "CN-1"
    assert refunds[second["id"]]["reason"] == "requested_by_customer"
    body = await (await stripe.api.get(f"/v1/transactions/{tx['id']}")).json()
    assert (body["refunded_amount"], body["reserved_amount"], body["refundable_amount"]) == (5_000, 0, 5_000)
    async with stripe.api.app[keys.POOL].acquire() as conn:
        statuses = await conn.fetch("SELECT event_type, status FROM webhook_events ORDER BY id")
    assert {r["event_type"] for r in statuses} >= {"charge.succeeded", "refund.created", "charge.refunded"}
    assert {r["status"] for r in statuses} == {"applied"}


async def test_billing_core_registers_a_payment_refunds_it_in_two_parts_and_stripes_webhooks_confirm_them(
        stripe_webhooks_only):
    stripe = stripe_webhooks_only
    charge = await stripe.charge(10_000)  # no invoice in its metadata: the billing core registers it
    resp = await stripe.api.post("/v1/transactions", {"processor": "stripe", "psp_reference": charge["id"],
                                                      "invoice_id": "INV-S2", "amount": 10_000, "currency": "EUR"})
    assert resp.status == 201, await resp.text()
    tx = await resp.json()
    # Stripe accepts each refund as pending; only its later webhooks say how they ended.
    await stripe.control.post("/_sim/refunds/behaviour", json={"status": "pending"})
    first = await _refund(stripe, tx, 3_000, credit_note_id="CN-1")
    second = await _refund(stripe, tx, 2_000, credit_note_id="CN-2")
    assert [(r["status"], r["stage"]) for r in (first, second)] == [("pending", "pending_at_processor")] * 2
    await stripe.settled()  # refund.created and charge.refunded, both still pending
    assert [(r["status"], r["stage"]) for r in [await stripe.refund_state(first["id"]),
                                                await stripe.refund_state(second["id"])]] == [
        ("pending", "pending_at_processor")] * 2
    body = await (await stripe.api.get(f"/v1/transactions/{tx['id']}")).json()
    assert (body["refunded_amount"], body["reserved_amount"], body["refundable_amount"]) == (0, 5_000, 5_000)

    settled = await stripe.control.post("/_sim/refunds/settle", json={"outcome": "succeeded"})
    assert len(settled.json()["settled"]) == 2
    await stripe.settled()
    for refund in (first, second):
        state = await stripe.refund_state(refund["id"])
        assert (state["status"], state["stage"], state["amount"]) == ("succeeded", "done", refund["amount"])
    async with stripe.api.app[keys.POOL].acquire() as conn:
        moved_by = await conn.fetch("SELECT DISTINCT event FROM refund_events WHERE refund_id = ANY($1::text[]) "
                                    "AND to_status = 'succeeded'", [first["id"], second["id"]])
    assert {r["event"] for r in moved_by} <= {"webhook:refund.updated", "webhook:charge.refund.updated"}
    body = await (await stripe.api.get(f"/v1/transactions/{tx['id']}")).json()
    assert (body["refunded_amount"], body["reserved_amount"], body["refundable_amount"]) == (5_000, 0, 5_000)
    [sim_charge] = [c for c in (await stripe.state())["charges"] if c["id"] == charge["id"]]
    assert (sim_charge["amount_refunded"], sim_charge["refund_executions"]) == (5_000, 2)
    assert {r["status"] for r in sim_charge["refunds"]["data"]} == {"succeeded"}


async def test_payment_intent_announced_by_both_its_webhooks_is_one_transaction_refundable_by_invoice(stripe):
    resp = await stripe.control.post("/v1/payment_intents", data={
        "amount": "8000", "currency": "eur", "confirm": "true", "metadata[invoice_id]": "INV-PI"})
    intent = resp.json()
    await stripe.settled()  # charge.succeeded and payment_intent.succeeded, both applied
    async with stripe.api.app[keys.POOL].acquire() as conn:
        applied = await conn.fetch("SELECT event_type, status FROM webhook_events")
    assert {(r["event_type"], r["status"]) for r in applied} == {("charge.succeeded", "applied"),
                                                                 ("payment_intent.succeeded", "applied")}
    listed = await (await stripe.api.get("/v1/transactions", params={"invoice_id": "INV-PI"})).json()
    [tx] = listed["data"]
    assert tx["psp_reference"] in (intent["id"], intent["latest_charge"]) and tx["amount"] == 8_000
    # The billing core naming the payment by either id gets that transaction back.
    for reference in (intent["id"], intent["latest_charge"]):
        again = await stripe.api.post("/v1/transactions", {"processor": "stripe", "psp_reference": reference,
                                                           "invoice_id": "INV-PI", "amount": 8_000,
                                                           "currency": "EUR", "metadata": {"invoice_id": "INV-PI"}})
        assert again.status == 200, await again.text()
        assert (await again.json())["id"] == tx["id"]

    resp = await stripe.api.post("/v1/refunds", {"invoice_id": "INV-PI", "amount": 3_000, "currency": "EUR"})
    assert resp.status == 201, await resp.text()
    refund = await resp.json()
    assert (refund["transaction_id"], refund["status"]) == (tx["id"], "succeeded")
    await stripe.settled()  # the refund's webhooks name the charge and the payment intent
    body = await (await stripe.api.get(f"/v1/transactions/{tx['id']}")).json()
    assert (body["refunded_amount"], body["refundable_amount"]) == (3_000, 5_000)
    listed = await (await stripe.api.get("/v1/refunds", params={"invoice_id": "INV-PI"})).json()
    assert [r["id"] for r in listed["data"]] == [refund["id"]]
    assert (await stripe.state())["refund_executions"] == {intent["latest_charge"]: 1}


async def test_payment_registered_by_the_billing_core_matches_refund_webhooks_by_our_metadata(stripe):
    charge = await stripe.charge(4_000)
    tx = await stripe.api.transaction(amount=4_000, psp_reference=charge["id"], processor="stripe")
    refund = await _refund(stripe, tx)
    assert refund["amount"] == 4_000 and refund["status"] == "succeeded"
    await stripe.settled()
    assert (await (await stripe.api.get(f"/v1/transactions/{tx['id']}")).json())["refundable_amount"] == 0
    over = await stripe.api.post("/v1/refunds", {"invoice_id": tx["invoice_id"], "amount": 1, "currency": "EUR"})
    assert over.status == 422


async def test_payment_intent_reference_is_refunded_through_payment_intent(stripe):
    resp = await stripe.control.post("/v1/payment_intents", data={"amount": "2500", "currency": "usd",
                                                                  "confirm": "true"})
    intent = resp.json()
    tx = await stripe.api.transaction(amount=2_500, currency="USD", psp_reference=intent["id"], processor="stripe")
    refund = await _refund(stripe, tx, 500)
    assert refund["status"] == "succeeded"
    await stripe.settled()
    assert (await stripe.state())["refund_executions"] == {intent["latest_charge"]: 1}


async def test_stripe_error_fails_the_refund_with_stripes_code_and_releases_the_balance(stripe):
    charge = await stripe.charge(1_000)
    tx = await stripe.api.transaction(amount=1_000, psp_reference=charge["id"], processor="stripe")
    # A refund made at Stripe directly, whose webhook has not arrived: Stripe refuses ours as too large.
    await stripe.control.post("/_sim/webhooks/endpoint", json={"url": None})
    await stripe.control.post("/v1/refunds", data={"charge": charge["id"], "amount": "800"})
    refund = await _refund(stripe, tx, 500)
    assert (refund["status"], refund["failure_code"]) == ("failed", "amount_too_large")
    assert (await (await stripe.api.get(f"/v1/transactions/{tx['id']}")).json())["reserved_amount"] == 0


async def test_refund_stripe_fails_is_failed_with_the_failure_reason(stripe):
    charge = await stripe.charge(1_000)
    tx = await stripe.api.transaction(amount=1_000, psp_reference=charge["id"], processor="stripe")
    await stripe.control.post("/_sim/refunds/behaviour", json={"status": "failed",
                                                               "failure_reason": "expired_or_canceled_card"})
    refund = await _refund(stripe, tx, 400)
    assert (refund["status"], refund["failure_code"]) == ("failed", "expired_or_canceled_card")
    await stripe.settled()
    body = await (await stripe.api.get(f"/v1/transactions/{tx['id']}")).json()
    assert (body["refunded_amount"], body["reserved_amount"]) == (0, 0)


async def test_pending_refund_is_confirmed_by_the_later_webhook(stripe):
    charge = await stripe.charge(3_000)
    tx = await stripe.api.transaction(amount=3_000, psp_reference=charge["id"], processor="stripe")
    await stripe.control.post("/_sim/refunds/behaviour", json={"status": "pending"})
    refund = await _refund(stripe, tx, 1_000)
    assert (refund["status"], refund["stage"]) == ("pending", "pending_at_processor")
    await stripe.control.post("/_sim/refunds/settle", json={"outcome": "succeeded"})
    await stripe.settled()
    refund = await stripe.refund_state(refund["id"])
    assert (refund["status"], refund["stage"]) == ("succeeded", "done")


async def test_refund_that_fails_after_succeeding_is_a_visible_reversal(stripe):
    charge = await stripe.charge(3_000)
    tx = await stripe.api.transaction(amount=3_000, psp_reference=charge["id"], processor="stripe")
    refund = await _refund(stripe, tx, 1_200)
    assert refund["status"] == "succeeded"
    await stripe.control.post(f"/_sim/refunds/{refund['psp_refund_id']}/fail",
                              json={"failure_reason": "expired_or_canceled_card"})
    await stripe.settled()
    refund = await stripe.refund_state(refund["id"])
    assert (refund["status"], refund["failure_code"]) == ("failed", "expired_or_canceled_card")
    body = await (await stripe.api.get(f"/v1/transactions/{tx['id']}")).json()
    assert (body["refunded_amount"], body["refundable_amount"]) == (0, 3_000)
    async with stripe.api.app[keys.POOL].acquire() as conn:
        events = await conn.fetch("SELECT from_status, to_status FROM refund_events WHERE refund_id = $1 ORDER BY id",
                                  refund["id"])
    assert ("succeeded", "failed") in [(e["from_status"], e["to_status"]) for e in events]
    assert refund["reversed_at"] is not None
    # The billing core is told in so many words: it has to take back what it recorded as refunded.
    told = [e for e in await _callbacks_delivered(stripe.api) if e["refund_id"] == refund["id"]]
    assert [e["type"] for e in told] == ["refund.created", "refund.succeeded", "refund.reversed"]
    assert (told[-1]["previous_status"], told[-1]["data"]["status"], told[-1]["data"]["failure_code"]) == (
        "succeeded", "failed", "expired_or_canceled_card")
    assert told[-1]["data"]["reversed_at"] is not None and told[1]["data"]["reversed_at"] is None


async def _callbacks_delivered(api: Api) -> list[dict]:
    """Every event in the outbox as a billing core receives it: POSTed by the gateway's dispatcher
    to an endpoint on loopback, each signed."""
    core = BillingCore(failures=0)
    async with serve_on_loopback(core.app) as url, httpx.AsyncClient(timeout=10) as http:
        while await callbacks.dispatch_due(api.app[keys.POOL], http, f"{url}/callbacks",
                                           [CALLBACK_SECRET.encode()], initial_backoff=0.05, max_backoff=0.2):
            pass
    assert all(valid_signature(headers[callbacks.SIGNATURE_HEADER], body, CALLBACK_SECRET)
               for _, headers, body in core.received)
    return [event for event, _, _ in core.received]


def _stripe_refund_event(event_type: str, refund: dict, charge: dict, status: str, created: int) -> bytes:
    """A Stripe event about our refund, as Stripe would send it, stamped `created` (unix seconds)."""
    return orjson.dumps({
        "id": f"evt_{uuid.uuid4().hex[:24]}", "object": "event", "type": event_type, "created": created,
        "livemode": False, "data": {"object": {
            "id": refund["psp_refund_id"], "object": "refund", "amount": refund["amount"], "currency": "eur",
            "charge": charge["id"], "status": status, "metadata": {"refund_id": refund["id"]}}}})


async def _deliver_in_order(stripe: StripeWorld, *bodies: bytes) -> None:
    """Each event signed and POSTed to the gateway, and applied, before the next is sent."""
    for body in bodies:
        resp = await stripe.api.post("/v1/webhooks/stripe", data=body, key=None, headers={
            "Content-Type": "application/json",
            "Stripe-Signature": signature_header(body, [WHSEC.encode()], int(time.time()))})
        assert resp.status == 200, await resp.text()
        await stripe.settled()


async def _pending_refund_without_stripes_webhooks(stripe: StripeWorld) -> tuple[dict, dict]:
    """A refund Stripe reports pending; Stripe's own webhooks are off: the test sends them."""
    await stripe.control.post("/_sim/webhooks/endpoint", json={"url": None})
    charge = await stripe.charge(3_000)
    tx = await stripe.api.transaction(amount=3_000, psp_reference=charge["id"], processor="stripe")
    await stripe.control.post("/_sim/refunds/behaviour", json={"status": "pending"})
    refund = await _refund(stripe, tx, 1_000)
    assert (refund["status"], refund["stage"]) == ("pending", "pending_at_processor")
    return charge, refund


async def test_stale_pending_snapshot_delivered_after_success_leaves_the_refund_succeeded(stripe):
    charge, refund = await _pending_refund_without_stripes_webhooks(stripe)
    t = int(time.time())

    await _deliver_in_order(stripe, _stripe_refund_event("refund.updated", refund, charge, "succeeded", t + 2),
                            _stripe_refund_event("refund.created", refund, charge, "pending", t + 1))

    now = await stripe.refund_state(refund["id"])
    assert (now["status"], now["stage"]) == ("succeeded", "done")
    body = await (await stripe.api.get(f"/v1/transactions/{refund['transaction_id']}")).json()
    assert (body["refunded_amount"], body["reserved_amount"]) == (1_000, 0)
    async with stripe.api.app[keys.POOL].acquire() as conn:
        applied_at = await conn.fetchval("SELECT processor_snapshot_at FROM refunds WHERE id = $1", refund["id"])
    assert applied_at.timestamp() == t + 2


async def test_stale_pending_snapshot_delivered_after_requires_action_keeps_the_refund_needing_attention(stripe):
    charge, refund = await _pending_refund_without_stripes_webhooks(stripe)
    t = int(time.time())

    await _deliver_in_order(stripe, _stripe_refund_event("refund.updated", refund, charge, "requires_action", t + 2),
                            _stripe_refund_event("refund.created", refund, charge, "pending", t + 1))

    now = await stripe.refund_state(refund["id"])
    assert now["status"] == "requires_attention"  # the older pending snapshot was skipped
    told = [e["type"] for e in await _callbacks_delivered(stripe.api) if e["refund_id"] == refund["id"]]
    assert told == ["refund.created", "refund.updated", "refund.requires_attention"]  # nothing for the stale one

    # A newer snapshot does move it.
    await _deliver_in_order(stripe, _stripe_refund_event("refund.updated", refund, charge, "pending", t + 3))
    now = await stripe.refund_state(refund["id"])
    assert (now["status"], now["stage"]) == ("pending", "pending_at_processor")


async def test_refund_made_in_the_dashboard_is_recorded_against_its_transaction(stripe):
    charge = await stripe.charge(5_000, invoice_id="INV-DASH")
    tx = await stripe.transaction_for("INV-DASH")
    await stripe.control.post("/v1/refunds", data={"charge": charge["id"], "amount": "1500"})
    await stripe.settled()
    body = await (await stripe.api.get(f"/v1/transactions/{tx['id']}")).json()
    assert (body["refunded_amount"], body["refundable_amount"]) == (1_500, 3_500)
    listed = await (await stripe.api.get("/v1/refunds", params={"invoice_id": "INV-DASH"})).json()
    [external] = listed["data"]
    assert (external["amount"], external["status"]) == (1_500, "succeeded")


async def test_webhook_for_an_unknown_payment_is_parked_and_applied_when_the_payment_appears(stripe):
    charge = await stripe.charge(6_000)  # no invoice in metadata: the gateway cannot register it by itself
    await stripe.control.post("/v1/refunds", data={"charge": charge["id"], "amount": "1000"})
    await stripe.settled()
    async with stripe.api.app[keys.POOL].acquire() as conn:
        parked = await conn.fetchval("SELECT count(*) FROM webhook_events WHERE status = 'unmatched'")
    assert parked >= 1
    tx = await stripe.api.transaction(amount=6_000, psp_reference=charge["id"], processor="stripe")

    async def applied():
        body = await (await stripe.api.get(f"/v1/transactions/{tx['id']}")).json()
        return body["refunded_amount"] == 1_000
    await eventually(applied)
    await stripe.settled()
    body = await (await stripe.api.get(f"/v1/transactions/{tx['id']}")).json()
    assert body["refunded_amount"] == 1_000  # applied once, though several events named it


async def test_webhook_with_a_bad_signature_is_rejected_and_nothing_is_stored(stripe):
    body = b'{"id": "evt_forged", "type": "refund.updated", "data": {"object": {}}}'
    resp = await stripe.api.post("/v1/webhooks/stripe", data=body, key=None, headers={
        "Content-Type": "application/json", "Stripe-Signature": "t=1,v1=deadbeef"})
    assert resp.status == 400 and (await resp.json())["code"] == "invalid_signature"
    async with stripe.api.app[keys.POOL].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM webhook_events WHERE event_id = 'evt_forged'") == 0
    resp = await stripe.api.post("/v1/webhooks/nope", data=body, key=None,
                                 headers={"Content-Type": "application/json"})
    assert resp.status == 404


async def test_under_faults_every_refund_ends_once_at_stripe_and_the_totals_agree(stripe):
    """500s, 429s, dropped connections, answers lost after execution, and duplicated, delayed,
    reordered webhooks: at the end Stripe's refunded total per charge equals the gateway's."""
    charges = [await stripe.charge(10_000, invoice_id=f"INV-F{i}") for i in range(4)]
    txs = [await stripe.transaction_for(f"INV-F{i}") for i in range(4)]
    await stripe.faults({
        "api_error": {"probability": 0.15, "path": "/v1/refunds", "method": "POST"},
        "rate_limit": {"probability": 0.1, "retry_after": 0.05, "path": "/v1/refunds", "method": "POST"},
        "drop": {"probability": 0.1, "path": "/v1/refunds", "method": "POST"},
        "execute_then_drop": {"probability": 0.1, "path": "/v1/refunds", "method": "POST"},
        "execute_then_timeout": {"probability": 0.1, "hold_seconds": 1.0, "path": "/v1/refunds", "method": "POST"},
        "webhooks": {"duplicate_probability": 0.3, "max_delay_ms": 300},
    })
    results = await asyncio.gather(*(_refund(stripe, tx, 700, credit_note_id=f"CN-{n}")
                                     for tx in txs for n in range(5)))
    await stripe.faults({"api_error": None, "rate_limit": None, "drop": None, "execute_then_drop": None,
                         "execute_then_timeout": None})
    await stripe.settled()
    state = await stripe.state()
    finals = []
    for charge, tx in zip(charges, txs):
        [sim_charge] = [c for c in state["charges"] if c["id"] == charge["id"]]
        body = await (await stripe.api.get(f"/v1/transactions/{tx['id']}")).json()
        ours = [await stripe.refund_state(r["id"]) for r in results if r["transaction_id"] == tx["id"]]
        finals.extend(ours)
        succeeded = sum(r["amount"] for r in ours if r["status"] == "succeeded")
        assert sim_charge["amount_refunded"] == succeeded == body["refunded_amount"], (sim_charge, ours)
        assert sim_charge["refund_executions"] == len(sim_charge["refunds"]["data"])
        executed_ids = [r["metadata"]["refund_id"] for r in sim_charge["refunds"]["data"]]
        assert len(executed_ids) == len(set(executed_ids)), "a refund was executed twice at the processor"
        stuck = [r for r in ours if r["status"] not in ("succeeded", "failed")]
        assert all(r["status"] == "requires_attention" and r["failure_code"] for r in stuck)
    # Retries and look-ups get most refunds through the faults: totals that agree only because
    # nothing was refunded would prove nothing.
    outcomes = [r["status"] for r in finals]
    assert outcomes.count("succeeded") >= len(outcomes) * 3 // 4, outcomes
    async with stripe.api.app[keys.POOL].acquire() as conn:
        stored = await conn.fetchval("SELECT count(*) FROM webhook_events")
        faulted = await conn.fetch("SELECT DISTINCT processor_code FROM refund_attempts WHERE outcome = 'error'")
    assert stored == len(state["events"])  # every event once, however often it was delivered
    assert {"500", "rate_limit", "no_answer"} <= {r["processor_code"] for r in faulted}  # the faults did happen
    assert sum(1 for d in state["webhook_deliveries"] if d.get("duplicate")) > 0


async def test_a_refund_stripe_holds_for_the_customer_is_canceled_at_stripe_and_released(stripe):
    charge = await stripe.charge(2_000)
    tx = await stripe.api.transaction(amount=2_000, psp_reference=charge["id"], processor="stripe",
                                      invoice_id=f"INV-{uuid.uuid4().hex[:8]}")
    await stripe.faults({"refund_requires_action": {"probability": 1.0, "count": 1}})
    held = await _refund(stripe, tx, 700, credit_note_id="CN-RA")
    assert (held["status"], held["failure_code"], held["next_action"]) == ("requires_attention", "requires_action",
                                                                            "refund_offline")
    resp = await stripe.api.post(f"/v1/refunds/{held['id']}/cancel", {"reason": "customer never answered"})
    assert resp.status == 200, await resp.text()
    canceled = await resp.json()
    assert (canceled["status"], canceled["stage"]) == ("canceled", "done")
    # Stripe's books: the refund is canceled there and no longer counts on the charge.
    [at_stripe] = [c for c in (await stripe.state())["charges"] if c["id"] == charge["id"]]
    assert at_stripe["amount_refunded"] == 0
    assert [r["status"] for r in at_stripe["refunds"]["data"]] == ["canceled"]
    await stripe.settled()  # its webhooks change nothing more
    payment = await (await stripe.api.get(f"/v1/transactions/{tx['id']}")).json()
    assert (payment["reserved_amount"], payment["refunded_amount"]) == (0, 0)
    assert (await stripe.refund_state(held["id"]))["status"] == "canceled"
    # A refund Stripe has carried out cannot be: Stripe refuses, the gateway says so.
    done = await _refund(stripe, tx, 300)
    resp = await stripe.api.post(f"/v1/refunds/{done['id']}/cancel")
    assert resp.status == 409 and (await resp.json())["code"] == "refund_final"
