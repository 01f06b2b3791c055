"""Disputes in the Stripe simulator: POST /_sim/charges/{id}/dispute and /_sim/disputes/{id}/close send
Stripe's charge.dispute.* events through its signed webhook delivery, and a refund of the disputed charge
is refused with charge_disputed until the dispute is won. Webhooks land on a receiver on loopback."""

from __future__ import annotations

import httpx
import orjson
import pytest
import stripe

from adapters.stripe.transformers import parse_event
# The simulator, its webhook receiver and a client, as the simulator's own tests build them.
from tests.simulators.test_stripe_sim import SECRET, Receiver, client, receiver, sim  # noqa: F401  (fixtures)


async def create_charge(client: httpx.AsyncClient, amount: int = 5000) -> dict:
    resp = await client.post("/v1/charges", data={"amount": amount, "currency": "EUR"})
    assert resp.status_code == 200, resp.text
    return resp.json()


async def create_payment_intent(client: httpx.AsyncClient, amount: int = 5000) -> dict:
    resp = await client.post("/v1/payment_intents", data={"amount": amount, "currency": "EUR"})
    assert resp.status_code == 200, resp.text
    return resp.json()


async def dispute(client: httpx.AsyncClient, charge_id: str, **body) -> dict:
    resp = await client.post(f"/_sim/charges/{charge_id}/dispute", json=body)
    assert resp.status_code == 200, resp.text
    return resp.json()


async def close(client: httpx.AsyncClient, dispute_id: str, outcome: str) -> dict:
    resp = await client.post(f"/_sim/disputes/{dispute_id}/close", json={"outcome": outcome})
    assert resp.status_code == 200, resp.text
    return resp.json()


async def flush(client: httpx.AsyncClient) -> None:
    flushed = (await client.post("/_sim/webhooks/flush", json={"timeout_seconds": 5})).json()
    assert flushed["done"] and all(d["status"] == "delivered" for d in flushed["deliveries"]), flushed


async def state(client: httpx.AsyncClient) -> dict:
    return (await client.get("/_sim/state")).json()


async def dispute_events(client: httpx.AsyncClient, receiver: Receiver, dispute_id: str) -> list[dict]:
    """The dispute's events the receiver got, in the order the simulator sent them (delivery itself is
    concurrent, as at Stripe: two events of one call may arrive either way round)."""
    sent = [e["id"] for e in (await state(client))["events"] if e["object"] == dispute_id]
    got = {e["id"]: e for e in receiver.events() if e["data"]["object"]["id"] == dispute_id}
    assert set(got) == set(sent), (sent, got)
    return [got[event_id] for event_id in sent]


async def refund(client: httpx.AsyncClient, **params) -> httpx.Response:
    return await client.post("/v1/refunds", data=params)


# -- events -----------------------------------------------------------------------------------------------

async def test_opening_a_dispute_withdraws_its_amount_and_sends_created_then_funds_withdrawn(client, receiver):
    charge = await create_charge(client, 5000)
    await flush(client)

    opened = await dispute(client, charge["id"], amount=3000, reason="fraudulent")
    await flush(client)

    assert opened["id"].startswith("dp_") and opened["object"] == "dispute"
    assert (opened["charge"], opened["payment_intent"], opened["amount"], opened["currency"]) == \
        (charge["id"], None, 3000, "eur")
    assert (opened["status"], opened["reason"], opened["is_charge_refundable"]) == ("needs_response", "fraudulent",
                                                                                    False)
    assert [t["amount"] for t in opened["balance_transactions"]] == [-3000]
    events = await dispute_events(client, receiver, opened["id"])
    assert [e["type"] for e in events] == ["charge.dispute.created", "charge.dispute.funds_withdrawn"]
    for headers, body in receiver.delivered():  # signed as Stripe signs, by the official package's check
        stripe.Webhook.construct_event(body.decode(), headers["Stripe-Signature"], SECRET)
    parsed = [parse_event(orjson.dumps(e)).disputes for e in events]
    assert [(d.psp_dispute_id, d.payment_references, d.amount, d.currency, d.status, d.funds_withdrawn, d.reason)
            for [d] in parsed] == [(opened["id"], [charge["id"]], 3000, "EUR", "open", True, "fraudulent")] * 2


async def test_a_dispute_defaults_to_the_charges_whole_amount_and_names_its_payment_intent(client):
    intent = await create_payment_intent(client, 4200)

    opened = await dispute(client, intent["latest_charge"])

    assert (opened["amount"], opened["reason"], opened["payment_intent"]) == (4200, "general", intent["id"])
    charge = (await client.get(f"/v1/charges/{intent['latest_charge']}")).json()
    assert charge["disputed"] is True


async def test_a_won_dispute_sends_closed_then_funds_reinstated_after_the_opening_events(client, receiver):
    charge = await create_charge(client, 5000)
    opened = await dispute(client, charge["id"])
    await flush(client)

    won = await close(client, opened["id"], "won")
    await flush(client)

    assert (won["status"], won["is_charge_refundable"]) == ("won", True)
    assert [t["amount"] for t in won["balance_transactions"]] == [-5000, 5000]
    events = await dispute_events(client, receiver, opened["id"])
    assert [e["type"] for e in events] == ["charge.dispute.created", "charge.dispute.funds_withdrawn",
                                           "charge.dispute.closed", "charge.dispute.funds_reinstated"]
    assert [(d.status, d.funds_withdrawn) for e in events[2:] for d in parse_event(orjson.dumps(e)).disputes] == \
        [("won", False), ("won", False)]


async def test_a_lost_dispute_sends_closed_only_and_keeps_the_funds_withdrawn(client, receiver):
    charge = await create_charge(client, 5000)
    opened = await dispute(client, charge["id"])
    await flush(client)

    lost = await close(client, opened["id"], "lost")
    await flush(client)

    assert (lost["status"], lost["is_charge_refundable"]) == ("lost", False)
    events = await dispute_events(client, receiver, opened["id"])
    assert [e["type"] for e in events] == ["charge.dispute.created", "charge.dispute.funds_withdrawn",
                                           "charge.dispute.closed"]
    [closed] = parse_event(orjson.dumps(events[-1])).disputes
    assert (closed.status, closed.funds_withdrawn) == ("lost", True)


# -- refunds of a disputed charge -------------------------------------------------------------------------

async def test_refund_of_a_disputed_charge_is_refused_while_open_and_allowed_once_won(client):
    charge = await create_charge(client, 5000)
    opened = await dispute(client, charge["id"], amount=2000)

    refused = await refund(client, charge=charge["id"], amount=500)

    assert refused.status_code == 400
    assert {k: refused.json()["error"][k] for k in ("type", "code")} == \
        {"type": "invalid_request_error", "code": "charge_disputed"}
    assert (await state(client))["refund_executions"].get(charge["id"], 0) == 0

    await close(client, opened["id"], "won")
    allowed = await refund(client, charge=charge["id"], amount=500)
    assert allowed.status_code == 200, allowed.text
    assert allowed.json()["status"] == "succeeded"


async def test_refund_by_payment_intent_of_a_disputed_charge_is_refused_too(client):
    intent = await create_payment_intent(client, 3000)
    await dispute(client, intent["latest_charge"])

    refused = await refund(client, payment_intent=intent["id"])

    assert (refused.status_code, refused.json()["error"]["code"]) == (400, "charge_disputed")


async def test_refund_of_a_charge_whose_dispute_was_lost_stays_refused(client):
    charge = await create_charge(client, 5000)
    opened = await dispute(client, charge["id"], amount=1000)
    await close(client, opened["id"], "lost")

    refused = await refund(client, charge=charge["id"], amount=500)

    assert (refused.status_code, refused.json()["error"]["code"]) == (400, "charge_disputed")


# -- reading disputes back, and the control API's refusals ---------------------------------------------------

async def test_a_dispute_is_read_back_by_id_and_listed_in_the_state(client):
    charge = await create_charge(client, 5000)
    opened = await dispute(client, charge["id"])
    won = await close(client, opened["id"], "won")

    read = await client.get(f"/v1/disputes/{opened['id']}")
    unknown = await client.get("/v1/disputes/dp_nope")

    assert (read.status_code, read.json()) == (200, won)
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "resource_missing")
    assert (await state(client))["disputes"] == [won]


@pytest.mark.parametrize(("body", "message"), [
    ({"amount": 5001}, "amount"),
    ({"amount": 0}, "amount"),
    ({"amount": "100"}, "amount"),
    ({"reason": "because"}, "reason"),
    ({"outcome": "won"}, "unknown fields"),
])
async def test_a_dispute_the_control_api_cannot_open_is_a_400(client, body, message):
    charge = await create_charge(client, 5000)

    resp = await client.post(f"/_sim/charges/{charge['id']}/dispute", json=body)

    assert resp.status_code == 400 and message in resp.json()["error"]["message"]
    assert (await state(client))["disputes"] == []


async def test_a_second_dispute_an_unknown_charge_and_a_second_close_are_refused(client):
    charge = await create_charge(client, 5000)
    opened = await dispute(client, charge["id"])

    again = await client.post(f"/_sim/charges/{charge['id']}/dispute", json={})
    unknown = await client.post("/_sim/charges/ch_nope/dispute", json={})
    bad_outcome = await client.post(f"/_sim/disputes/{opened['id']}/close", json={"outcome": "maybe"})
    await close(client, opened["id"], "lost")
    closed_twice = await client.post(f"/_sim/disputes/{opened['id']}/close", json={"outcome": "won"})
    unknown_dispute = await client.post("/_sim/disputes/dp_nope/close", json={"outcome": "won"})

    assert [r.status_code for r in (again, unknown, bad_outcome, closed_twice, unknown_dispute)] == \
        [400, 404, 400, 400, 404]
    assert (await client.get(f"/v1/disputes/{opened['id']}")).json()["status"] == "lost"
