"""Disputes from the Stripe-like simulator's webhooks: a dispute opened refuses new refunds and holds
an unsent one; lost, the payment's balance is charged back; won, the held refund goes to Stripe."""

from __future__ import annotations

import pytest

from tests.conftest import ADMIN_KEY, eventually
from tests.e2e.test_stripe_flow import StripeWorld, stripe_world


@pytest.fixture
async def stripe(database_url):
    """Retries of a refund Stripe rate-limits are far apart: it stays unsent while a test looks."""
    async with stripe_world(database_url, retry_max_attempts=2, retry_max_seconds=1.0,
                            durable_retry_initial_seconds=30, durable_retry_max_seconds=60) as world:
        yield world


async def _payment(stripe: StripeWorld, amount: int) -> tuple[dict, dict]:
    charge = await stripe.charge(amount)
    tx = await stripe.api.transaction(amount=amount, psp_reference=charge["id"], processor="stripe")
    return charge, tx


async def _unsent_refund(stripe: StripeWorld, tx: dict, amount: int) -> dict:
    await stripe.faults({"rate_limit": {"count": 1_000, "path": "/v1/refunds", "method": "POST"}})
    resp = await stripe.api.post("/v1/refunds", {"invoice_id": tx["invoice_id"], "transaction_id": tx["id"],
                                                 "currency": tx["currency"], "amount": amount})
    refund = await resp.json()
    assert (refund["status"], refund["stage"]) == ("pending", "not_sent"), refund
    await stripe.control.delete("/_sim/faults")
    return refund


async def _dispute(stripe: StripeWorld, charge: dict, **body) -> dict:
    resp = await stripe.control.post(f"/_sim/charges/{charge['id']}/dispute", json=body)
    assert resp.status_code == 200, resp.text
    return resp.json()


async def _close(stripe: StripeWorld, dispute: dict, outcome: str) -> None:
    resp = await stripe.control.post(f"/_sim/disputes/{dispute['id']}/close", json={"outcome": outcome})
    assert resp.status_code == 200, resp.text
    await stripe.settled()


async def _gateway_dispute(stripe: StripeWorld, psp_dispute_id: str, status: str) -> dict:
    async def found():
        listed = (await (await stripe.api.get("/admin/disputes", key=ADMIN_KEY)).json())["data"]
        return next((d for d in listed if d["psp_dispute_id"] == psp_dispute_id and d["status"] == status), None)
    return await eventually(found)





async def test_a_lost_dispute_refuses_and_holds_refunds_then_charges_the_payment_back(stripe):
    charge, tx = await _payment(stripe, 5_000)
    waiting = await _unsent_refund(stripe, tx, 1_000)
    dispute = await _dispute(stripe, charge, amount=3_000, reason="fraudulent")
    await stripe.settled()
    ours = await _gateway_dispute(stripe, dispute["id"], "open")
    assert (ours["transaction_id"], ours["amount"]) == (tx["id"], 3_000)

    held = await stripe.refund_state(waiting["id"])
    assert (held["stage"], held["failure_code"]) == ("not_sent", "payment_disputed")
    refused = await stripe.api.post("/v1/refunds", {"invoice_id": tx["invoice_id"], "transaction_id": tx["id"],
                                                    "currency": tx["currency"], "amount": 500})
    assert refused.status == 409 and (await refused.json())["code"] == "payment_disputed"

    await _close(stripe, dispute, "lost")
    await _gateway_dispute(stripe, dispute["id"], "lost")
    payment = await (await stripe.api.get(f"/v1/transactions/{tx['id']}")).json()
    assert (payment["charged_back_amount"], payment["refundable_amount"]) == (3_000, 5_000 - 3_000 - 1_000)
    assert (await stripe.refund_state(waiting["id"]))["failure_code"] == "payment_charged_back"
    state = await stripe.state()
    [at_stripe] = [c for c in state["charges"] if c["id"] == charge["id"]]
    assert at_stripe["amount_refunded"] == 0  # nothing was sent while the payment was disputed


async def test_a_won_dispute_releases_the_held_refund_to_stripe(stripe):
    charge, tx = await _payment(stripe, 4_000)
    waiting = await _unsent_refund(stripe, tx, 1_500)
    dispute = await _dispute(stripe, charge)
    await stripe.settled()
    await _gateway_dispute(stripe, dispute["id"], "open")
    await _close(stripe, dispute, "won")
    await _gateway_dispute(stripe, dispute["id"], "won")

    async def sent():
        refund = await stripe.refund_state(waiting["id"])
        return refund if refund["status"] == "succeeded" else None
    await eventually(sent, timeout=20)
    state = await stripe.state()
    [at_stripe] = [c for c in state["charges"] if c["id"] == charge["id"]]
    assert at_stripe["amount_refunded"] == 1_500
